"""Accuracy of other int8 quantization settings: writes int8 copies of the shipped models for eval/evaluate.py.

    python bench/int8_variants.py --out DIR [--variant default|all-layers|per-channel|fp32-head|matmul-only ...]
    python eval/evaluate.py --split validation --n 1000 --models-dir DIR/VARIANT --only "A alone" "B alone"

Each variant is export's int8 path (onnxruntime's quant_pre_process + quantize_dynamic,
QInt8) applied to models/{a,b}/onnx/model.onnx: as `python -m export --int8` does, the first
transformer layer's matmuls left in float32 (default); every layer quantized (all-layers,
`--int8-all-layers`); and, on top of all-layers, per-channel weight scales (per-channel), the
LM head's MatMul left in float32 (fp32-head), or only MatMuls quantized, so the embedding
table's Gather stays float32 (matmul-only). The K/V-cache graph (cache.onnx) gets the same treatment when the folder
has one. Writes DIR/VARIANT/{a,b}/onnx, ready for eval/evaluate.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # export
VARIANTS = ("default", "all-layers", "per-channel", "fp32-head", "matmul-only")


def quantize(graph: Path, variant: str, model) -> None:
    """Quantize the float32 graph in place through export's own int8 path, with the variant's options."""
    import onnx

    from export import quantize_int8
    from export.merge import split_graph_file

    split_graph_file(graph)  # a merged float32 export's matmuls apart, as --int8 has them, before names are read
    options = {}
    if variant == "default":
        options["first_layer_of"] = model
    if variant == "per-channel":
        options["per_channel"] = True
    if variant == "fp32-head":  # the last MatMul of the graph is the LM head's
        matmuls = [n.name for n in onnx.load(str(graph)).graph.node if n.op_type == "MatMul"]
        options["nodes_to_exclude"] = matmuls[-1:]
    if variant.startswith("exclude-"):
        text = variant[len("exclude-"):]
        options["nodes_to_exclude"] = [n.name for n in onnx.load(str(graph)).graph.node
                                       if n.op_type == "MatMul" and text in n.name]
        if not options["nodes_to_exclude"]:  # e.g. layers.0/ in a graph whose layers export/cache.py wrote
            sys.exit(f"error: no MatMul node of {graph} has {text!r} in its name")
    if variant == "matmul-only":
        options["op_types_to_quantize"] = ["MatMul"]
    quantize_int8(graph, **options)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--variant", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--exclude-matching", nargs="+", default=[], metavar="TEXT",
                   help="more variants, DIR/exclude-TEXT (/ written _): model.onnx int8 except the MatMuls whose "
                        "node name holds TEXT (e.g. layers.0/ or mlp/Wi); no cache.onnx")
    args = p.parse_args()
    from transformers import AutoModelForMaskedLM

    for variant in args.variant + [f"exclude-{text}" for text in args.exclude_matching]:
        for name in ("a", "b"):
            model = AutoModelForMaskedLM.from_pretrained(args.models_dir / name / "hf")
            src, dest = args.models_dir / name / "onnx", args.out / variant.replace("/", "_") / name / "onnx"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(src, dest)
            if variant.startswith("exclude-"):  # cache.onnx's node names carry no layer index (nor do
                # those of a model.onnx exported since its layers are export/cache.py's)
                (dest / "cache.onnx").unlink(missing_ok=True)
            for graph in ("model.onnx", "cache.onnx"):
                if (dest / graph).is_file():
                    quantize(dest / graph, variant, model)
            print(f"{variant}: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
