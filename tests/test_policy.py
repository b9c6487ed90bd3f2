"""The learned unmasking policy (Learning Unmasking Policies for Diffusion LMs): features, loading, decoding, TIE, CLI, the trainer."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import tie_lite
from conftest import ROOT, assert_one_line_error, run_cli
from tolerances import EPS32

SHIPPED_A = ROOT / "models" / "a" / "onnx"
SHIPPED_B = ROOT / "models" / "b" / "onnx"
SHIPPED_POLICY = ROOT / "models" / "policy"
PROMPTS = ["Compute 7 - 6 + 8.", "What is 3 * 4 - 5?", "Work out 12 + 9 - 4.", "Calculate 6 * 3 + 2."]
F = len(tie_lite.POLICY_FEATURES)


def write_policy(folder, weights, bias: float, features=tie_lite.POLICY_FEATURES, output="unmask_logits"):
    """A linear policy logit = features @ weights + bias as policy.onnx + policy.json in folder (needs the
    onnx package: callers are marked torch)."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z"]),
         helper.make_node("Add", ["z", "b"], ["zb"]),
         helper.make_node("Squeeze", ["zb", "axis"], [output])],
        "linear_policy",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, "b", F])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, "b"])],
        [helper.make_tensor("w", TensorProto.FLOAT, [F, 1], list(weights)),
         helper.make_tensor("b", TensorProto.FLOAT, [1], [bias]),
         helper.make_tensor("axis", TensorProto.INT64, [1], [-1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "policy.onnx")
    card = {"schema_version": tie_lite.SCHEMA_VERSION, "features": list(features)}
    (folder / "policy.json").write_text(json.dumps(card))
    return folder


@pytest.fixture(scope="module")
def threshold_policy(tmp_path_factory, export_extras):
    """logit = 10 * (top1 - 0.5): commits exactly what the threshold strategy at 0.5 commits."""
    return write_policy(tmp_path_factory.mktemp("policy"), [10.0] + [0.0] * (F - 1), -5.0)


def test_policy_features_by_hand():
    top_probs = np.array([[0.9, 0.05], [0.5, 0.3], [0.25, 0.25]], np.float32)
    entropy = np.array([0.4, 1.0, 2.0], np.float32)
    is_masked = np.array([True, False, True])
    got = tie_lite.policy_features(top_probs, entropy, is_masked, block=3, num_blocks=8)
    want = np.array([[0.9, 0.85, 0.4, 1, 0.0, 1 / 3, 3 / 8],
                     [0.5, 0.2, 1.0, 0, 0.5, 1 / 3, 3 / 8],
                     [0.25, 0.0, 2.0, 1, 1.0, 1 / 3, 3 / 8]], np.float32)
    assert got.dtype == np.float32 and got.shape == (3, F)
    # each feature is a float32 input or at most two correctly rounded operations on float32 roundings of
    # the decimals (the margin p1 - p2, the block share 1 - mean), each rounding by <= EPS32 / 2 relative:
    # off from `want` by <= 1.75 * EPS32 relative (worst, the margin 0.5 - 0.3: the roundings of 0.3, of the
    # difference and of want's 0.2, (0.3 + 0.2 + 0.2) / 0.2 * EPS32 / 2); rtol 2 * EPS32
    np.testing.assert_allclose(got, want, rtol=2 * EPS32, atol=0)
    single = tie_lite.policy_features(top_probs[:1], entropy[:1], is_masked[:1], block=0, num_blocks=8)
    assert single[0, tie_lite.POLICY_FEATURES.index("position")] == 0.0  # one position: no division by zero


@pytest.mark.torch
@pytest.mark.parametrize("folder", [SHIPPED_A, pytest.param("tiny", id="tiny-random-bert")])
def test_linear_threshold_policy_decodes_like_the_threshold_strategy(folder, threshold_policy, tiny_bert):
    """A policy is one more way to pick positions: a logit > 0 policy equal to top1 > 0.5 must give
    the threshold strategy's tokens exactly (the random tiny model exercises the at-least-one rule).
    Exact because both decodes read bitwise the same statistics from one session (only the policy's float32
    10 * top1 - 5 could round to the other side of 0 than top1 of 0.5, at |top1 - 0.5| < ~EPS32): the order
    of the positions committed in one step sits on near-ties (top-1 probabilities near 1, within float32's
    reach of each other), which logits jittered by +-delta (tests/tolerances.py) reorder."""
    model = tie_lite.Model.load(tiny_bert[1] if folder == "tiny" else folder, threads=1)
    defaults = model.manifest.decode_defaults or dict(gen_length=16, block_size=4)
    by_policy = tie_lite.DecodeConfig(**defaults, strategy="policy", policy=str(threshold_policy))
    by_threshold = tie_lite.DecodeConfig(**defaults, strategy="threshold", threshold=0.5)
    prompts = PROMPTS if folder != "tiny" else ["hello world", "the cat"]
    for prompt in prompts:
        a = tie_lite.generate(model, prompt, by_policy, record_history=True)
        b = tie_lite.generate(model, prompt, by_threshold, record_history=True)
        assert a.tokens.tolist() == b.tokens.tolist() and a.steps == b.steps
        assert [e.committed_idx.tolist() for e in a.history] == [e.committed_idx.tolist() for e in b.history]
        assert a.steps < by_policy.gen_length or folder == "tiny"  # the shipped model commits several a step


@pytest.mark.torch
def test_policy_composes_with_tie_and_early_exit(threshold_policy):
    models = [tie_lite.Model.load(SHIPPED_A, threads=1), tie_lite.Model.load(SHIPPED_B, threads=1)]
    defaults = models[0].manifest.decode_defaults
    ensemble = tie_lite.EnsembleConfig(interval=2)
    for extra in ({}, {"exit_threshold": 0.9}):
        by_policy = tie_lite.DecodeConfig(**defaults, **extra, strategy="policy", policy=str(threshold_policy))
        by_threshold = tie_lite.DecodeConfig(**defaults, **extra, strategy="threshold", threshold=0.5)
        relayed = []
        for prompt in (PROMPTS[0], PROMPTS[3]):
            a = tie_lite.generate(models, prompt, by_policy, ensemble)
            b = tie_lite.generate(models, prompt, by_threshold, ensemble)
            assert a.text == b.text and a.model_calls == b.model_calls
            assert [(r.steps, r.leader, r.changed) for r in a.relays] == [(r.steps, r.leader, r.changed) for r in b.relays]
            for r, s in zip(a.relays, b.relays):
                np.testing.assert_array_equal(r.scores, s.scores)  # NaN (nothing to judge yet) equals NaN
            relayed.append(bool(a.relays))
        # the models did hand over; with early exit the shipped models often settle the answer in their
        # first step and exit before any relay (PROMPTS[0]), PROMPTS[3] not
        assert all(relayed) if not extra else any(relayed)


def test_policy_config_errors():
    with pytest.raises(tie_lite.ConfigError, match="go together"):
        tie_lite.DecodeConfig(strategy="policy")
    with pytest.raises(tie_lite.ConfigError, match="go together"):
        tie_lite.DecodeConfig(strategy="threshold", policy=str(SHIPPED_POLICY))
    with pytest.raises(tie_lite.ConfigError, match="EOSER"):
        tie_lite.DecodeConfig(strategy="policy", policy=str(SHIPPED_POLICY), eos_gamma=(0.4, 1.0))


@pytest.mark.torch  # write_policy needs the onnx package
def test_bad_policy_folders_are_named(tmp_path):
    with pytest.raises(tie_lite.ModelError, match="policy folder not found"):
        tie_lite.Policy.load(tmp_path / "nowhere")
    stale = write_policy(tmp_path / "stale", [0.0] * F, 0.0, features=("top1",) * F)
    with pytest.raises(tie_lite.ModelError, match="features"):
        tie_lite.Policy.load(stale)
    renamed = write_policy(tmp_path / "renamed", [0.0] * F, 0.0, output="logits")
    with pytest.raises(tie_lite.ModelError, match="unmask_logits"):
        tie_lite.Policy.load(renamed)
    corrupt = write_policy(tmp_path / "corrupt", [0.0] * F, 0.0)
    (corrupt / "policy.onnx").write_bytes(b"not onnx")
    with pytest.raises(tie_lite.ModelError, match="cannot load ONNX graph"):
        tie_lite.Policy.load(corrupt)


@pytest.mark.torch
def test_cli_policy(threshold_policy, tmp_path):
    base = ["--model", str(SHIPPED_A), "--prompt", PROMPTS[0], "--json"]
    by_policy = run_cli(*base, "--policy", str(threshold_policy))
    by_threshold = run_cli(*base, "--strategy", "threshold", "--threshold", "0.5")
    assert by_policy.returncode == 0, by_policy.stderr
    assert json.loads(by_policy.stdout)["text"] == json.loads(by_threshold.stdout)["text"]
    assert_one_line_error(run_cli(*base, "--policy", str(threshold_policy), "--strategy", "threshold"),
                          "strategy 'policy' and a policy folder go together, got strategy 'threshold'")
    assert_one_line_error(run_cli(*base, "--strategy", "policy"), "go together")
    assert_one_line_error(run_cli(*base, "--policy", str(tmp_path / "missing")), "policy folder not found")


def test_shipped_policy_loads_and_decodes():
    """The shipped policy was trained on the a and b shipped before the chain80 models, in their layout
    (its card's "decode": 32 positions, blocks of 4). Its features are relative to the block and the decode
    (position in the block, share done, progress), so it runs on today's 80 positions in blocks of 16: on
    this prompt it commits a block a step (5 calls a model). Whether it still pays there is
    models/README.md's to measure."""
    policy = tie_lite.Policy.load(SHIPPED_POLICY)
    assert policy.card["trained_on"] == ["a", "b"]
    result = run_cli("--prompt", PROMPTS[0], "--policy", str(SHIPPED_POLICY), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["answer"] == "9"
    assert out["model_calls"] < 2 * 80  # fewer than one token a step for both models (80 positions each)


@pytest.mark.slow
@pytest.mark.torch
def test_policy_training_smoke_exports_a_loadable_policy(tmp_path):
    """A two-iteration GRPO run end to end: rollouts through tie_lite, a gradient step, ONNX export
    checked against torch by the script itself, then decoding with the result."""
    out = tmp_path / "policy"
    run = subprocess.run([sys.executable, str(ROOT / "train" / "train_policy.py"), "--out", str(out),
                          "--iterations", "2", "--problems", "2", "--group", "2", "--eval-n", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "iteration 2/2" in run.stdout
    card = json.loads((out / "policy.json").read_text())
    assert card["features"] == list(tie_lite.POLICY_FEATURES) and card["iterations"] == 2
    model = tie_lite.Model.load(SHIPPED_A, threads=1)
    config = tie_lite.DecodeConfig(**model.manifest.decode_defaults, strategy="policy", policy=str(out))
    assert tie_lite.generate(model, PROMPTS[0], config).answer is not None
