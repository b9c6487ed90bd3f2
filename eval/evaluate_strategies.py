"""Accuracy, model calls and time of every unmasking strategy, for A, B and TIE(A + B).

    python eval/evaluate_strategies.py --split test --n 1000 [--workers 2] [--interval N] [--interval-unit steps]

For each strategy and each of A alone, B alone and TIE over A + B (the default score and pick): exact-match
accuracy, mean model calls per problem, and decode time relative to the default
low-confidence schedule (one token per step) of the same row, measured in the same run;
for TIE also the mean relays per problem. Times are summed over the worker processes; on a shared machine they are
approximate, the call counts are exact. The strategy ASS is left out: it needs a power-of-two
generation length, and the shipped layout has 80 positions (reasoning 64, answer 16). The
step counts below are set for that layout (5 blocks of 16: a step count must be a multiple
of 5). The learned-policy rows use models/policy (train/train_policy.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluate  # noqa: E402
import task  # noqa: E402
import tie_lite  # noqa: E402

DEFAULT = "schedule, 1 token/step (default)"
POLICY = str(evaluate.ROOT / "models" / "policy")  # train/train_policy.py --out models/policy
STRATEGIES = {  # name -> decode options over the manifest defaults
    DEFAULT: (),
    "schedule, 2 tokens/step": (("steps", 40),),  # half the shipped 80 positions
    "threshold 0.9": (("strategy", "threshold"), ("threshold", 0.9)),
    "threshold 0.7": (("strategy", "threshold"), ("threshold", 0.7)),
    "threshold 0.5": (("strategy", "threshold"), ("threshold", 0.5)),
    "top-k 2": (("strategy", "topk"), ("tokens_per_step", 2)),
    "MED budget 0.5": (("strategy", "med"), ("entropy_budget", 0.5)),
    "MED budget 1.0": (("strategy", "med"), ("entropy_budget", 1.0)),
    "Dream schedule, 40 steps, margin": (("strategy", "dream"), ("steps", 40), ("confidence", "margin")),
    "EOSER (0.4, 1.0)": (("eos_gamma", (0.4, 1.0)),),
    "early exit 0.9": (("exit_threshold", 0.9),),
    "threshold 0.7 + early exit 0.9": (("strategy", "threshold"), ("threshold", 0.7), ("exit_threshold", 0.9)),
    "learned policy": (("strategy", "policy"), ("policy", POLICY)),
    "learned policy + early exit 0.9": (("strategy", "policy"), ("policy", POLICY), ("exit_threshold", 0.9)),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models-dir", type=Path, default=evaluate.ROOT / "models")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--interval", type=int, default=tie_lite.EnsembleConfig.interval)
    p.add_argument("--interval-unit", choices=tie_lite.INTERVAL_UNITS, default=tie_lite.EnsembleConfig.interval_unit)
    p.add_argument("--rows", nargs="+", choices=("A", "B", "TIE A+B"), default=["A", "B", "TIE A+B"])
    p.add_argument("--only", nargs="+", choices=list(STRATEGIES), help="strategies to run (default: all)")
    p.add_argument("--text-relay", action="store_true", help="TIE relays through text (evaluate.py --text-relay)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    problems = task.make_split(args.split, args.n, seed=args.seed)
    rows = {row: models for row, models in {"A": ("a",), "B": ("b",), "TIE A+B": ("a", "b")}.items()
            if row in args.rows}
    ensemble = tie_lite.EnsembleConfig(interval=args.interval, interval_unit=args.interval_unit)
    names = list(dict.fromkeys([DEFAULT, *(args.only or STRATEGIES)]))  # the baseline first, once
    relays = "TIE A+B" in rows
    header = " | ".join(f"{r} acc. | {r} calls | {r} time" for r in rows) + (" | TIE relays" if relays else "")
    lines = [f"| strategy | {header} |", "|---|" + "---|---|---|" * len(rows) + ("---|" if relays else "")]
    base = {}
    for name in names:
        cells, results = [], {}
        for row, models in rows.items():
            variant = evaluate.Variant(f"{row} {name}", models, ensemble, STRATEGIES[name],
                                       text_relay=args.text_relay)
            r = results[row] = evaluate.run_parallel(variant, args.models_dir, problems, args.workers)
            base.setdefault(row, r)
            ratio = r["seconds"] / base[row]["seconds"]
            cells.append(f"{100 * r['correct'].mean():.1f} | {r['calls']:.1f} | {ratio:.2f}")
            print(f"{variant.name}: {100 * r['correct'].mean():.1f}%, {r['calls']:.1f} calls, time x{ratio:.2f}",
                  file=sys.stderr)
        if relays:
            cells.append(f"{results['TIE A+B']['relays_per_problem']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print(f"split {args.split}, {len(problems)} problems (seed {args.seed}); TIE: score {ensemble.score}, final "
          f"pick {ensemble.select}, interval "
          f"{args.interval} {args.interval_unit}; time: relative to the default schedule of the same column\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
