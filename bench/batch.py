"""Batched prompts: throughput of generate(models, [prompts]) against one generate() call per prompt.

    python bench/batch.py [--prompts 64] [--batch-sizes 1 4 8 16 32 64] [--rounds 3] [--threads N]
                          [--kv-cache prefix|dual]

Decodes the first N test problems of train/task.py (the shipped models' task) with the default
pair's first model alone and with TIE over the pair (the shipped defaults, b + d: the manifest's lengths,
schedule, score and final pick), in one
process, interleaved: per round and setup, N separate generate() calls, then the batched API
at each batch size. Models are loaded as the CLI loads them (load_models: TIE splits the
thread budget between its models). Prints, per setup and batch size, the median over rounds
of (separate time / batched time), and whether every batched result equals the separate one
(text, tokens, answer, steps, model calls, chosen model, relays). It also prints the ratio
of CPU time (every thread of the process), steadier than wall time on a shared machine.
--kv-cache loads every model with its block K/V cache, on both sides of each ratio.

First it checks the statistics themselves: canvases from the separate decodes (every 8th
step), gathered where decoding reads them, run through Model.batch_stats in one call against
Model.stats one canvas at a time: max |difference| of top-1 probabilities and entropies, and
how many canvases are bit-identical, with the runtime's row alignment and without it.

--sweep only times one call of model a's graph at batch sizes B and canvas lengths L (best of
5 x 20 calls, 1 and 2 threads): what a call costs per token, and how much of it is fixed per
call, which is all that batching can save.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "train"))
import task  # noqa: E402
import tie_lite  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="thread budget (default: every core, as the CLI)")
    p.add_argument("--skip-stats", action="store_true", help="skip the statistics check")
    p.add_argument("--kv-cache", choices=tie_lite.KV_CACHE_MODES, default=None,
                   help="load the models with their block K/V cache (both sides; the statistics check is skipped)")
    p.add_argument("--sweep", action="store_true", help="only time single graph calls over B and L")
    return p.parse_args()


def timed(fn) -> tuple:
    """(wall seconds, CPU seconds of every thread of this process, fn's result)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def same(x: tie_lite.GenerateResult, y: tie_lite.GenerateResult) -> bool:
    return (x.text == y.text and np.array_equal(x.tokens, y.tokens) and x.answer == y.answer and x.steps == y.steps
            and x.model_calls == y.model_calls and x.chosen == y.chosen
            and [(r.steps, r.leader) for r in x.relays] == [(r.steps, r.leader) for r in y.relays]
            and all(np.array_equal(r.scores, s.scores, equal_nan=True) for r, s in zip(x.relays, y.relays)))


def canvases(model: tie_lite.Model, prompts: list, config: tie_lite.DecodeConfig) -> list:
    """(tokens (L,), positions (K,)) from the decodes of `prompts`: every 8th step's canvas, read at its
    masked generated positions and the answer, as a step reads them."""
    out = []
    for prompt in prompts:
        result = tie_lite.generate(model, prompt, config, record_history=True)
        for event in result.history[::8]:
            masked = event.gen_idx[event.tokens[event.gen_idx] == model.manifest.mask_id]
            answer = event.gen_idx[config.gen_length - config.answer_length:]
            if masked.size:
                out.append((event.tokens, np.concatenate([masked[:config.block_size], answer])))
    return out


def stats_check(model: tie_lite.Model, prompts: list, config: tie_lite.DecodeConfig) -> None:
    pairs = canvases(model, prompts, config)
    alone = [model.stats(t, p) for t, p in pairs]
    aligned = tie_lite.batch_rows
    for name, rows in (("aligned rows (the runtime)", aligned), ("unaligned rows", lambda k, v: k)):
        tie_lite.batch_rows = rows
        try:
            batched = model.batch_stats([t for t, _ in pairs], [p for _, p in pairs])
        finally:
            tie_lite.batch_rows = aligned
        top1 = max(float(np.abs(b.top_probs - a.top_probs).max()) for a, b in zip(alone, batched))
        entropy = max(float(np.abs(b.entropy - a.entropy).max()) for a, b in zip(alone, batched))
        flips = sum(int((b.top_ids[:, 0] != a.top_ids[:, 0]).sum()) for a, b in zip(alone, batched))
        bitwise = sum(all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("top_ids", "top_probs", "entropy"))
                      for a, b in zip(alone, batched))
        lengths = sorted({t.size for t, _ in pairs})
        print(f"  {model.name}, {len(pairs)} canvases (L {lengths[0]}-{lengths[-1]}) in one call, {name}: "
              f"max |d top_probs| {top1:.3g}, max |d entropy| {entropy:.3g}, top-1 flips {flips}, "
              f"bit-identical {bitwise}/{len(pairs)}")


