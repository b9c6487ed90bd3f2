"""The default models' recipe end to end, in miniature: a few training steps, export, decode."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli


@pytest.mark.slow
@pytest.mark.torch
def test_training_smoke_exports_and_decodes(tmp_path):
    ckpt = tmp_path / "ckpt" / "A"
    subprocess.run([sys.executable, str(ROOT / "train" / "train_mdlm.py"), "--smoke", "--out", str(ckpt)],
                   check=True, capture_output=True, cwd=ROOT, timeout=300)
    subprocess.run([sys.executable, str(ROOT / "train" / "export_defaults.py"), "--ckpt", str(ckpt.parent),
                    "--models-dir", str(tmp_path / "models"), "--only", "A", "--plain-names"],
                   check=True, capture_output=True, cwd=ROOT, timeout=300)
    manifest = json.loads((tmp_path / "models" / "a" / "onnx" / "tie_lite.json").read_text())
    layout = json.loads((ckpt / "training_args.json").read_text())["layout"]
    assert manifest["answer_marker"] == layout["marker"]
    assert manifest["decode_defaults"]["answer_length"] == layout["A"]
    result = run_cli("--model", str(tmp_path / "models" / "a" / "onnx"), "--prompt", "Compute 7 - 6 + 8.", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == layout["R"] + layout["A"]
