"""Where one forward of an export's model.onnx spends its time, by operator type (onnxruntime's profiler).

    python bench/op_profile.py ONNX_DIR [--length 512] [--gathered 32] [--runs 5] [--threads 2] [--isolated]

Runs the graph the runtime runs (statistics at --gathered positions) on a canvas of
--length tokens, discards the first (warm-up) run, and prints each operator type's
share of the summed kernel time, then the matmuls grouped by their node name with the
layer index removed (`group_name`: /model/layers.N/mlp/Wi/MatMul and, in graphs whose layers are
written out by export/cache.py, /Wi_N/MatMul -> /Wi/MatMul; attention's /MatMul_N -> /MatMul). The
profiler's own cost inflates the total; the shares are what this script is for.

--isolated also prints, for each matmul group whose weight is a constant, its rate in the model
(GFLOP/s from the profiler's kernel times) against the same product alone: a one-MatMul graph of
that shape, random weights, the same session options and threads, and numpy's matmul (BLAS, every
core), best of 20 each: whether the matmul kernels or what surrounds them hold the forward back.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
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
    p.add_argument("--isolated", action="store_true", help="also time each matmul shape alone (module docstring)")
    return p.parse_args()


def weight_shapes(onnx_dir: Path) -> dict:
    """{MatMul node name: (K, N)} of the graph's matmuls by a constant 2-D weight (an initializer)."""
    import onnx

    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    dims = {init.name: tuple(init.dims) for init in graph.initializer}
    return {node.name: dims[node.input[1]] for node in graph.node
            if node.op_type == "MatMul" and len(dims.get(node.input[1], ())) == 2}


def best_seconds(run, repeats: int = 20) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def isolated_gflops(m: int, k: int, n: int, threads: int) -> tuple[float, float]:
    """(onnxruntime, numpy) GFLOP/s of one [m, k] x [k, n] float32 product alone."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)  # (M, K)
    w = rng.standard_normal((k, n), dtype=np.float32)  # (K, N)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    flop = 2 * m * k * n / 1e9
    return (flop / best_seconds(lambda: session.run(None, {"x": x})), flop / best_seconds(lambda: x @ w))


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


def group_name(node: str) -> str:
    """A node's name without its layer: /layers.N removed, and the tracer's _N suffixes of repeated
    module names (/Wi_3/MatMul, /MatMul_7)."""
    return re.sub(r"_\d+(?=/|$)", "", re.sub(r"/layers\.\d+", "", node))


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
            matmuls[group_name(event["name"].removesuffix("_kernel_time"))] += event["dur"]
    total = sum(by_op.values())
    print(f"{args.onnx_dir}: L={args.length}, {args.gathered} gathered, {args.threads} threads, {args.runs} runs")
    print("operator type: share of kernel time")
    for op, micros in by_op.most_common(10):
        print(f"  {op:24s} {100 * micros / total:5.1f}%")
    print("matmuls by node: share of kernel time")
    for name, micros in matmuls.most_common(8):
        print(f"  {name:48s} {100 * micros / total:5.1f}%")
    if args.isolated:
        print_isolated(events, args.onnx_dir, args.threads)
    return 0


def print_isolated(events: list, onnx_dir: Path, threads: int) -> None:
    """Each constant-weight matmul group's rate in the model against the same shape alone."""
    weights = weight_shapes(onnx_dir)
    groups = collections.defaultdict(list)  # name -> [(M, K, N, microseconds)]
    for event in events:
        node = event["name"].removesuffix("_kernel_time")
        if event["args"]["op_name"] == "MatMul" and node in weights:
            rows = int(np.prod(list(event["args"]["input_type_shape"][0].values())[0][:-1]))
            groups[group_name(node)].append((rows, *weights[node], event["dur"]))
    print("matmuls by a weight: GFLOP/s in the model / alone (onnxruntime) / alone (numpy)")
    for name, calls in sorted(groups.items(), key=lambda item: -sum(c[3] for c in item[1])):
        m, k, n, _ = calls[0]
        in_model = sum(2 * c[0] * c[1] * c[2] for c in calls) / sum(c[3] for c in calls) / 1e3
        alone, blas = isolated_gflops(m, k, n, threads)
        print(f"  {name:40s} [{m}, {k}] x [{k}, {n}]: {in_model:6.1f} / {alone:6.1f} / {blas:6.1f}")


if __name__ == "__main__":
    sys.exit(main())
