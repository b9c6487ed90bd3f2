"""Ship trained checkpoints as tie-lite's default models: copy each Hugging Face folder
into models/NAME/hf and export it with export/ into models/NAME/onnx, exactly as a
user exports a Hub model.

    python train/export_defaults.py [--ckpt train/stages] [--models-dir models] [--only A B D] [--kv-cache]
    python train/export_defaults.py --from-shipped --int8 --kv-cache --models-dir DIR --only A B
    python train/export_defaults.py --from-shipped --int4 --int4-block-size 16 --models-dir DIR --only A D

Reads each checkpoint's training_args.json for the layout it was trained on (prompt
suffix, answer marker, reasoning and answer budgets) and records it in the manifest,
so `python tie_lite.py --prompt "..."` decodes with that layout by default. --kv-cache
writes cache.onnx for the families the cache graph covers (export/cache.py's CACHED_LAYERS:
every shipped one, D's A2D Qwen included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import DEFAULT_INT4_ACCURACY_LEVEL, DEFAULT_INT4_BLOCK_SIZE, export_model  # noqa: E402
from export.cache import CACHED_LAYERS  # noqa: E402
from export.families import family_for, read_config  # noqa: E402

HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "training_args.json")
# shipped model -> checkpoint: stages F (B), H (A) and K (D) of train/run_defaults.sh (chain80, 2-6
# operations with the short chains kept in the stream), kept in the repository in train/stages/ (the
# default --ckpt; train/stages/KD is the step-1000 snapshot of KD, chosen on validation: from a fresh
# run_defaults.sh's OUT_ROOT pass --checkpoint D KD_steps/step01000). Stage F starts from the models shipped before it
# (ckpt A_steps/step03750, B2, D2: the short task's layout, 32 positions); C (a byte-level BPE
# ModernBERT) is no longer shipped. A snapshot instead: --ckpt ckpt --checkpoint A HA_steps/step03000.
CHECKPOINTS = {"A": "HA", "B": "FB", "D": "KD"}
BLOCK_SIZE = 16  # divides chain80's R (64) and A (16), so the answer starts a block of its own


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, default=ROOT / "train" / "stages",
                   help="folder holding the checkpoints (default: train/stages, where the shipped ones are kept; "
                        "or train/run_defaults.sh's OUT_ROOT)")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--from-shipped", action="store_true",
                   help="export the checkpoints shipped in models/NAME/hf (e.g. int8 copies into another --models-dir)")
    p.add_argument("--plain-names", action="store_true",
                   help="read CKPT/A, CKPT/B, CKPT/D instead of the chosen checkpoints (e.g. a --smoke run)")
    p.add_argument("--int8", action="store_true",
                   help="export int8 (dynamic) graphs instead, e.g. into another --models-dir to measure them")
    p.add_argument("--int4", action="store_true",
                   help="export int4 (MatMulNBits) graphs instead, e.g. into another --models-dir to measure them")
    p.add_argument("--kv-cache", action="store_true", help="also write cache.onnx (tie_lite --kv-cache)")
    p.add_argument("--block-size", type=int, default=BLOCK_SIZE,
                   help="the block the manifests recommend (default: %(default)s); it must divide the layout's "
                        "reasoning and answer budgets")
    p.add_argument("--int8-all-layers", action="store_true", help="with --int8: quantize the first layer too")
    p.add_argument("--int4-block-size", type=int, default=DEFAULT_INT4_BLOCK_SIZE, help="with --int4 (default: %(default)s)")
    p.add_argument("--int4-accuracy-level", type=int, default=DEFAULT_INT4_ACCURACY_LEVEL,
                   help="with --int4 (default: %(default)s)")
    p.add_argument("--only", nargs="+", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    p.add_argument("--checkpoint", nargs=2, action="append", default=[], metavar=("NAME", "DIR"),
                   help="ship NAME from CKPT/DIR instead (e.g. a snapshot: --ckpt ckpt --checkpoint A "
                        "FA_steps/step08000)")
    return p.parse_args()


def ship(ckpt: Path, dest: Path, name: str, int8: bool = False, kv_cache: bool = False,
         int8_all_layers: bool = False, block_size: int = BLOCK_SIZE, **quantization) -> Path:
    """Copy one checkpoint to dest/hf and export it to dest/onnx; returns the manifest path.
    quantization: more ExportOptions fields (int4, int4_block_size, int4_accuracy_level)."""
    layout = json.loads((ckpt / "training_args.json").read_text())["layout"]
    if block_size < 1 or layout["R"] % block_size or layout["A"] % block_size:
        raise SystemExit(f"error: --block-size {block_size} is not a positive divisor of {ckpt}'s reasoning "
                         f"({layout['R']}) and answer ({layout['A']}) budgets")
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "hf").mkdir(parents=True)
    for file in HF_FILES:
        if (ckpt / file).is_file():
            shutil.copy(ckpt / file, dest / "hf" / file)
    gen_length = layout["R"] + layout["A"]
    kv_cache = kv_cache and family_for(read_config(dest / "hf")["model_type"]).name in CACHED_LAYERS
    return export_model(dest / "hf", dest / "onnx", name=name,
                        prompt_format=layout["prompt_prefix"] + "{prompt}" + layout["prompt_suffix"],
                        answer_marker=layout["marker"],
                        decode_defaults={"gen_length": gen_length, "answer_length": layout["A"],
                                         "block_size": block_size}, int8=int8, kv_cache=kv_cache,
                        int8_first_layer_fp32=not int8_all_layers, **quantization)


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            chosen = {**CHECKPOINTS, **dict(args.checkpoint)}
            ckpt = args.ckpt / (name if args.plain_names else chosen[name])
            if args.from_shipped:  # copied first: ship() replaces its destination, which may be models/
                ckpt = Path(shutil.copytree(ROOT / "models" / name.lower() / "hf", Path(tmp) / name))
            manifest = ship(ckpt, args.models_dir / name.lower(), name.lower(), args.int8, args.kv_cache,
                            args.int8_all_layers, args.block_size, int4=args.int4, int4_block_size=args.int4_block_size,
                            int4_accuracy_level=args.int4_accuracy_level)
            print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