def sweep() -> None:
    """Per-token time of one call of model a's graph at several B and L, relative to B = 1, L = 64."""
    print("| threads | B | L | time per token / (B = 1, L = 64)'s | time per call / (B = 1, L = 64)'s |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        model = tie_lite.Model.load(tie_lite.DEFAULT_MODELS_DIR / "a" / "onnx", threads=threads)
        shapes = ((1, 64), (1, 8), (1, 32), (1, 128), (4, 64), (8, 64), (16, 64), (64, 64))
        times = {shape: call_time(model, *shape) for shape in shapes}
        for (batch, length), seconds in times.items():
            per_token = seconds / (batch * length) / (times[1, 64] / 64)
            print(f"| {threads} | {batch} | {length} | {per_token:.2f} | {seconds / times[1, 64]:.2f} |")


def call_time(model: tie_lite.Model, batch: int, length: int) -> float:
    """Best of 5 x 20 calls: seconds per call on B canvases of L tokens, 4 positions each."""
    feed = {"input_ids": np.full((batch, length), 5, np.int64), "attention_mask": np.ones((batch, length), np.int64),
            "positions": np.zeros((batch, 4), np.int64)}
    model.session.run(None, feed)
    return min(timed(lambda: [model.session.run(None, feed) for _ in range(20)])[0] / 20 for _ in range(5))


def bench(name: str, models: list, prompts: list, config, args) -> None:
    wall = {size: [] for size in ["separate", *args.batch_sizes]}
    cpu = {size: [] for size in wall}
    identical = {size: True for size in args.batch_sizes}
    for _ in range(args.rounds):
        *spent, separate = timed(lambda: [tie_lite.generate(models, p, config) for p in prompts])
        wall["separate"].append(spent[0])
        cpu["separate"].append(spent[1])
        for size in args.batch_sizes:
            *spent, batched = timed(lambda: tie_lite.generate(models, prompts, config, batch_size=size))
            wall[size].append(spent[0])
            cpu[size].append(spent[1])
            identical[size] &= all(same(x, y) for x, y in zip(separate, batched))
    base, base_cpu = np.array(wall["separate"]), np.array(cpu["separate"])
    print(f"\n{name}: {len(prompts)} prompts x {args.rounds} rounds, separate calls "
          f"{np.median(base) / len(prompts) * 1e3:.1f} ms/prompt (median)")
    print("| batch size | throughput / separate calls | CPU time of separate calls / batched | identical |")
    print("|---|---|---|---|")
    for size in args.batch_sizes:
        ratio, cpu_ratio = np.median(base / np.array(wall[size])), np.median(base_cpu / np.array(cpu[size]))
        print(f"| {size} | {ratio:.2f}x | {cpu_ratio:.2f}x | {'yes' if identical[size] else 'NO'} |")


def main() -> int:
    args = parse_args()
    if args.sweep:
        sweep()
        return 0
    prompts = [ex["prompt"] for ex in task.make_split("test", args.prompts, seed=0)]
    dirs = [tie_lite.DEFAULT_MODELS_DIR / name / "onnx" for name in tie_lite.DEFAULT_MODELS]
    pair = tie_lite.load_models(dirs, "cpu", args.threads, kv_cache=args.kv_cache)
    alone = tie_lite.load_models(dirs[:1], "cpu", args.threads, kv_cache=args.kv_cache)
    config = tie_lite.DecodeConfig().for_model(alone[0])
    print(config, f"kv_cache={args.kv_cache}")
    if not args.skip_stats and not args.kv_cache:
        print("statistics, batched against one canvas per call:")
        for model in pair:
            stats_check(model, prompts, config)
    names, score = tie_lite.DEFAULT_MODELS, tie_lite.EnsembleConfig.score
    for name, models in ((f"{names[0]} alone", alone), (f"TIE {'+'.join(names)} ({score})", pair)):
        tie_lite.generate(models, prompts[:2], config)  # warm-up
        bench(name, models, prompts, config, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
