"""The library as a desktop app embeds it: import tie_lite, load, generate, callbacks, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import tie_lite
from conftest import ROOT
from tolerances import EPS32

SHIPPED_B = ROOT / "models" / "b" / "onnx"  # a BERT, as the tiny_bert fixture (conftest.py) but needing no torch


def test_import_pulls_in_no_torch_or_transformers():
    code = "import sys, tie_lite; print(sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
    timing = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tie_lite"],
                            capture_output=True, text=True, cwd=ROOT, check=True)
    assert "torch" not in timing.stderr and "transformers" not in timing.stderr


@pytest.mark.torch
def test_generate_returns_result_with_history(tiny_bert):
    model = tie_lite.Model.load(tiny_bert[1])
    config = tie_lite.DecodeConfig(gen_length=32, block_size=16, answer_length=16)
    result = tie_lite.generate(model, "how many cat ?", config, record_history=True)
    assert result.steps == 32 and not result.stopped
    assert len(result.history) == 32
    committed = np.concatenate([e.committed_idx for e in result.history])
    assert sorted(committed.tolist()) == sorted(set(committed.tolist()))  # each position committed once
    answer_start = result.history[0].tokens.size - 16
    first_answer_step = min(e.step for e in result.history if e.committed_idx.min() >= answer_start)
    assert all(e.committed_idx.max() < answer_start for e in result.history if e.step < first_answer_step)
    assert first_answer_step == 17  # the answer only after every reasoning position
    assert result.answer is not None and result.text.endswith(model.manifest.answer_marker + result.answer)


@pytest.mark.torch
def test_on_step_returning_false_stops_within_one_step(tiny_bert):
    model = tie_lite.Model.load(tiny_bert[1])
    seen = []

    def on_step(event):
        seen.append(event.step)
        return event.step < 5

    result = tie_lite.generate(model, "the sun", tie_lite.DecodeConfig(gen_length=16), on_step=on_step)
    assert result.stopped and result.steps == 5 and seen == [1, 2, 3, 4, 5]


@pytest.mark.torch
def test_output_is_cut_at_the_first_eos(tiny_bert):
    model = tie_lite.Model.load(tiny_bert[1])
    m = model.manifest
    config = tie_lite.DecodeConfig(gen_length=16).for_model(model)
    canvas = tie_lite.build_canvas(model, "the cat", config)
    canvas.tokens[canvas.gen_idx] = [5, 6, m.eos_id, 7] + [m.eos_id] * 12
    text, tokens, answer = tie_lite.finish(model, canvas, config)
    assert tokens.tolist() == [5, 6] and answer is None
    assert text == model.detokenize(np.array([5, 6]))


@pytest.mark.torch
def test_stats_gather_only_the_asked_positions(tiny_modernbert):
    model = tie_lite.Model.load(tiny_modernbert[1])
    tokens = model.encode("the cat is big")
    stats = model.stats(tokens, np.array([0, 2]), with_logits=True)
    assert stats.top_ids.shape == (2, model.manifest.top_k) and stats.entropy.shape == (2,)
    assert stats.logits.shape == (2, model.manifest.graph_vocab_size)
    assert (stats.top_ids < model.manifest.vocab_size).all()           # wider graph columns never produced
    assert (stats.top_ids != model.manifest.mask_id).all()             # nor the mask token
    assert np.all(np.diff(stats.top_probs, axis=1) <= 0)                # most probable first
    # the graph's float32 top-1 probability exp(log_softmax(z)) against numpy's float64 softmax of the same
    # logits: the float32 sum of V exponentials errs by at most (V - 1) * EPS32 / 2 relative, the exp, log
    # and final exp by a few EPS32 more (float64 adds nothing comparable): rtol (V + 8) * EPS32
    rtol = (stats.logits.shape[1] + 8) * EPS32
    np.testing.assert_allclose(stats.top_probs[:, 0], tie_lite.softmax(stats.logits).max(-1), rtol=rtol)


def test_load_errors_are_exceptions_naming_the_problem(tmp_path):
    with pytest.raises(tie_lite.ModelError, match="model folder not found"):
        tie_lite.Model.load(tmp_path / "nope")
    with pytest.raises(tie_lite.ConfigError, match="'tpu'"):
        tie_lite.Model.load(SHIPPED_B, provider="tpu")


def test_manifest_rejects_out_of_range_ids():
    data = json.loads((SHIPPED_B / "tie_lite.json").read_text())
    data["mask_id"] = data["vocab_size"] + 5
    with pytest.raises(tie_lite.ModelError, match="mask_id"):
        tie_lite.Manifest.from_dict(data)
    data["mask_id"] = True
    with pytest.raises(tie_lite.ModelError, match="must be int"):
        tie_lite.Manifest.from_dict(data)


@pytest.mark.torch
def test_manifest_round_trips(tiny_bert):
    data = json.loads((tiny_bert[1] / "tie_lite.json").read_text())
    assert tie_lite.Manifest.from_dict(data).to_dict() == data


@pytest.mark.parametrize("name", ["a", "b", "d"])
def test_shipped_manifests_round_trip(name):
    data = json.loads((ROOT / "models" / name / "onnx" / "tie_lite.json").read_text())
    assert tie_lite.Manifest.from_dict(data).to_dict() == data


def test_runtime_reads_only_onnx_json_and_tokenizer_json():
    source = (ROOT / "tie_lite.py").read_text()
    for unsafe in ("pickle", "np.load(", "allow_pickle", "torch.load", "eval(", "exec("):
        assert unsafe not in source, unsafe


@pytest.mark.torch
@pytest.mark.parametrize("rule", [dict(exit_threshold=0.2), dict(exit_patience=2)])
def test_early_exit_fills_the_answer_and_stops(tiny_bert, rule):
    model = tie_lite.Model.load(tiny_bert[1])
    full = tie_lite.generate(model, "how many cat ?", tie_lite.DecodeConfig(gen_length=64, answer_length=16))
    config = tie_lite.DecodeConfig(gen_length=64, answer_length=16, **rule)
    result = tie_lite.generate(model, "how many cat ?", config, record_history=True)
    assert result.steps < full.steps  # the rule fired before the reasoning was done
    last = result.history[-1]
    answer_idx = np.arange(last.tokens.size - 16, last.tokens.size)
    assert (last.tokens[answer_idx] != model.manifest.mask_id).all()
    assert set(answer_idx.tolist()) <= set(np.concatenate([e.committed_idx for e in result.history]).tolist())
    assert result.answer is not None and model.manifest.answer_marker in result.text


@pytest.mark.torch
def test_infill_reasoning_for_a_given_answer_reports_confidence(tiny_bert):
    model = tie_lite.Model.load(tiny_bert[1])
    config = tie_lite.DecodeConfig(gen_length=48, answer_length=16)
    result = tie_lite.generate(model, "what is two plus three ?", config, answer="five", record_history=True)
    assert result.answer == "five" and result.text.endswith("Answer:five")
    assert result.steps == 32  # only the reasoning is decoded
    assert len(result.answer_confidence) == 32 and all(0 < c <= 1 for c in result.answer_confidence)
    assert [e.answer_confidence for e in result.history] == list(result.answer_confidence)
    # the reported confidence is the model's probability of "five" then EOS with the answer masked
    last = result.history[-1].tokens.copy()
    answer_idx = np.arange(last.size - 16, last.size)
    last[answer_idx] = model.manifest.mask_id
    stats = model.stats(last, answer_idx[:2], with_logits=True)
    probs = tie_lite.softmax(stats.logits)
    five = model.encode("five")[0]
    expected = np.sqrt(probs[0, five] * probs[1, model.manifest.eos_id])
    # the same float32 logits (the same graph on the same canvas; onnxruntime's CPU kernels repeat themselves
    # on equal inputs) through two float64 formulas, exp(mean log p) and sqrt(p0 p1): they differ by a few
    # EPS64 (2.2e-16) times |log p|, ~1e-14; rel 1e-12 covers that and nothing a float32 difference would
    assert result.answer_confidence[-1] == pytest.approx(expected, rel=1e-12)


@pytest.mark.torch
def test_given_answer_errors(tiny_bert):
    model = tie_lite.Model.load(tiny_bert[1])
    with pytest.raises(tie_lite.ConfigError, match="reasoning-as-infilling"):
        tie_lite.generate(model, "the cat", tie_lite.DecodeConfig(gen_length=32), answer="five")
    with pytest.raises(tie_lite.ConfigError, match="room for at least one EOS"):
        tie_lite.generate(model, "the cat", tie_lite.DecodeConfig(gen_length=32, answer_length=16),
                          answer=" ".join(["cat"] * 16))


def test_stop_texts_cut_the_output():
    assert tie_lite.cut_at_stop_text("the answer is 5[/Answer] and more", ["[/Answer]"]) == "the answer is 5"
    assert tie_lite.cut_at_stop_text("a b c", ["[/Answer]", "b"]) == "a "
    assert tie_lite.cut_at_stop_text("a b c", []) == "a b c"
