"""Forward time and peak RSS of onnxruntime levers on one export, against the runtime's own session.

    python bench/ort_levers.py [--onnx-dir DIR] [--length 512] [--repeats 5] [--threads 2]
                               [--variants ...] [--fuse-as bert gpt2]

Forward time relative to the runtime's session, side by side, and each variant's peak
RSS in a fresh process. Without --onnx-dir it exports a ModernBERT-base-sized random
model (hidden 768, 22 layers, vocab 50368; needs torch). Variants, all on the same weights:
  runtime      tie_lite's session options on the export as written (python -m export)
  single-file  weights inside model.onnx (what export writes below its size bar)
  external     weights in model.onnx.data (what export writes above it)
  no-prepack   the runtime's graph with session.disable_prepacking
  fused-TYPE   onnxruntime.transformers' offline optimizer applied first, as model type TYPE (--fuse-as:
               bert, or gpt2 for the rotary decoders: Qwen, Dream, LLaDA)
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
VARIANTS = ("single-file", "external", "no-prepack", "fused", "basic-opt")


def feed(length: int) -> dict:
    return {"input_ids": np.full((1, length), 5, np.int64), "attention_mask": np.ones((1, length), np.int64),
            "positions": np.arange(FEED_POSITIONS, dtype=np.int64)[None]}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx-dir", type=Path, help="an export (python -m export); default: a random base-sized one")
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="which variants besides the runtime's (single-file needs a graph under 2 GB)")
    p.add_argument("--fuse-as", nargs="+", choices=("bert", "gpt2"), default=["bert"],
                   help="the offline optimizer's model types for the fused variants (gpt2: rotary decoders)")
    return p.parse_args()


def graph_copies(onnx_dir: Path, tmp: Path, variants: list, fuse_as: list) -> dict:
    """variant -> graph path for the chosen variants: the export as written, and single-file, external-data
    and fused copies (one fused copy per optimizer model type in fuse_as)."""
    import onnx

    paths = {"runtime": onnx_dir / "model.onnx"}
    graph = onnx.load(str(onnx_dir / "model.onnx"))
    if "single-file" in variants:
        onnx.save_model(graph, str(tmp / "single.onnx"))
        paths["single-file"] = tmp / "single.onnx"
    if "external" in variants:
        onnx.save_model(graph, str(tmp / "external.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="external.onnx.data", size_threshold=1024)
        paths["external"] = tmp / "external.onnx"
    del graph
    for kind in ("no-prepack", "basic-opt"):
        if kind in variants:
            paths[kind] = paths["runtime"]
    if "fused" in variants:
        for model_type in fuse_as:
            paths[f"fused-{model_type}"] = fused_copy(onnx_dir, tmp, model_type)
    return paths


def fused_copy(onnx_dir: Path, tmp: Path, model_type: str) -> Path:
    """onnxruntime.transformers' offline optimizer over the export as `model_type`; prints the operators it
    fused (the op counts that changed)."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((onnx_dir / "config.json").read_text())  # export copies the model's config
    fused = optimize_model(str(onnx_dir / "model.onnx"), model_type=model_type,
                           num_heads=config["num_attention_heads"], hidden_size=config["hidden_size"], opt_level=0)
    print(f"fused as {model_type}: {fused.get_fused_operator_statistics()}")
    path = tmp / f"fused-{model_type}.onnx"
    fused.save_model_to_file(str(path), use_external_data_format=True, all_tensors_to_one_file=True)
    return path


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
        paths = graph_copies(onnx_dir, tmp, args.variants, args.fuse_as)
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
