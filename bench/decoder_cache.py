"""The decoder families' block K/V cache at the size users run: exact decode against cache.onnx, one run.

    python bench/decoder_cache.py --work DIR                  # Qwen2.5-0.5B's shapes, L = 512
    python bench/decoder_cache.py --work DIR --small          # a tiny model: a functional check
    python bench/decoder_cache.py --work DIR --length 96 --gen 64 --steps 32 --block 8 --precisions int8

The model is bench/vs_llama_cpp.py's random Dream (Qwen2 weights of Qwen2.5-0.5B's shapes,
Dream's config conventions), built in DIR, or reused from there when that script built it
(the same --work). Export writes it with its cache graph, float32 and --int8
(`python -m export HF OUT --family dream --kv-cache`, and with `--int8 --int8-min-agreement 0`).

One prompt of L - G random word ids, then G masks in one block, one token a step (G steps):
the setting of bench/vs_pytorch.py's cache rows; or --block B and --steps S: blocks of B masks,
G / S tokens a step (bench/vs_llama_cpp.py's cache pairs). Each precision decodes it exactly
(model.onnx, every step a full forward) and with `kv_cache="prefix"` (cache.onnx: a full pass when
a block starts, then each step recomputes the block's rows, as many before it and every row after
it, over the kept keys and values), and with "dual" (the block's rows and those before it only).
Every decode runs in a fresh process that loads the model, the variants alternate (a warm-up
round first, then --repeats rounds), and the table gives the median decode time, the exact
decode's over each variant's, the share of generated positions equal to the exact decode's (a random model's near-ties make the cache's approximation visible; accuracy
on a trained model is measured in bench/README.md), and peak RSS (VmHWM). Needs torch to
build the model. Never run in CI.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import vs_llama_cpp as peer  # noqa: E402  (the random Dream model, its prompt, a decode in a fresh process)

VARIANTS = (("fp32", None), ("fp32", "prefix"), ("fp32", "dual"),
            ("int8", None), ("int8", "prefix"), ("int8", "dual"))  # (export, kv_cache)
EXPORT_PRECISIONS = ("fp32", "int8")  # exported with the cache graph (vs_llama_cpp.EXPORT_VARIANTS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=peer.DEFAULT_WORK,
                   help="folder for the model and its exports (bench/vs_llama_cpp.py's --work reuses its model)")
    p.add_argument("--small", action="store_true", help=f"a tiny Dream-shaped model ({peer.SMALL})")
    p.add_argument("--length", type=int, default=512, help="canvas length L (prompt + G)")
    p.add_argument("--gen", type=int, default=16, help="generated positions G")
    p.add_argument("--block", type=int, help="masks a block (default: G, one block)")
    p.add_argument("--steps", type=int, help="steps in all, G / S tokens a step (default: G)")
    p.add_argument("--precisions", nargs="+", choices=EXPORT_PRECISIONS, default=list(EXPORT_PRECISIONS))
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (after a warm-up round)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="weights and prompt")
    args = p.parse_args(argv)
    if not 0 < args.gen < args.length:
        p.error(f"--gen must be between 1 and --length - 1, got {args.gen}")
    args.block = args.gen if args.block is None else args.block
    args.steps = args.gen if args.steps is None else args.steps
    if args.block < 1 or args.steps < 1:
        p.error(f"--block and --steps must be at least 1, got {args.block} and {args.steps}")
    if args.gen % args.block or args.steps % (args.gen // args.block) or args.gen % args.steps:
        p.error(f"--block {args.block} and --steps {args.steps} must split --gen {args.gen} into whole blocks, "
                "each of whole steps of equally many tokens")
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    for name, value in (peer.SMALL if args.small else peer.QWEN25_05B).items():
        setattr(args, name, value)
    return args


def exports(hf: Path, folder: Path, precisions) -> dict:
    """{precision: export folder with model.onnx and cache.onnx} (vs_llama_cpp.py's, written once)."""
    out = {}
    for precision in precisions:
        out[precision], note = peer.export_variant(hf, folder, f"{precision}-cache")
        if note:
            raise SystemExit(f"error: {note}")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    hf = args.work / "models" / peer.shape_tag(args) / "hf"
    if not (hf / "config.json").is_file():
        print(f"building the random Dream model in {hf}", flush=True)
        peer.save_dream(hf, args)
    folders = exports(hf, hf.parent, args.precisions)
    ids = peer.prompt_ids(AutoTokenizer.from_pretrained(hf), args.length - args.gen, args.seed)
    print(f"model {peer.shape_tag(args)}; L={args.length} (prompt {len(ids)} + G={args.gen}), blocks of "
          f"{args.block}, {args.steps} steps, {args.threads} threads, repeats={args.repeats}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    variants = [(precision, kv_cache) for precision, kv_cache in VARIANTS if precision in args.precisions]
    runs = {variant: [] for variant in variants}
    for _ in range(args.repeats + 1):
        for precision, kv_cache in variants:
            runs[precision, kv_cache].append(peer.tie_lite_decode(folders[precision], ids, args.gen, args.block,
                                                                  args.steps, args.threads, kv_cache))
    print("\n| tie-lite | decode time | exact / this | generated positions equal to the exact decode's "
          "| peak RSS |")
    print("|---|---|---|---|---|")
    for precision, kv_cache in variants:
        timed = runs[precision, kv_cache][1:]
        exact = runs[precision, None]
        seconds = float(np.median([r.decode_s for r in timed]))
        ratio = float(np.median([e.decode_s for e in exact[1:]])) / seconds
        equal = float(np.mean(np.array(exact[0].ids) == np.array(timed[0].ids)))
        name = f"{precision}" + (f" + cache {kv_cache}" if kv_cache else ", exact")
        print(f"| {name} | {seconds:.2f} s | {ratio:.2f}x | {equal:.0%} | "
              f"{max(r.peak_mb for r in runs[precision, kv_cache]):.0f} MB |")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
