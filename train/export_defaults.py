"""Ship trained checkpoints as tie-lite's default models: copy each Hugging Face folder
into models/NAME/hf and export it with export/ into models/NAME/onnx, exactly as a
user exports a Hub model.

    python train/export_defaults.py [--ckpt /work/ckpt3] [--models-dir models] [--only A B C]

Reads each checkpoint's training_args.json for the layout it was trained on (prompt
suffix, answer marker, reasoning and answer budgets) and records it in the manifest,
so `python tie_lite.py --prompt "..."` decodes with that layout by default.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import export_model  # noqa: E402

HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "training_args.json")
CHECKPOINTS = {"A": "A", "B": "B2", "C": "C"}  # shipped model -> its final stage (train/run_defaults.sh)
BLOCK_SIZE = 4  # divides R = 28 and A = 4, so the answer starts a block of its own


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, default=Path("/work/ckpt3"), help="folder holding the checkpoints")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--only", nargs="+", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    return p.parse_args()


def ship(ckpt: Path, dest: Path, name: str) -> Path:
    """Copy one checkpoint to dest/hf and export it to dest/onnx; returns the manifest path."""
    layout = json.loads((ckpt / "training_args.json").read_text())["layout"]
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "hf").mkdir(parents=True)
    for file in HF_FILES:
        if (ckpt / file).is_file():
            shutil.copy(ckpt / file, dest / "hf" / file)
    gen_length = layout["R"] + layout["A"]
    return export_model(dest / "hf", dest / "onnx", name=name,
                        prompt_format=layout["prompt_prefix"] + "{prompt}" + layout["prompt_suffix"],
                        answer_marker=layout["marker"],
                        decode_defaults={"gen_length": gen_length, "answer_length": layout["A"],
                                         "block_size": BLOCK_SIZE})


def main() -> int:
    args = parse_args()
    for name in args.only:
        manifest = ship(args.ckpt / CHECKPOINTS[name], args.models_dir / name.lower(), name.lower())
        print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
