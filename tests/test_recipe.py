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
                    "--decode_frac", "0.5", "--out", str(ckpt)], check=True, capture_output=True, cwd=ROOT, timeout=300)  # the shipped layout
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


def test_decode_like_masks_clean_the_blocks_before_and_mask_those_after():
    """Per row: blocks before the drawn one clean, later ones all masked, the drawn one masked at the row's
    level; only the drawn block's masked positions scored. Levels 0 and 1 pin the drawn block down."""
    sys.path.insert(0, str(ROOT / "train"))
    pytest.importorskip("torch")
    import numpy as np
    from train_mdlm import decode_like_mask

    rng = np.random.default_rng(0)
    block, n_resp, rows = 4, 12, 300
    t = rng.random(rows)
    t[:100], t[100:200] = 0.0, 1.0
    masked, scored = decode_like_mask(rng, rows, n_resp, block, t)
    assert masked.shape == scored.shape == (rows, n_resp) and not (scored & ~masked).any()
    for row, level in zip(masked, t):
        first = int(np.argmax(row)) // block * block if row.any() else n_resp - block  # the drawn block
        assert not row[:first].any() and row[first + block:].all()
        if level == 1.0:
            assert row[first:first + block].all()
    starts = {int(np.flatnonzero(r)[0]) for r, level in zip(masked[100:200], t[100:200])}
    assert starts == {0, 4, 8}  # every block is drawn
    assert not scored[:100].any() and (scored[100:200].sum(1) == block).all()
    with pytest.raises(ValueError, match="block 5 does not divide the 12 response positions"):
        decode_like_mask(rng, 1, n_resp, 5, t[:1])


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
