"""What TIE's text relay costs against the id relay, where relay points fall on and inside blocks.

    python eval/text_relay.py --split validation --n 500 [--models a b] [--settings NAME ...] [--workers 2]

Models of one tokenizer relay token ids; models of different tokenizers relay through text (decode the
leader's clean prefix, re-encode it, lay it out in the receiver's canvas: docs/method.md). For each
setting (a decode strategy and a relay interval), the problems are decoded twice with the same models:
with the runtime's own relay and with every relay forced through text (evaluate.py --text-relay). Prints
per setting: both accuracies, their paired difference with its bootstrap 95% interval, how many texts
are identical, the relays per problem, and what the text hand-overs (one per relay and receiver) lost:
hand-overs where the leader had committed ids after its first still-masked position (dropped, decoded
again by the receiver) and hand-overs whose text, re-encoded, was longer than the receiver's region (cut).
Problems are the task variant's (--task), decoded in its layout in the first model's block size. With models of two tokenizers the runtime's relay
is already the text relay: the two decodes are the same, and the losses are what to read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluate  # noqa: E402
import relay_evidence  # noqa: E402
import task  # noqa: E402
import tie_lite  # noqa: E402

DEFAULT = "schedule, interval 16 (default)"
SETTINGS = {  # name -> (decode options over the manifest defaults, relay interval in positions)
    DEFAULT: ((), 16),
    "schedule, interval 6": ((), 6),
    "threshold 0.7, interval 16": ((("strategy", "threshold"), ("threshold", 0.7)), 16),
    "top-k 2, interval 6": ((("strategy", "topk"), ("tokens_per_step", 2)), 6),
    "early exit 0.9, interval 16": ((("exit_threshold", 0.9),), 16),
}


def losses_of(source: tie_lite.Run, receiver: tie_lite.Run, config: tie_lite.DecodeConfig) -> tuple[int, bool]:
    """What relaying source's trajectory to receiver through text loses: the ids the source committed
    after its first mask (dropped; stop ids in a region whose text ended come back as the receiver's
    EOS fill, so they are not counted), and whether a region's re-encoded text overflows the receiver's (cut)."""
    src, mask, stops = source.model, source.model.manifest.mask_id, source.model.manifest.stop_ids
    generated = source.state.tokens[source.state.canvas.gen_idx]  # (G,)
    prefix = tie_lite.clean_prefix(src, source.state)
    reasoning_len = config.gen_length - config.answer_length
    dropped, cut = 0, False
    for start, size in ((0, reasoning_len), (reasoning_len, config.answer_length)):
        known = prefix[start:start + size]                      # the region's clean ids
        text, ended = tie_lite.region_text(src, known) if known.size else ("", False)
        later = generated[start + known.size:start + size]      # after the first mask, if it is in this region
        lost = later[later != mask]
        dropped += int(lost.size - (np.isin(lost, stops).sum() if ended else 0))
        cut |= bool(known.size) and receiver.model.encode(text).size > size
    return dropped, cut


def run_share(job: tuple) -> tuple[list, dict]:
    """One worker's share: (folders, task variant, decode options, interval, force text, problems) -> a
    record per problem, and the text relays' losses summed over the share."""
    folders, variant, decode, interval, force_text, problems = job
    if force_text:
        tie_lite.same_tokenizer = lambda a, b: False
    losses = {"handed": 0, "with_drops": 0, "dropped": 0, "cut": 0}
    relayed_state = tie_lite.relayed_state

    def watched(source, receiver, prompt, config):
        if not tie_lite.same_tokenizer(source.model, receiver.model):
            dropped, cut = losses_of(source, receiver, config)
            losses["handed"] += 1
            losses["with_drops"] += dropped > 0
            losses["dropped"] += dropped
            losses["cut"] += cut
        return relayed_state(source, receiver, prompt, config)

    tie_lite.relayed_state = watched
    models = [tie_lite.Model.load(f, threads=1) for f in folders]
    config = dataclasses.replace(relay_evidence.task_config(models[0], variant), **dict(decode))
    results = tie_lite.generate(models, [p["prompt"] for p in problems], config,
                                tie_lite.EnsembleConfig(interval=interval))  # batched, each as decoded alone
    records = [{"correct": task.is_correct(r.answer or "", p), "text": r.text, "relays": len(r.relays)}
               for r, p in zip(results, problems)]
    return records, losses


def run_parallel(folders: list, variant: str, decode: tuple, interval: int, force_text: bool, problems: list,
                 workers: int) -> tuple[list, dict]:
    shares = [problems[i::workers] for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(run_share, [(folders, variant, decode, interval, force_text, s) for s in shares])
    records = [None] * len(problems)
    for i, (part, _) in enumerate(parts):
        records[i::workers] = part
    return records, {k: sum(losses[k] for _, losses in parts) for k in parts[0][1]}


def row(name: str, ids: list | None, text: list, losses: dict) -> str:
    """One table row; ids None (every relay is a text relay already) leaves the comparison blank."""
    b = np.array([r["correct"] for r in text])
    if ids is not None:
        a = np.array([r["correct"] for r in ids])
        lo, hi = evaluate.bootstrap_ci(b, a)
        same = sum(x["text"] == y["text"] for x, y in zip(ids, text))
        compared = f"{100 * a.mean():.1f} | {100 * b.mean():.1f} | {100 * (b.mean() - a.mean()):+.1f} " \
                   f"({lo:+.1f}, {hi:+.1f}) | {same}/{len(ids)} |"
    else:
        compared = f" | {100 * b.mean():.1f} | | |"
    with_drops = losses["with_drops"]
    drops = f"{with_drops} ({losses['dropped'] / with_drops:.1f} ids each)" if with_drops else "0"
    return (f"| {name} | {compared} {np.mean([r['relays'] for r in text]):.2f} "
            f"| {losses['handed']} | {drops} | {losses['cut']} |")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--n", type=int, default=500, help="problems")
    p.add_argument("--seed", type=int, default=0, help="split seed (the problems drawn)")
    p.add_argument("--task", choices=sorted(task.TASKS), default="short", help="task variant (train/task.py)")
    p.add_argument("--models-dir", type=Path, default=evaluate.ROOT / "models")
    p.add_argument("--models", nargs="+", default=["a", "b"], help="model folder names under --models-dir")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--workers", type=int, default=2, help="processes, each decoding a share of the problems")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    folders = [args.models_dir / m / "onnx" for m in args.models]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise SystemExit(f"error: no model folder {missing[0]}")
    if args.workers < 1:
        raise SystemExit(f"error: --workers must be positive, got {args.workers}")
    problems = task.make_split(args.split, args.n, seed=args.seed, variant=args.task)
    tokenizers = [json.loads((f / "tie_lite.json").read_text())["tokenizer_sha256"] for f in folders]
    all_differ = len(set(tokenizers)) == len(tokenizers)  # every relay is a text relay already: decode once
    lines = ["| setting | runtime's relay | through text | difference (95% CI) | identical texts | relays / problem "
             "| hand-overs through text | with dropped ids | cut |", "|---|---|---|---|---|---|---|---|---|"]
    for name in args.settings:
        decode, interval = SETTINGS[name]
        t0 = time.perf_counter()
        text, losses = run_parallel(folders, args.task, decode, interval, True, problems, args.workers)
        ids = None if all_differ else run_parallel(folders, args.task, decode, interval, False, problems,
                                                   args.workers)[0]
        lines.append(row(name, ids, text, losses))
        print(f"{lines[-1]}  ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    print(f"split {args.split}, task {args.task}, {len(problems)} problems (seed {args.seed}), models "
          f"{' + '.join(args.models)}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
