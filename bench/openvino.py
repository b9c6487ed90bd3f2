"""The shipped models on OpenVINO against onnxruntime's own CPU kernels: same decodes, time ratio.

    python bench/openvino.py [--prompts 10] [--threads N] [--kv-cache prefix|dual]

Decodes the first N chain80 test problems of train/task.py with the default pair's models alone
and with TIE over the pair (the shipped defaults), each model loaded twice, as the CLI loads it,
with `--provider cpu` and with `--provider openvino`; per prompt the two providers alternate. Prints,
per setup, how many results are identical (text, tokens, steps, model calls, every candidate's
tokens) and the ratio of the summed decode times (cpu / openvino: above 1, OpenVINO is faster).
Needs pip install '.[openvino]' and a CPU OpenVINO offers a device on (Intel's); no torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "train"))
import task  # noqa: E402
import tie_lite  # noqa: E402

PROVIDERS = ("cpu", "openvino")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--threads", type=int, help="threads in all (default: every core; TIE splits them)")
    p.add_argument("--kv-cache", choices=tie_lite.KV_CACHE_MODES)
    return p.parse_args()


def outcome(result) -> tuple:
    """What must be equal between the providers."""
    return (result.text, result.tokens.tolist(), result.steps, result.model_calls,
            [c.tokens.tolist() for c in result.candidates])


def compare(names: list, prompts: list, args) -> tuple[int, float]:
    """(identical results, summed cpu time / summed openvino time) of decoding prompts with names' models."""
    dirs = [ROOT / "models" / name / "onnx" for name in names]
    models = {p: tie_lite.load_models(dirs, p, args.threads, args.kv_cache, None) for p in PROVIDERS}
    run = {p: (lambda prompt, ms=ms: tie_lite.generate(ms if len(ms) > 1 else ms[0], prompt))
           for p, ms in models.items()}
    for p in PROVIDERS:
        run[p](prompts[0])  # warm-up: OpenVINO compiles on the first call of each shape
    seconds, same = dict.fromkeys(PROVIDERS, 0.0), 0
    for prompt in prompts:
        got = {}
        for p in PROVIDERS:
            start = time.perf_counter()
            got[p] = outcome(run[p](prompt))
            seconds[p] += time.perf_counter() - start
        same += got["cpu"] == got["openvino"]
    return same, seconds["cpu"] / seconds["openvino"]


def main() -> int:
    args = parse_args()
    try:
        if not tie_lite.openvino_devices():
            sys.exit("error: OpenVINO's plugin offers no CPU device on this machine")
    except tie_lite.TieLiteError as error:
        sys.exit(f"error: {error}")
    prompts = [ex["prompt"] for ex in task.make_split("test", args.prompts, variant="chain80")]
    first, second = tie_lite.DEFAULT_MODELS
    print(f"{args.prompts} chain80 test prompts, threads {args.threads or 'every core'}, kv cache {args.kv_cache}")
    for names in ([first], [second], [first, second]):
        same, ratio = compare(names, prompts, args)
        print(f"{' + '.join(names):6s} identical {same}/{len(prompts)}; time cpu / openvino {ratio:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
