"""Decode time of TIE against its models alone, and what decoding the models in parallel buys.

    python bench/tie_overhead.py [--models DIR_A DIR_B | --random] [--prompts N] [--threads 2]

For each prompt, in one run, interleaved: every model decoding alone (each with the
whole thread budget, one after another), TIE with tcc, TIE with cross-model top1
scoring (the models in parallel, the budget split between them), and TIE with tcc
decoded sequentially. Prints median ratios. Uses the shipped default pair unless
--models is given, or --random (two random-weight 4-layer, hidden-256 models, a
ModernBERT and a BERT, exported on the spot; needs the export extra). The decode
lengths come from the first model's manifest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tie_lite  # noqa: E402

PROMPTS = ["What is (17 + 25) * 3 - 19?", "Compute 48 - 9 * 4 + 13.", "what is 7 * (6 + 5) - 12 ?",
           "Please work out 91 - 38 + 27.", "What is 14 * 3 + 8 * 2?", "Find (63 - 29) * 2 + 5."]
# with --random, the word-level tokenizer reads these as unknown words: the timing does not care


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, nargs="+",
                   default=[tie_lite.DEFAULT_MODELS_DIR / n / "onnx" for n in tie_lite.DEFAULT_MODELS])
    p.add_argument("--random", action="store_true", help="benchmark two random-weight models built now")
    p.add_argument("--prompts", type=int, default=len(PROMPTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def random_pair(folder: Path) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from random_models import export_random

    defaults = {"gen_length": 96, "answer_length": 16, "block_size": 16}
    return [export_random(folder / arch, arch, 256, 4, 1000, 256, seed=i, decode_defaults=defaults)
            for i, arch in enumerate(("modernbert", "bert"))]


def main() -> int:
    args = parse_args()
    if args.random:
        import tempfile

        args.models = random_pair(Path(tempfile.mkdtemp(prefix="tie_bench_")))
    if len(args.models) < 2:
        print("error: TIE needs two or more models: pass --models DIR_A DIR_B, or --random", file=sys.stderr)
        return 2
    whole = [tie_lite.Model.load(d, threads=args.threads) for d in args.models]
    split = [tie_lite.Model.load(d, threads=max(1, args.threads // len(args.models))) for d in args.models]
    d = whole[0].manifest.decode_defaults
    config = tie_lite.DecodeConfig(**d) if d.get("answer_length") else tie_lite.DecodeConfig(
        gen_length=64, answer_length=16)
    variants = {
        "tcc": tie_lite.EnsembleConfig(score="tcc"),
        "top1 (cross-model)": tie_lite.EnsembleConfig(score="top1"),
        "tcc sequential": tie_lite.EnsembleConfig(score="tcc", parallel=False),
    }
    times = {"singles": [], **{k: [] for k in variants}}
    for _ in range(args.repeats):
        for prompt in (PROMPTS * 10)[: args.prompts]:
            times["singles"].append(sum(timed(lambda m=m: tie_lite.generate(m, prompt, config)) for m in whole))
            for name, ens in variants.items():
                times[name].append(timed(lambda: tie_lite.generate(split, prompt, config, ens)))
    singles = np.array(times["singles"])
    print(f"models: {', '.join(m.name for m in whole)}; threads {args.threads}; {config}")
    print(f"prompts x repeats: {args.prompts} x {args.repeats}")
    for name in variants:
        print(f"TIE {name:<20} / sum of singles: {np.median(np.array(times[name]) / singles):.3f}")
    seq_over_par = np.median(np.array(times["tcc sequential"]) / np.array(times["tcc"]))
    print(f"TIE tcc sequential / parallel:         {seq_over_par:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
