"""onnxruntime's 4-bit and 8-bit matmul kernels against its float32 MatMul, on one CPU, side by side.

    python bench/int4_kernels.py                       # Qwen2.5-0.5B's layer shapes, 96 / 16 / 2 rows
    python bench/int4_kernels.py --rows 512 --threads 1

What `--int4` and `--int8` put into a graph, alone: MatMulNBits (4 bits, block sizes 32 and 128,
accuracy levels 0 and 4, with and without zero points), and `--int8`'s dynamic quantization
(DynamicQuantizeLinear, MatMulInteger, the rescale), against float32 MatMul by a weight of the
same shape. Each graph applies one input to a chain of matmuls by different weights of one shape,
as many as it takes for the smallest weights (4 bits, block 128) to fill --weight-mb (default
96 MB, three times a 32 MB L3), the same count for every kernel: every kernel reads its weights
from memory, as in a model, not from the cache. Sessions get tie-lite's options (bench/common.py:
no spinning). Random weights and inputs: these are speeds, not accuracies. Prints, for each
shape and row count, each kernel's time relative to float32's (below 1 is faster) and its
GFLOP/s; each timing runs calls for at least --seconds, kernels alternate, best of --repeats
rounds. Needs only numpy, onnx and onnxruntime.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from common import session_options

QWEN25_05B_SHAPES = ((896, 4864), (4864, 896), (896, 896))  # (K, N): MLP gate/up, MLP down, query/output


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=[f"{k}x{n}" for k, n in QWEN25_05B_SHAPES], metavar="KxN",
                   help="weight shapes (input x output features)")
    p.add_argument("--rows", nargs="+", type=int, default=[96, 16, 2], help="activation rows M")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weight-mb", type=float, default=96.0,
                   help="chain enough matmuls for the 4-bit block-128 weights to exceed this (MB; at least 2)")
    p.add_argument("--seconds", type=float, default=0.2, help="least time per timing (calls repeat until it passes)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; the best is kept")
    args = p.parse_args(argv)
    shapes = []
    for text in args.shapes:
        k, x, n = text.partition("x")
        if not (x and k.isdigit() and n.isdigit() and int(k) > 0 and int(n) > 0):
            p.error(f"--shapes wants KxN with positive K and N, got {text!r}")
        shapes.append((int(k), int(n)))
    args.shapes = shapes
    for name in ("rows", "threads", "repeats", "weight_mb", "seconds"):
        value = getattr(args, name)
        if min(value if isinstance(value, list) else [value]) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def chain_length(k: int, n: int, weight_mb: float) -> int:
    """Matmuls a graph chains: enough for the 4-bit block-128 weights (and their scales) to exceed weight_mb."""
    nbytes = n * (k // 2 + 4 * -(-k // 128))
    return max(2, int(weight_mb * 1e6 // nbytes) + 1)


def fp32_nodes(k: int, n: int, chain: int, rng) -> tuple[list, list]:
    nodes, weights = [], []
    for i in range(chain):
        weights.append(numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32) * 0.02, f"W{i}"))
        nodes.append(helper.make_node("MatMul", ["X", f"W{i}"], [f"Y{i}"]))
    return nodes, weights


def int8_nodes(k: int, n: int, chain: int, rng) -> tuple[list, list]:
    """`--int8`'s pattern: the activations quantized once per call, uint8 x int8, rescaled to float32."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["X"], ["Xq", "Xs", "Xz"])]
    weights = []
    for i in range(chain):
        weights += [numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), f"W{i}"),
                    numpy_helper.from_array(np.int8(0), f"Wz{i}"),
                    numpy_helper.from_array(np.float32(1e-3), f"Ws{i}")]
        nodes += [helper.make_node("MatMulInteger", ["Xq", f"W{i}", "Xz", f"Wz{i}"], [f"I{i}"]),
                  helper.make_node("Cast", [f"I{i}"], [f"F{i}"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["Xs", f"Ws{i}"], [f"S{i}"]),
                  helper.make_node("Mul", [f"F{i}", f"S{i}"], [f"Y{i}"])]
    return nodes, weights


def nbits_nodes(k: int, n: int, chain: int, rng, block: int, level: int, zero_points: bool) -> tuple[list, list]:
    """MatMulNBits, 4 bits: B [N, K / block, block / 2] packed, a float32 scale per block, 4-bit zero points."""
    blocks = -(-k // block)
    nodes, weights = [], []
    for i in range(chain):
        inputs = ["X", f"B{i}", f"S{i}"]
        weights += [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8), f"B{i}"),
                    numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32) * 0.01, f"S{i}")]
        if zero_points:
            packed = rng.integers(0, 256, n * -(-blocks // 2), dtype=np.uint8)
            weights.append(numpy_helper.from_array(packed, f"Z{i}"))
            inputs.append(f"Z{i}")
        nodes.append(helper.make_node("MatMulNBits", inputs, [f"Y{i}"], domain="com.microsoft", K=k, N=n, bits=4,
                                      block_size=block, accuracy_level=level))
    return nodes, weights


def variants() -> dict:
    """{label: node builder}, float32 first (the reference)."""
    out = {"float32 MatMul": fp32_nodes, "int8 (--int8: MatMulInteger)": int8_nodes}
    for block in (32, 128):
        for level in (4, 0):
            for zero_points in (True, False):
                label = f"int4 block {block}, level {level}" + ("" if zero_points else ", no zero points")
                out[label] = (lambda k, n, c, r, b=block, lv=level, z=zero_points: nbits_nodes(k, n, c, r, b, lv, z))
    return out


def session(nodes: list, weights: list, k: int, chain: int, threads: int) -> ort.InferenceSession:
    outputs = [helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, None) for i in range(chain)]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])
    model = helper.make_model(helper.make_graph(nodes, "kernels", [x], outputs, weights),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])


def seconds_per_call(sess: ort.InferenceSession, x: np.ndarray, least: float) -> float:
    """Calls until `least` seconds have passed; mean seconds per call."""
    calls, start = 0, time.perf_counter()
    while (spent := time.perf_counter() - start) < least or not calls:
        sess.run(None, {"X": x})
        calls += 1
    return spent / calls


def main(argv=None) -> int:
    args = parse_args(argv)
    builders = variants()
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, best of {args.repeats} rounds of at least "
          f"{args.seconds} s; time relative to float32 MatMul (GFLOP/s)")
    for k, n in args.shapes:
        chain = chain_length(k, n, args.weight_mb)
        sessions = {label: session(*build(k, n, chain, np.random.default_rng(0)), k, chain, args.threads)
                    for label, build in builders.items()}
        inputs = {m: np.random.default_rng(1).standard_normal((m, k), dtype=np.float32) for m in args.rows}
        best = {(label, m): float("inf") for label in sessions for m in args.rows}
        for sess in sessions.values():  # warm-up: prepacking, thread pool
            for x in inputs.values():
                sess.run(None, {"X": x})
        for _ in range(args.repeats):
            for m, x in inputs.items():
                for label, sess in sessions.items():
                    best[label, m] = min(best[label, m], seconds_per_call(sess, x, args.seconds))
        print(f"\nweight {k} x {n}, {chain} matmuls a call")
        print("| kernel | " + " | ".join(f"M = {m}" for m in args.rows) + " |")
        print("|---|" + "---|" * len(args.rows))
        for label in sessions:
            cells = []
            for m in args.rows:
                t = best[label, m] / chain
                cells.append(f"{best[label, m] / best['float32 MatMul', m]:.2f} ({2 * m * k * n / t / 1e9:.0f})")
            print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
