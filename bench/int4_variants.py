"""Settings of 4-bit export: writes quantized copies of exports for eval/evaluate.py and bench/quant_cost.py.

    python bench/int4_variants.py --out DIR [--models a b d] [--variant int8 int4-b32-a4 int4-b32-a4-fp32head ...]
    python eval/evaluate.py --split validation --n 1000 --models-dir DIR/VARIANT --only "A alone" "B alone" "D alone"

Each variant copies models/NAME/onnx (the float32 export) to DIR/VARIANT/NAME/onnx and quantizes
its graphs (model.onnx, and cache.onnx where there is one) through export's own functions:
  fp32                      nothing (the reference copy)
  int8                      quantize_int8 with the first layer float32 (what `--int8` does)
  int4-bN-aL[-fp32...]      quantize_int4 with block size N and accuracy level L (what `--int4` does
                            with --int4-block-size N --int4-accuracy-level L), and, with any of the
                            suffixes, the tied LM head (fp32head), the token embedding table (fp32emb) or
                            the first transformer layer's matmuls (fp32first) left in float32
For each copy it prints one table row: graph bytes and the top-1 agreement with PyTorch on export's
sample canvases (export/validate.py measure, what the manifest's int4_validation records).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # export
GRAPHS = ("model.onnx", "cache.onnx")
DEFAULT_VARIANTS = ("fp32", "int8", "int4-b16-a4", "int4-b32-a4", "int4-b64-a4", "int4-b16-a0", "int4-b32-a0",
                    "int4-b64-a0")
_INT4 = re.compile(r"int4-b(\d+)-a(\d)((?:-fp32(?:head|emb|first))*)$")


def quantize(graph: Path, variant: str, model) -> None:
    """Quantize the float32 graph in place as the variant says, through export's functions."""
    from export import first_layer_matmuls, quantize_int4, quantize_int8
    from export.merge import split_graph_file

    split_graph_file(graph)  # a merged float32 export's matmuls apart, as --int4 has them, before names are read
    if variant == "int8":
        quantize_int8(graph, first_layer_of=model)
        return
    match = _INT4.match(variant)
    if not match:
        raise SystemExit(f"unknown variant {variant!r}: fp32, int8 or int4-bN-aL[-fp32head][-fp32emb][-fp32first]")
    block, level, kept = int(match[1]), int(match[2]), match[3]
    first = first_layer_matmuls(graph, model) if "fp32first" in kept else []
    quantize_int4(graph, block, level, head="fp32head" not in kept, embedding="fp32emb" not in kept,
                  nodes_to_exclude=first)


def graph_bytes(onnx_dir: Path, graph: str = "model.onnx") -> int:
    """The graph's file and its external data, if any."""
    return sum(p.stat().st_size for p in onnx_dir.iterdir() if p.name.startswith(graph))


def agreement(graph: Path, loaded, top_k: int) -> str:
    """top1_agree / positions of the graph against PyTorch on export's sample canvases."""
    from export.validate import measure, measure_cache

    measure_graph = measure_cache if graph.name == "cache.onnx" else measure
    report = measure_graph(graph, *loaded.checks(top_k))
    return f"{report.top1_agree}/{report.positions} ({report.top1_agree / report.positions:.1%})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models-dir", type=Path, default=ROOT / "models",
                   help="folders NAME/hf (the checkpoint) and NAME/onnx (its float32 export)")
    p.add_argument("--models", nargs="+", default=["a", "b", "d"])
    p.add_argument("--variant", nargs="+", default=list(DEFAULT_VARIANTS))
    args = p.parse_args()
    import json

    from export import ExportOptions, _load_source

    print("| variant | model | model.onnx bytes | cache.onnx bytes | top-1 agreement with PyTorch |\n|---|---|---|---|---|")
    for name in args.models:
        loaded = _load_source(args.models_dir / name / "hf", ExportOptions())
        src = args.models_dir / name / "onnx"
        top_k = json.loads((src / "tie_lite.json").read_text())["top_k"]
        for variant in args.variant:
            dest = args.out / variant / name / "onnx"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(src, dest)
            graphs = [dest / g for g in GRAPHS if (dest / g).is_file()]
            if variant != "fp32":
                for graph in graphs:
                    quantize(graph, variant, loaded.model)
            agree = "; ".join(f"{g.name} {agreement(g, loaded, top_k)}" for g in graphs)
            cache = graph_bytes(dest, "cache.onnx") if (dest / "cache.onnx").is_file() else "-"
            print(f"| {variant} | {name} | {graph_bytes(dest)} | {cache} | {agree} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
