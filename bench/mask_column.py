"""What suppressing the [MASK] column costs in parity: the shipped models with and without it.

    python bench/mask_column.py [--n 40] [--models a b d]

Exported graphs set the mask token's logit to the float32 minimum (an MDLM never
proposes [MASK]); LLaDA's and Dream's samplers do not. This loads each shipped graph
twice, as written and with the mask column left in (the constant condition of the graph's
final Where edited, nothing else), and decodes --n test-split prompts with the suppressed
one. At every step it reads both graphs on the same canvas and reports, over the masked
positions of the generated region: how far top-1 probabilities and entropies move, how
often [MASK] itself would be the top-1 proposal, and how often the step's decision (the
positions committed and their ids) differs, per strategy. Last, whole decodes with each
graph: how many outputs differ.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]
sys.path.append(str(ROOT / "train"))  # task.py; appended, so that `common` is bench/common.py, not train's

import tie_lite  # noqa: E402
from common import session_options  # noqa: E402
from task import make_split  # noqa: E402

STRATEGIES = {  # over the shipped layout (gen 80 = reasoning 64 + answer 16, block 16), three rankings
    "schedule top1, 1/step": dict(),
    "schedule margin, 2/step": dict(steps=40, confidence="margin"),
    "dream entropy, eps 1e-3": dict(steps=40, strategy="dream", confidence="entropy"),
}


def unsuppressed(model: tie_lite.Model) -> tie_lite.Model:
    """The same model whose graph leaves the mask column in (other suppressed columns stay)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = onnx.load(str(model.folder / "model.onnx"))
    where = next(n for n in graph.graph.node if n.op_type == "Where" and "logits" in n.output)
    constant = next(n for n in graph.graph.node if n.output[0] == where.input[0])
    keep = numpy_helper.to_array(constant.attribute[0].t).copy()  # (Vg,) bool, broadcast over (B, K)
    assert keep[..., model.manifest.mask_id].all(), "the mask column is not suppressed in this graph"
    keep[..., model.manifest.mask_id] = False
    constant.attribute[0].t.CopyFrom(numpy_helper.from_array(keep, constant.attribute[0].t.name))
    session = ort.InferenceSession(graph.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    return tie_lite.Model(model.folder, model.manifest, model.tokenizer, session)


def measure(shipped, open_, prompts, options) -> dict:
    config = tie_lite.DecodeConfig(**shipped.manifest.decode_defaults, **options)
    mask_id = shipped.manifest.mask_id
    d_top1, d_entropy, mask_top1, steps, differ, outputs_differ = [], [], 0, 0, 0, 0
    for prompt in prompts:
        state = tie_lite.DecodeState(tie_lite.build_canvas(shipped, prompt, config), np.random.default_rng(0))
        while True:
            masked = state.canvas.gen_idx[state.tokens[state.canvas.gen_idx] == mask_id]
            if masked.size:
                a, b = shipped.stats(state.tokens, masked), open_.stats(state.tokens, masked)
                d_top1.append(np.abs(a.top_probs[:, 0] - b.top_probs[:, 0]))
                d_entropy.append(np.abs(a.entropy - b.entropy))
                mask_top1 += int(np.sum(b.top_ids[:, 0] == mask_id))
            other = copy.deepcopy(state)
            event = tie_lite.decode_step(shipped, state, config)
            if event is None:
                break
            alt = tie_lite.decode_step(open_, other, config)
            steps += 1
            differ += (sorted(zip(event.committed_idx.tolist(), event.committed_ids.tolist()))
                       != sorted(zip(alt.committed_idx.tolist(), alt.committed_ids.tolist())))
        whole = tie_lite.DecodeState(tie_lite.build_canvas(open_, prompt, config), np.random.default_rng(0))
        tie_lite.decode(open_, whole, config)
        outputs_differ += not np.array_equal(whole.tokens, state.tokens)
    d_top1, d_entropy = np.concatenate(d_top1), np.concatenate(d_entropy)
    return dict(positions=d_top1.size, top1_max=d_top1.max(), top1_median=np.median(d_top1),
                entropy_max=d_entropy.max(), entropy_median=np.median(d_entropy), mask_top1=mask_top1,
                steps=steps, steps_differ=differ, outputs_differ=outputs_differ, prompts=len(prompts))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=40, help="test-split prompts per model and strategy")
    p.add_argument("--models", nargs="+", default=["a", "b", "d"])
    args = p.parse_args()
    prompts = [ex["prompt"] for ex in make_split("test", args.n)]
    print("| model | strategy | positions read | max / median abs. change, top-1 prob | "
          "max / median abs. change, entropy (nats) | [MASK] top-1 | steps deciding otherwise | "
          "outputs differing |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        shipped = tie_lite.Model.load(ROOT / "models" / name / "onnx", threads=1)
        open_ = unsuppressed(shipped)
        for label, options in STRATEGIES.items():
            r = measure(shipped, open_, prompts, options)
            print(f"| {name} | {label} | {r['positions']} | {r['top1_max']:.2g} / {r['top1_median']:.2g} | "
                  f"{r['entropy_max']:.2g} / {r['entropy_median']:.2g} | {r['mask_top1']} | "
                  f"{r['steps_differ']} of {r['steps']} | {r['outputs_differ']} of {r['prompts']} |", flush=True)


if __name__ == "__main__":
    main()
