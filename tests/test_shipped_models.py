"""The default models shipped in models/: they load, their manifests validate, their ONNX graphs agree
with their PyTorch checkpoints, and the CLI answers with them and no other argument."""

from __future__ import annotations

import json

import pytest

import tie_lite
from conftest import ROOT, run_cli
from tolerances import assert_statistics_agree, model_dims

SHIPPED = sorted(p.name for p in (ROOT / "models").iterdir() if (p / "onnx" / tie_lite.MANIFEST_NAME).is_file())


def test_the_default_models_are_shipped():
    assert set(tie_lite.DEFAULT_MODELS) <= set(SHIPPED)


@pytest.mark.torch
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_matches_its_checkpoint(name):
    """tie_lite's statistics from the ONNX graph against the PyTorch checkpoint's, on the sample canvases
    export validates with, held to what float32 arithmetic allows for this model's own numbers
    (tests/tolerances.py): logits within delta = 2 (N + 1) sqrt(K) EPS32 max|z| (4 layers, K = 384 or 512,
    |z| up to ~16: delta ~ 4e-4; d: 5 layers, K = 448, |z| up to ~21: delta ~ 6e-4), top-1 ids equal except
    at near-ties (log p1/p2 <= 2 delta), probabilities within p * expm1(2 delta), entropies within 4 delta H.
    (export's validate() holds them to a fixed PROB_ATOL instead, which is export's to revisit.)"""
    import numpy as np
    from export.families import family_for, read_config
    from export.graph import suppressed_columns
    from export.validate import sample_canvases, torch_statistics

    folder = ROOT / "models" / name
    model = tie_lite.Model.load(folder / "onnx")
    m = model.manifest
    assert m.decode_defaults["answer_length"] > 0  # shipped for reasoning-as-infilling
    family = family_for(read_config(folder / "hf")["model_type"])
    hf = family.load(str(folder / "hf"), False).eval()
    is_suppressed = suppressed_columns(m.graph_vocab_size, m.vocab_size, [m.mask_id])
    for tokens in sample_canvases(m.vocab_size, m.mask_id, m.max_length):
        positions = np.arange(tokens.size)
        ref = torch_statistics(hf, family, tokens, positions, is_suppressed, m.top_k)
        assert_statistics_agree(ref, model.stats(tokens, positions, with_logits=True),
                                *model_dims(folder / "hf", tokens.size), what=f"model {name}, L = {tokens.size}")


def test_shipped_models_solve_the_task():
    """Far above chance on validation problems: catches a broken export or a model shipped untrained.
    The 40 short (2-3-operation) problems, decoded in the models' own 80-position layout: the shipped a
    solves 40, b 38, d 39 (regenerate when the models change); the bar leaves a margin of 5 below the weakest."""
    import sys

    sys.path.insert(0, str(ROOT / "train"))
    import task

    problems = task.make_split("validation", 40, seed=1)
    for name in SHIPPED:
        model = tie_lite.Model.load(ROOT / "models" / name / "onnx")
        config = tie_lite.DecodeConfig(**model.manifest.decode_defaults)
        results = tie_lite.generate(model, [p["prompt"] for p in problems], config, batch_size=len(problems))
        correct = sum(task.is_correct(r.answer or "", p) for r, p in zip(results, problems))
        assert correct >= 33, f"model {name}: {correct}/40"


def test_cli_answers_with_the_default_models():
    result = run_cli("--prompt", "Compute 7 - 6 + 8.", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    names = [c["model"] for c in out["candidates"]] if "candidates" in out else [out["model"]]
    assert names == list(tie_lite.DEFAULT_MODELS)
    assert out["answer"] is not None and "\nAnswer: " in out["text"]


def test_the_text_relay_loses_nothing_on_a_and_b(monkeypatch):
    """a and b share a tokenizer, so TIE relays token ids between them; forced through text (decode,
    re-encode, lay out again, as between tokenizers) the relay falls on a block boundary and these 12 give
    the same texts (on 1000 test problems one answer differs: eval/README.md, "The text relay")."""
    import sys

    sys.path.insert(0, str(ROOT / "train"))
    import task

    prompts = [p["prompt"] for p in task.make_split("test", 12, seed=0)]
    pair = [tie_lite.Model.load(ROOT / "models" / name / "onnx") for name in ("a", "b")]
    assert tie_lite.same_tokenizer(*pair)
    by_ids = tie_lite.generate(pair, prompts, batch_size=len(prompts))  # as each alone: tests/test_batch.py
    monkeypatch.setattr(tie_lite, "same_tokenizer", lambda a, b: False)
    by_text = tie_lite.generate(pair, prompts, batch_size=len(prompts))
    assert sum(len(r.relays) for r in by_ids) >= len(prompts)  # the relay did happen
    assert [r.text for r in by_text] == [r.text for r in by_ids]
