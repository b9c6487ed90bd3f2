"""Exact-match accuracy of the shipped models alone and ensembled with TIE, through tie_lite.

    python eval/evaluate.py --split test --n 1000 [--task short|long|hard|chain|chain80] [--phrasings trained|held-out]
                            [--models-dir models]
                            [--only NAME ...] [--interval N] [--block-size N] [--kv-cache prefix|dual [--kv-window N]]

Prints one table: each model alone; for every pair post-generation selection (no
relay) by each final pick (pll, tcc) and TIE with every score (the final pick the
score's own for pll and tcc, pll for the others); and TIE with the defaults over
the trios; for each,
accuracy, the paired-bootstrap 95% interval of its accuracy minus the best single
model's, minus the best of its own models alone and, for TIE, minus post-generation
selection over the same models by the same final pick, the leader change rate, relays
per problem and mean model calls per problem. Rows whose models are missing from
--models-dir are skipped. Tune on --split validation; report on test. Decoding
settings come from the models' manifests (the layout they were trained on).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
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
    text_relay: bool = False   # relay through text even between models of one tokenizer (--text-relay)


MODELS = ("a", "b", "d")
SCORES = tie_lite.SCORES  # the relay scores
PICKS = ("pll", "tcc")    # the final picks that post-generation rows compare
PROGRESS_EVERY = 100      # problems per generate() call (decoded in batches of 8), a progress line after each


def label(names) -> str:
    return "+".join(n.upper() for n in names)


def final_pick(score: str) -> str:
    """The final pick of a TIE row relaying by `score`: the score's own where it is also a pick (pll,
    tcc), else the default."""
    return score if score in PICKS else tie_lite.EnsembleConfig.select


def variants(interval: int = tie_lite.EnsembleConfig.interval) -> list[Variant]:
    """Every model alone, then for each pair post-generation selection by each final pick (no relay:
    the interval is past any decode) and TIE with each score, and TIE with the defaults over each trio."""
    E = functools.partial(tie_lite.EnsembleConfig, interval=interval)
    rows = [Variant(f"{label([m])} alone", (m,)) for m in MODELS]
    for pair in itertools.combinations(MODELS, 2):
        rows += [*(Variant(f"post-generation {label(pair)} {pick}", pair,
                           tie_lite.EnsembleConfig(interval=10_000, select=pick)) for pick in PICKS),
                 *(Variant(f"TIE {label(pair)} {score}", pair, E(score=score, select=final_pick(score)))
                   for score in SCORES)]
    rows += [Variant(f"TIE {label(trio)} {E().score}", trio, E()) for trio in itertools.combinations(MODELS, 3)]
    return rows


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--n", type=int, default=1000, help="problems")
    p.add_argument("--seed", type=int, default=0, help="split seed (the problems drawn)")
    p.add_argument("--task", choices=("short", "long", "hard", "chain", "chain80"), default="short",
                   help="problems: short (2-3 operations), long, chain or chain80 (2-6), hard (4-6): train/task.py")
    p.add_argument("--phrasings", choices=("trained", "held-out"), default="trained",
                   help="the prompts' templates: those the models are trained on, or held-out ones")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--only", nargs="+", help="row names to run (default: all)")
    p.add_argument("--interval", type=int, default=tie_lite.EnsembleConfig.interval,
                   help="TIE rows: steps between relays (tune on validation)")
    p.add_argument("--kv-cache", choices=tie_lite.KV_CACHE_MODES, help="decode with the models' cache.onnx "
                   "in this mode (approximate)")
    p.add_argument("--kv-window", type=int, help="with --kv-cache: positions before the block also recomputed "
                   "(default: the block's size)")
    p.add_argument("--block-size", type=int, help="decode in blocks of this many positions instead of the "
                   "manifests' (to choose a model's block on validation before exporting it)")
    p.add_argument("--text-relay", action="store_true",
                   help="relay through text also between models of one tokenizer (what a text relay costs)")
    p.add_argument("--workers", type=int, default=2, help="processes, each decoding a share of the problems")
    p.add_argument("--json", type=Path, help="also write per-problem results here")
    return p.parse_args()


def load_models(models_dir: Path, names, kv_cache: str | None = None, kv_window: int | None = None) -> dict:
    return {m: tie_lite.Model.load(models_dir / m / "onnx", threads=1, kv_cache=kv_cache, kv_window=kv_window)
            for m in names}


def run_share(args: tuple) -> dict:
    """One worker's share: (variant, models_dir, problems) -> run_variant's result."""
    variant, models_dir, problems = args
    if variant.text_relay:  # this worker process only: decode, re-encode and lay out again at every relay
        tie_lite.same_tokenizer = lambda a, b: False
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

    Leader changes are tie_lite.leader_changes with the final pick: each relay's leader, then the
    final pick (the shipped models decode 80 positions, so interval 16 relays at steps 16, 32, 48
    and 64: up to 4 relays and 4 hand-overs a problem), and the rate is the share of hand-overs where
    the leader changes."""
    chosen = [models[name] for name in variant.models]
    defaults = chosen[0].manifest.decode_defaults
    config = tie_lite.DecodeConfig(**{**defaults, **dict(variant.decode)})
    correct, calls, changes, relays, relay_count = [], [], 0, 0, 0
    t0 = time.perf_counter()
    for start in range(0, len(problems), PROGRESS_EVERY):  # batched, each result as decoded alone
        chunk = problems[start:start + PROGRESS_EVERY]
        results = tie_lite.generate(chosen if len(chosen) > 1 else chosen[0], [ex["prompt"] for ex in chunk],
                                    config, variant.ensemble)
        for ex, result in zip(chunk, results):
            correct.append(task.is_correct(result.answer or "", ex))
            calls.append(result.model_calls)
            changed, handovers = tie_lite.leader_changes(result.relays,
                                                         result.chosen if result.candidates else None)
            changes, relays, relay_count = changes + changed, relays + handovers, relay_count + len(result.relays)
        print(f"  {variant.name}: {len(correct)}/{len(problems)}, accuracy so far {np.mean(correct):.3f}, "
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


def difference(r: dict, best: dict | None) -> str:
    """r's accuracy minus best's, in points, with the paired-bootstrap 95% interval ("" without best)."""
    if best is None or r is best:
        return ""
    lo, hi = bootstrap_ci(r["correct"], best["correct"])
    return f"{100 * (r['correct'].mean() - best['correct'].mean()):+.1f} ({lo:+.1f}, {hi:+.1f})"


def post_generation_of(name: str, models: tuple) -> str | None:
    """The post-generation row a TIE row is compared with: the same models and final pick."""
    if not name.startswith("TIE "):
        return None
    return f"post-generation {label(models)} {final_pick(name.rsplit(' ', 1)[1])}"


def table(rows: dict, models: dict) -> str:
    """rows: name -> run result; models: name -> the model names the row decodes with."""
    def best_alone(names):
        singles = [rows[f"{label([m])} alone"] for m in names if f"{label([m])} alone" in rows]
        complete = singles and len(singles) == len(names)
        return max(singles, key=lambda r: r["correct"].mean()) if complete else None

    best = best_alone([m for m in MODELS if f"{label([m])} alone" in rows])
    lines = ["| variant | accuracy | minus best single (95% CI) | minus its best single (95% CI) "
             "| minus post-generation (95% CI) | leader change rate | relays / problem | model calls / problem |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        own = difference(r, best_alone(models[name])) if len(models[name]) > 1 else ""
        after = difference(r, rows.get(post_generation_of(name, models[name])))
        rate = "" if r["change_rate"] is None else f"{100 * r['change_rate']:.0f}%"
        relays = f"{r['relays_per_problem']:.2f}" if len(models[name]) > 1 else ""
        lines.append(f"| {name} | {100 * r['correct'].mean():.1f} | {difference(r, best)} | {own} | {after} "
                     f"| {rate} | {relays} | {r['calls']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    unknown = set(args.only or ()) - {v.name for v in variants()}
    if unknown:
        raise SystemExit(f"error: unknown row(s) {sorted(unknown)}; rows: {[v.name for v in variants()]}")
    present = {m for m in MODELS if (args.models_dir / m / "onnx").is_dir()}
    if args.block_size is not None and args.block_size < 1:
        raise SystemExit(f"error: --block-size must be positive, got {args.block_size}")
    block = (("block_size", args.block_size),) if args.block_size is not None else ()
    chosen = [dataclasses.replace(v, kv_cache=args.kv_cache, kv_window=args.kv_window, text_relay=args.text_relay,
                                  decode=v.decode + block)
              for v in variants(args.interval)
              if (not args.only or v.name in args.only) and set(v.models) <= present]
    problems = task.make_split(args.split, args.n, seed=args.seed, variant=args.task,
                               phrasings=args.phrasings)
    rows = {}
    for variant in chosen:
        t0 = time.perf_counter()
        rows[variant.name] = run_parallel(variant, args.models_dir, problems, args.workers)
        print(f"{variant.name}: {100 * rows[variant.name]['correct'].mean():.1f}% "
              f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    print(f"split {args.split}, task {args.task}, {args.phrasings} phrasings, {len(problems)} problems (seed {args.seed}), "
          f"TIE interval {args.interval}{', relays through text' if args.text_relay else ''}"
          f"{f', blocks of {args.block_size}' if args.block_size is not None else ''}\n")
    print(table(rows, {v.name: v.models for v in chosen}))
    if args.json:
        args.json.write_text(json.dumps({k: {**v, "correct": v["correct"].tolist()} for k, v in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
