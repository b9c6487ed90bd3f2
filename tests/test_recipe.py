"""The default models' recipe end to end, in miniature: a few training steps, export, decode."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli


@pytest.mark.slow
@pytest.mark.torch
def test_training_smoke_exports_and_decodes(tmp_path):
    ckpt = tmp_path / "ckpt" / "A"
    subprocess.run([sys.executable, str(ROOT / "train" / "train_mdlm.py"), "--smoke", "--task", "chain80",
                    "--out", str(ckpt)], check=True, capture_output=True, cwd=ROOT, timeout=300)  # the shipped layout
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


def test_token_kinds_tell_results_from_operands():
    sys.path.insert(0, str(ROOT / "train"))
    pytest.importorskip("torch")
    from quick_eval import token_kinds
    text = "7-6=1. 1+8=19."
    kinds = token_kinds(text, [(i, i + 1) for i in range(len(text))])  # one token per character
    assert "".join({"result": "r", "operand": "o", "other": "."}[k] for k in kinds) == "o.o.r..o.o.rr."
    assert token_kinds(text, [(0, 4), (4, 7), (7, 11), (11, 14)]) == ["operand", "result", "operand", "result"]


@pytest.mark.slow
@pytest.mark.torch
def test_teacher_forced_counts_every_reasoning_token_of_a_kept_stage():
    sys.path.insert(0, str(ROOT / "train"))
    import task
    from common import Layout, load_model
    from quick_eval import teacher_forced
    from transformers import AutoTokenizer
    ckpt = ROOT / "train" / "stages" / "FB"
    tok = AutoTokenizer.from_pretrained(ckpt)
    chain80 = task.TASKS["chain80"]
    layout = Layout(tok, R=chain80.R, A=chain80.A, max_length=chain80.max_length)
    examples = task.make_split("validation", 8, seed=0)  # short problems in the chain80 layout
    counts = teacher_forced(load_model(ckpt), layout, examples)
    assert sum(total for _, total in counts.values()) == sum(len(e["reasoning"]) for e in examples)
    assert counts["result"][1] == sum(len(n) for e in examples for n in re.findall(r"=(\d+)", e["reasoning"]))
    right, total = counts["other"]
    assert right >= 0.9 * total  # FB copies the chain's punctuation (all 168 of 20 problems on this CPU)
