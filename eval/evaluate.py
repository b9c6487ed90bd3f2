"""Exact-match accuracy of the shipped models alone and ensembled with TIE, through tie_lite.

    python eval/evaluate.py --split test --n 1000 [--models-dir models] [--only NAME ...] [--interval N]
                            [--kv-cache prefix|dual [--kv-window N]]

Prints one table: each model alone, post-generation ensembling, TIE with every
score, TIE across tokenizers (A + C); for each, accuracy, the paired-bootstrap 95%
interval of its accuracy minus the best single model's, the leader change rate and
the mean model calls per problem. Tune on --split validation; report on test.
Decoding settings come from the models' manifests (the layout they were trained on).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "train"))

import task  # noqa: E402
import tie_lite  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str                  # row label
    models: tuple              # model folder names under models/
    ensemble: tie_lite.EnsembleConfig = tie_lite.EnsembleConfig()
    decode: tuple = ()         # (option, value) pairs over the manifest's decode defaults
    kv_cache: str | None = None  # load the models' cache.onnx in this mode (tie_lite --kv-cache)
    kv_window: int | None = None  # and recompute this many positions before the block (--kv-window)


def variants(interval: int = tie_lite.EnsembleConfig.interval) -> list[Variant]:
    E = functools.partial(tie_lite.EnsembleConfig, interval=interval)
    return [Variant("A alone", ("a",)), Variant("B alone", ("b",)), Variant("C alone", ("c",)),
            Variant("post-generation A+B", ("a", "b"), tie_lite.EnsembleConfig(interval=10_000)),
            Variant("TIE A+B tcc", ("a", "b"), E(score="tcc")),
            Variant("TIE A+B top1", ("a", "b"), E(score="top1")),
            Variant("TIE A+B entropy", ("a", "b"), E(score="entropy")),
            Variant("TIE A+B margin", ("a", "b"), E(score="margin")),
            Variant("TIE A+C tcc (text relay)", ("a", "c"), E(score="tcc")),
            Variant("D alone", ("d",)),
            Variant("TIE A+D tcc (text relay)", ("a", "d"), E(score="tcc")),
            Variant("TIE B+D tcc (text relay)", ("b", "d"), E(score="tcc"))]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--n", type=int, default=1000, help="problems")
    p.add_argument("--seed", type=int, default=0, help="split seed (the problems drawn)")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--only", nargs="+", help="row names to run (default: all)")
    p.add_argument("--interval", type=int, default=tie_lite.EnsembleConfig.interval,
                   help="TIE rows: steps between relays (tune on validation)")
    p.add_argument("--kv-cache", choices=tie_lite.KV_CACHE_MODES, help="decode with the models' cache.onnx "
                   "in this mode (approximate)")
    p.add_argument("--kv-window", type=int, help="with --kv-cache: positions before the block also recomputed "
                   "(default: the block's size)")
    p.add_argument("--workers", type=int, default=2, help="processes, each decoding a share of the problems")
    p.add_argument("--json", type=Path, help="also write per-problem results here")
    return p.parse_args()


def load_models(models_dir: Path, names, kv_cache: str | None = None, kv_window: int | None = None) -> dict:
    return {m: tie_lite.Model.load(models_dir / m / "onnx", threads=1, kv_cache=kv_cache, kv_window=kv_window)
            for m in names}


def run_share(args: tuple) -> dict:
    """One worker's share: (variant, models_dir, problems) -> run_variant's result."""
    variant, models_dir, problems = args
    return run_variant(variant, load_models(models_dir, variant.models, variant.kv_cache, variant.kv_window),
                       problems)


def run_parallel(variant: Variant, models_dir: Path, problems: list, workers: int) -> dict:
    """run_variant over `workers` processes, results in problem order."""
    import multiprocessing

    shares = [problems[i::workers] for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(run_share, [(variant, models_dir, share) for share in shares])
    correct = np.zeros(len(problems), dtype=bool)
    for i, part in enumerate(parts):
        correct[i::workers] = part["correct"]
    changes = sum(p["changes"] for p in parts)
    relays = sum(p["relays"] for p in parts)
    relay_count = sum(p["relay_count"] for p in parts)
    calls = float(np.average([p["calls"] for p in parts], weights=[len(s) for s in shares]))
    return {"correct": correct, "calls": calls, "changes": changes, "relays": relays, "relay_count": relay_count,
            "relays_per_problem": relay_count / len(problems),
            "change_rate": changes / relays if relays else None, "seconds": sum(p["seconds"] for p in parts)}


def run_variant(variant: Variant, models: dict, problems: list) -> dict:
    """Per-problem correctness (n,) bool, leader changes, relays and model calls.

    Leader changes are tie_lite.leader_changes with the final pick: with 32 steps and interval 16
    there is one relay, so the rate is the share of problems whose output comes from the other
    model than the one that led at step 16."""
    chosen = [models[name] for name in variant.models]
    defaults = chosen[0].manifest.decode_defaults
    config = tie_lite.DecodeConfig(**{**defaults, **dict(variant.decode)})
    correct, calls, changes, relays, relay_count = [], [], 0, 0, 0
    t0 = time.perf_counter()
    for i, ex in enumerate(problems):
        result = tie_lite.generate(chosen if len(chosen) > 1 else chosen[0], ex["prompt"], config,
                                   variant.ensemble)
        correct.append(task.is_correct(result.answer or "", ex))
        calls.append(result.model_calls)
        changed, handovers = tie_lite.leader_changes(result.relays, result.chosen if result.candidates else None)
        changes, relays, relay_count = changes + changed, relays + handovers, relay_count + len(result.relays)
        if (i + 1) % 100 == 0:
            print(f"  {variant.name}: {i + 1}/{len(problems)}, accuracy so far {np.mean(correct):.3f}, "
                  f"{time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return {"correct": np.array(correct), "calls": float(np.mean(calls)), "changes": changes, "relays": relays,
            "relay_count": relay_count, "relays_per_problem": relay_count / max(1, len(problems)),
            "change_rate": changes / relays if relays else None, "seconds": time.perf_counter() - t0}


def bootstrap_ci(a: np.ndarray, b: np.ndarray, rounds: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Paired-bootstrap 95% interval of mean(a) - mean(b), in points."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(rounds, a.size))
    diffs = (a[idx].mean(1) - b[idx].mean(1)) * 100
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def table(rows: dict) -> str:
    singles = {k: v for k, v in rows.items() if k.endswith("alone") and not k.startswith("C")}
    best = max(singles, key=lambda k: singles[k]["correct"].mean()) if singles else None
    lines = ["| variant | accuracy | minus best single (95% CI) | leader change rate | model calls / problem |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        acc = 100 * r["correct"].mean()
        diff = ""
        if best and name != best and r["correct"].size == rows[best]["correct"].size:
            lo, hi = bootstrap_ci(r["correct"], rows[best]["correct"])
            diff = f"{acc - 100 * rows[best]['correct'].mean():+.1f} ({lo:+.1f}, {hi:+.1f})"
        rate = "" if r["change_rate"] is None else f"{100 * r['change_rate']:.0f}%"
        lines.append(f"| {name} | {acc:.1f} | {diff} | {rate} | {r['calls']:.0f} |")
    return "\n".join(lines) + (f"\n\nbest single model (A or B): {best}" if best else "")


def main() -> int:
    args = parse_args()
    chosen = [dataclasses.replace(v, kv_cache=args.kv_cache, kv_window=args.kv_window) for v in variants(args.interval)
              if not args.only or v.name in args.only]
    unknown = set(args.only or ()) - {v.name for v in variants()}
    if unknown:
        raise SystemExit(f"error: unknown row(s) {sorted(unknown)}; rows: {[v.name for v in variants()]}")
    problems = task.make_split(args.split, args.n, seed=args.seed)
    rows = {}
    for variant in chosen:
        t0 = time.perf_counter()
        rows[variant.name] = run_parallel(variant, args.models_dir, problems, args.workers)
        print(f"{variant.name}: {100 * rows[variant.name]['correct'].mean():.1f}% "
              f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    print(f"split {args.split}, {len(problems)} problems (seed {args.seed}), TIE interval {args.interval}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({k: {**v, "correct": v["correct"].tolist()} for k, v in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
