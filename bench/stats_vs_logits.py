"""Forward time of the statistics graph vs a stock full-logits export of the same weights.

    python bench/stats_vs_logits.py [--layers 4 --hidden 256 --vocab 50368 --length 512]

Exports one random-weight ModernBERT masked LM twice, (a) with optimum's stock
fill-mask config (logits for every position, softmax statistics then done in
numpy, as a runtime without statistics in the graph must) and (b) through
export/ (statistics in the graph, gathered at one block of 16 positions plus 16
answer positions), then times both in onnxruntime, interleaved, and prints ratios.
Needs the export extra (torch). Times are medians of interleaved runs; read the ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import session_options  # noqa: E402
from random_models import build_random  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=50368)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--gathered", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def session(path: Path, threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def numpy_statistics(logits: np.ndarray, positions: np.ndarray) -> tuple:
    """What a full-logits runtime does each step: softmax, top-2 and entropy over the canvas."""
    x = logits[0].astype(np.float32)  # (L, V)
    x = x - x.max(-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(-1, keepdims=True)
    top = np.argpartition(-p[positions], 2, axis=-1)[:, :2]
    entropy = -(p[positions] * np.log(np.maximum(p[positions], 1e-30))).sum(-1)
    return top, entropy


def main() -> int:
    args = parse_args()
    from export import export_model
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf = build_random(tmp / "hf", "modernbert", args.hidden, args.layers, args.vocab, max(args.length, 128))
        export_model(hf, tmp / "stats", log=lambda m: None)
        main_export(str(hf), tmp / "logits", task="fill-mask", do_validation=False)
        stats, full = session(tmp / "stats" / "model.onnx", args.threads), session(tmp / "logits" / "model.onnx",
                                                                                    args.threads)
        rng = np.random.default_rng(0)
        ids = rng.integers(4, args.vocab, size=(1, args.length)).astype(np.int64)
        mask = np.ones_like(ids)
        positions = np.sort(rng.choice(args.length, args.gathered, replace=False)).astype(np.int64)
        feed_stats = {"input_ids": ids, "attention_mask": mask, "positions": positions[None]}
        feed_full = {"input_ids": ids, "attention_mask": mask}
        t_stats, t_full, t_full_np = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            stats.run(["top_ids", "top_probs", "entropy"], feed_stats)
            t1 = time.perf_counter()
            logits = full.run(["logits"], feed_full)[0]
            t2 = time.perf_counter()
            numpy_statistics(logits, positions)
            t3 = time.perf_counter()
            t_stats.append(t1 - t0), t_full.append(t2 - t1), t_full_np.append(t3 - t1)
        med = lambda xs: float(np.median(xs))  # noqa: E731
        print(f"model: ModernBERT layers={args.layers} hidden={args.hidden} vocab={args.vocab} L={args.length} "
              f"gathered={args.gathered} threads={args.threads} repeats={args.repeats}")
        print(f"full-logits output bytes per forward: {logits.nbytes / 1e6:.1f} MB")
        print(f"full-logits forward / statistics forward:              {med(t_full) / med(t_stats):.2f}x")
        print(f"(full-logits forward + numpy stats) / statistics forward: {med(t_full_np) / med(t_stats):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
