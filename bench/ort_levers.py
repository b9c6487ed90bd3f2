"""Forward time and peak RSS of onnxruntime levers on one export, against the runtime's own session.

    python bench/ort_levers.py [--onnx-dir DIR] [--length 512] [--repeats 5] [--threads 2]

Forward time relative to the runtime's session, side by side, and each variant's peak
RSS in a fresh process. Without --onnx-dir it exports a ModernBERT-base-sized random
model (hidden 768, 22 layers, vocab 50368; needs torch). Variants, all on the same weights:
  runtime      tie_lite's session options on the export as written (python -m export)
  single-file  weights inside model.onnx (what export writes below its size bar)
  external     weights in model.onnx.data (what export writes above it)
  no-prepack   the runtime's graph with session.disable_prepacking
  fused        onnxruntime.transformers' offline optimizer (model_type bert) applied first
  basic-opt    graph optimisation level BASIC instead of ALL
Forward: one pass over a canvas of --length tokens, statistics at 32 positions, the
median of --repeats, the variants interleaved so that machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))  # common, random_models
from common import session_options  # noqa: E402

FEED_POSITIONS = 32  # statistics gathered per forward


def feed(length: int) -> dict:
    return {"input_ids": np.full((1, length), 5, np.int64), "attention_mask": np.ones((1, length), np.int64),
            "positions": np.arange(FEED_POSITIONS, dtype=np.int64)[None]}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx-dir", type=Path, help="an export (python -m export); default: a random base-sized one")
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def graph_copies(onnx_dir: Path, tmp: Path) -> dict:
    """variant -> graph path: the export as written, single-file, external-data and fused copies."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    graph = onnx.load(str(onnx_dir / "model.onnx"))
    single, external = tmp / "single.onnx", tmp / "external.onnx"
    onnx.save_model(graph, str(single))
    onnx.save_model(graph, str(external), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="external.onnx.data", size_threshold=1024)
    del graph
    config = json.loads((onnx_dir / "config.json").read_text())  # export copies the model's config
    fused = optimize_model(str(single), model_type="bert", num_heads=config["num_attention_heads"],
                           hidden_size=config["hidden_size"], opt_level=0)
    fused.save_model_to_file(str(tmp / "fused.onnx"), use_external_data_format=True, all_tensors_to_one_file=True)
    runtime = onnx_dir / "model.onnx"
    return {"runtime": runtime, "single-file": single, "external": external, "no-prepack": runtime,
            "fused": tmp / "fused.onnx", "basic-opt": runtime}


def session(path: Path, variant: str, threads: int):
    import onnxruntime as ort

    o = session_options(threads)  # the runtime's; the variants below change one lever each
    if variant == "no-prepack":
        o.add_session_config_entry("session.disable_prepacking", "1")
    if variant == "basic-opt":
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), sess_options=o, providers=["CPUExecutionProvider"])


def peak_rss(path: Path, variant: str, threads: int, length: int) -> float:
    """Peak resident MB (VmHWM) of a fresh process that opens the variant's session and runs one forward."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import ort_levers as b; "
            f"b.session(b.Path({str(path)!r}), {variant!r}, {threads}).run(['top_ids'], b.feed({length})); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout) / 1024


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        onnx_dir = args.onnx_dir
        if onnx_dir is None:
            from random_models import export_random

            onnx_dir = export_random(tmp / "model", "modernbert", 768, 22, 50368, max(args.length, 128))
        paths = graph_copies(onnx_dir, tmp)
        inputs = feed(args.length)
        wanted = ["top_ids", "top_probs", "entropy"]
        sessions = {v: session(p, v, args.threads) for v, p in paths.items()}
        reference = sessions["runtime"].run(wanted, inputs)
        times = {v: [] for v in sessions}
        for v, s in sessions.items():  # warm-up, and every variant must give the runtime's top-1 ids
            same = np.array_equal(s.run(wanted, inputs)[0][..., 0], reference[0][..., 0])
            print(f"{v}: top-1 ids equal to the runtime's: {same}")
        for _ in range(args.repeats):
            for v, s in sessions.items():
                t = time.perf_counter()
                s.run(wanted, inputs)
                times[v].append(time.perf_counter() - t)
        del sessions
        base = np.median(times["runtime"])
        graph_mb = sum(f.stat().st_size for f in onnx_dir.iterdir() if f.name.startswith("model.onnx")) / 2 ** 20
        print(f"\nL={args.length}, threads={args.threads}, repeats={args.repeats}; graph {graph_mb:.0f} MB, "
              f"bar 1.3 x graph + 150 MB = {1.3 * graph_mb + 150:.0f} MB\n")
        print("| variant | forward time / runtime's | peak RSS (MB) |\n|---|---|---|")
        for v, path in paths.items():
            rss = peak_rss(path, v, args.threads, args.length)
            print(f"| {v} | {np.median(times[v]) / base:.2f} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
