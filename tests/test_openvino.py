"""`--provider openvino`: OpenVINO's onnxruntime plugin (`pip install 'tie-lite[openvino]'`, part of the test
extra). Where it offers a CPU device (Intel CPUs), the shipped models' statistics under it agree with
onnxruntime's own CPU kernels as far as float32 arithmetic allows (tests/tolerances.py: the same float32
products summed in another order), with and without the K/V cache and batched, and the default command
prints its pinned output (tests/test_golden.py argues why any float32 kernels within reach must); where it
offers none, asking for it is one clear error. Needs no torch."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import tie_lite
from conftest import ROOT, assert_one_line_error, run_cli
from test_golden import PROMPT, TEXT
from tolerances import assert_statistics_agree, model_dims

SHIPPED = ("b", "d")  # the default pair: a BERT and a Qwen3 decoder


@pytest.fixture(scope="module")
def has_device() -> bool:
    """Whether OpenVINO's plugin offers a CPU device here (skips without the plugin)."""
    pytest.importorskip(tie_lite.OPENVINO_PLUGIN)
    return bool(tie_lite.openvino_devices())


@pytest.fixture(scope="module")
def device(has_device) -> None:
    if not has_device:
        pytest.skip("OpenVINO's plugin offers no CPU device on this machine (not an Intel CPU)")


def canvases(model: tie_lite.Model, lengths=(160, 131, 97)) -> list:
    """(tokens (L,), positions (K,)) pairs: random ids from the model's vocabulary, masks at the last 16."""
    rng = np.random.default_rng(0)
    out = []
    for length in lengths:
        tokens = rng.integers(0, model.manifest.vocab_size, length).astype(np.int64)  # (L,)
        tokens[-16:] = model.manifest.mask_id
        out.append((tokens, np.arange(length - 16, length)))
    return out


def test_openvino_is_a_provider_without_a_device_number():
    assert tie_lite.parse_provider("openvino") == ("OpenVINOExecutionProvider", {})
    with pytest.raises(tie_lite.ConfigError, match="'openvino:0'"):
        tie_lite.parse_provider("openvino:0")


def test_openvino_without_its_plugin_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, tie_lite.OPENVINO_PLUGIN, None)  # import fails as if not installed
    with pytest.raises(tie_lite.ModelError, match=r"pip install 'tie-lite\[openvino\]'"):
        tie_lite.Model.load(ROOT / "models" / "b" / "onnx", provider="openvino")


def test_openvino_without_a_device_is_one_clear_error(has_device):
    if has_device:
        pytest.skip("OpenVINO's plugin offers a CPU device here")
    assert_one_line_error(run_cli("--prompt", PROMPT, "--provider", "openvino"), "offers no CPU device")


@pytest.mark.parametrize("name", SHIPPED)
def test_openvino_statistics_agree_with_onnxruntimes(device, name):
    folder = ROOT / "models" / name / "onnx"
    cpu, ov = (tie_lite.Model.load(folder, provider=p) for p in ("cpu", "openvino"))
    assert ov.session.get_providers()[0] == "OpenVINOExecutionProvider"
    for tokens, positions in canvases(cpu):
        assert_statistics_agree(cpu.stats(tokens, positions, with_logits=True),
                                ov.stats(tokens, positions, with_logits=True),
                                *model_dims(folder, tokens.size), what=f"{name}, L = {tokens.size}")


def test_openvino_batched_prompts_decode_as_alone(device):
    """Under OpenVINO a canvas's statistics in a batch differ from its own call's in the last bits (~1e-6),
    so a model under it steps batched canvases one call each: batched prompts decode exactly as alone."""
    ov = tie_lite.Model.load(ROOT / "models" / "b" / "onnx", provider="openvino")
    assert not ov.batches_exactly
    prompts = ["Compute 7 - 6 + 8.", "Compute 2 + 3 - 4 + 9.", "What is 5 + 5?"]  # different lengths
    together = tie_lite.generate(ov, prompts, batch_size=3)
    for prompt, got in zip(prompts, together):
        alone = tie_lite.generate(ov, prompt)
        assert (got.text, got.tokens.tolist(), got.steps) == (alone.text, alone.tokens.tolist(), alone.steps)


@pytest.mark.parametrize("name", SHIPPED)
def test_openvino_cache_graph_agrees_with_onnxruntimes(device, name):
    """cache.onnx under OpenVINO, its keys and values bound in and out: a full pass, then a step that
    recomputes the last block over the kept keys and values."""
    folder = ROOT / "models" / name / "onnx"
    cpu, ov = (tie_lite.Model.load(folder, provider=p, kv_cache="prefix") for p in ("cpu", "openvino"))
    tokens, positions = canvases(cpu, lengths=(160,))[0]
    block = np.arange(tokens.size - 16, tokens.size)  # (16,) the block's rows, recomputed
    dims = model_dims(folder, tokens.size)
    (cpu_first, cpu_cache), (ov_first, ov_cache) = (m.prime(tokens, positions, 16, with_logits=True)
                                                    for m in (cpu, ov))
    assert_statistics_agree(cpu_first, ov_first, *dims, what=f"{name}: full pass")
    tokens[-16:-8] = tokens[:8]  # half the block committed since
    gather = cpu.read_rows(positions[8:]) - block[0]  # (8,) rows of `block` predicting the masks left
    cpu_step, ov_step = (m.cached_stats(tokens, cache, block, gather, with_logits=True)
                         for m, cache in ((cpu, cpu_cache), (ov, ov_cache)))
    assert_statistics_agree(cpu_step, ov_step, *dims, what=f"{name}: cached step")


def test_the_default_command_under_openvino_prints_the_pinned_output(device):
    result = run_cli("--prompt", PROMPT, "--provider", "openvino")
    assert (result.returncode, result.stdout, result.stderr) == (0, TEXT + "\n", "")
