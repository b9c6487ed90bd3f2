"""Size, peak RSS and decode time of exports of one model side by side (e.g. float32, int8, int4 copies).

    python bench/quant_cost.py FOLDER... [--prompt TEXT | --prompt-tokens N] [--gen N] [--repeats 20] [--threads 1]
                               [--block B --steps S] [--kv-cache prefix|dual]

FOLDER is an export (tie_lite.json + model.onnx); the first is the reference. For each one row:
graph bytes (model.onnx and its data file), peak RSS of a fresh process that loads the export and
decodes once (VmHWM), and the median time of a greedy decode over the reference's, the decodes of all
folders interleaved so that machine noise hits them alike. Every decode makes the same number of model
calls (one per step), so the ratio is also that of one call. --prompt-tokens N builds a prompt of N
tokens from the vocabulary (a random model's words), as bench/vs_pytorch.py does. The decode is one
block of --gen masks, one token a step, or with --block and --steps blocks of B masks, G / S tokens a
step; --kv-cache decodes every folder with its block K/V cache (cache.onnx, whose bytes are then counted).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--prompt", default="Compute 7 - 6 + 8.")
    p.add_argument("--prompt-tokens", type=int, help="instead of --prompt: N tokens of the vocabulary")
    p.add_argument("--gen", type=int, help="generation length (default: the manifest's)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--block", type=int, help="masks a block (default: --gen, one block)")
    p.add_argument("--steps", type=int, help="steps in all (default: --gen, one token a step)")
    p.add_argument("--kv-cache", choices=("prefix", "dual"), help="decode with the block K/V cache")
    args = p.parse_args()
    if (args.block is not None or args.steps is not None) and args.gen is None:
        p.error("--block and --steps need --gen")
    for name in ("gen", "block", "steps", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be positive, got {getattr(args, name)}")
    block, steps = args.block or args.gen, args.steps or args.gen
    if args.gen is not None and (args.gen % block or steps % (args.gen // block)):
        p.error(f"--block {block} must divide --gen {args.gen} into blocks that divide --steps {steps}")
    return args


def graph_bytes(folder: Path, kv_cache) -> int:
    """The bytes of the graph a decode runs (cache.onnx with the cache: the model then opens only it)."""
    graph = "cache.onnx" if kv_cache else "model.onnx"
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith(graph))


def config(gen, block=None, steps=None):
    import tie_lite

    if gen is None:
        return tie_lite.DecodeConfig()
    return tie_lite.DecodeConfig(gen_length=gen, block_size=gen if block is None else block,
                                 steps=gen if steps is None else steps)


def peak_rss_mb(folder: Path, prompt: str, args) -> float:
    """VmHWM of a fresh process that loads the export and decodes once (ru_maxrss would count the parent's fork)."""
    code = ("import sys, tie_lite; sys.path.insert(0, {here!r}); from quant_cost import config; "
            "m = tie_lite.Model.load({folder!r}, threads={threads}, kv_cache={kv!r}); "
            "tie_lite.generate(m, sys.stdin.read(), config({gen!r}, {block!r}, {steps!r})); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
            ).format(here=str(HERE), folder=str(folder), threads=args.threads, kv=args.kv_cache, gen=args.gen,
                     block=args.block, steps=args.steps)
    out = subprocess.run([sys.executable, "-c", code], input=prompt, capture_output=True, text=True,
                         cwd=HERE.parent, check=True)
    return float(out.stdout) / 1024


def vocabulary_prompt(model, tokens: int) -> str:
    """A prompt of `tokens` ids past the specials, cycling through the vocabulary (a random model's words)."""
    ids = np.array([4 + i % (model.manifest.vocab_size - 4) for i in range(tokens)])
    return model.detokenize(ids)


def main() -> int:
    args = parse_args()
    import tie_lite

    models = [tie_lite.Model.load(f, threads=args.threads, kv_cache=args.kv_cache) for f in args.folders]
    prompt = vocabulary_prompt(models[0], args.prompt_tokens) if args.prompt_tokens else args.prompt
    cfg = config(args.gen, args.block, args.steps)
    results = [tie_lite.generate(m, prompt, cfg) for m in models]  # warm-up, and the decodes compared
    times = [[] for _ in models]
    for _ in range(args.repeats):
        for model, record in zip(models, times):
            start = time.perf_counter()
            tie_lite.generate(model, prompt, cfg)
            record.append(time.perf_counter() - start)
    base = np.median(times[0])
    print(f"{args.repeats} interleaved decodes each, {results[0].model_calls} model calls, {args.threads} thread(s); "
          f"reference {args.folders[0]}: {base * 1e3:.1f} ms a decode\n")
    print("| export | graph MB | peak RSS MB | decode time / reference's | same text as reference |\n|---|---|---|---|---|")
    for folder, record, result in zip(args.folders, times, results):
        rss = peak_rss_mb(folder, prompt, args)
        print(f"| {folder} | {graph_bytes(folder, args.kv_cache) / 2 ** 20:.2f} | {rss:.0f} | {np.median(record) / base:.2f} | "
              f"{result.text == results[0].text} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
