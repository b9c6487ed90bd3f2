"""Where one forward of an export's model.onnx spends its time, by operator type (onnxruntime's profiler).

    python bench/op_profile.py ONNX_DIR [--length 512] [--gathered 32] [--runs 5] [--threads 2]

Runs the graph the runtime runs (statistics at --gathered positions) on a canvas of
--length tokens, discards the first (warm-up) run, and prints each operator type's
share of the summed kernel time, then the matmuls grouped by their node name with the
layer index removed (e.g. /model/layers.N/mlp/Wi/MatMul -> /model/mlp/Wi/MatMul). The
profiler's own cost inflates the total; the shares are what this script is for.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import session_options  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("onnx_dir", type=Path, help="a folder written by python -m export")
    p.add_argument("--length", type=int, default=512, help="canvas length L")
    p.add_argument("--gathered", type=int, default=32, help="positions whose statistics are asked for")
    p.add_argument("--runs", type=int, default=5, help="profiled runs after the warm-up")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def kernel_events(onnx_dir: Path, length: int, gathered: int, runs: int, threads: int) -> list:
    """The profiler's node events of `runs` forwards, the warm-up run's dropped."""
    import onnxruntime as ort

    options = session_options(threads)  # the runtime's, plus the profiler
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.full((1, length), 5, np.int64),                    # (1, L)
            "attention_mask": np.ones((1, length), np.int64),                  # (1, L)
            "positions": np.arange(length - gathered, length)[None]}           # (1, K)
    for _ in range(runs + 1):
        session.run(["top_ids", "top_probs", "entropy"], feed)
    events = [e for e in json.loads(Path(session.end_profiling()).read_text())
              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return events[len(events) // (runs + 1):]


def main() -> int:
    args = parse_args()
    if not (args.onnx_dir / "model.onnx").is_file():
        sys.exit(f"error: {args.onnx_dir} has no model.onnx")
    if not 0 < args.gathered <= args.length:
        sys.exit(f"error: --gathered must be in 1..{args.length}, got {args.gathered}")
    events = kernel_events(args.onnx_dir, args.length, args.gathered, args.runs, args.threads)
    by_op, matmuls = collections.Counter(), collections.Counter()
    for event in events:
        op = event["args"]["op_name"]
        by_op[op] += event["dur"]
        if op == "MatMul":
            matmuls[re.sub(r"/layers\.\d+", "", event["name"].removesuffix("_kernel_time"))] += event["dur"]
    total = sum(by_op.values())
    print(f"{args.onnx_dir}: L={args.length}, {args.gathered} gathered, {args.threads} threads, {args.runs} runs")
    print("operator type: share of kernel time")
    for op, micros in by_op.most_common(10):
        print(f"  {op:24s} {100 * micros / total:5.1f}%")
    print("matmuls by node: share of kernel time")
    for name, micros in matmuls.most_common(8):
        print(f"  {name:48s} {100 * micros / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
