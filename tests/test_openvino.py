"""`--provider openvino`: OpenVINO's onnxruntime plugin (`pip install 'tie-lite[openvino]'`, part of the test
extra). Where it offers a CPU device (Intel CPUs), the shipped models' statistics under it agree with
onnxruntime's own CPU kernels as far as float32 arithmetic allows (tests/tolerances.py: the same float32
products summed in another order), with and without the K/V cache and batched, and the default command
prints its pinned output (tests/test_golden.py argues why any float32 kernels within reach must); where it
offers none, asking for it is one clear error. Needs no torch."""

from __future__ import annotations

import os
import shutil
import sys
import time

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


def entries(cache) -> list:
    """The OpenVINO cache's entries (staging folders start with a dot)."""
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) if cache.is_dir() else []


def test_openvino_compiles_a_graph_once_into_its_cache(device, tmp_path, monkeypatch):
    """The first load compiles model.onnx into the cache; the next loads that entry without compiling, and
    its statistics are bit-identical to a session compiled at load (the same compiler, the same settings)."""
    import onnxruntime as ort

    folder, cache = ROOT / "models" / "b" / "onnx", tmp_path / "kept"
    tie_lite.Model.load(folder, provider="openvino", openvino_cache=cache)
    (entry,) = entries(cache)
    assert {p.name for p in (cache / entry).iterdir()} >= {tie_lite.COMPILED_GRAPH, tie_lite.COMPILED_SOURCE}
    assert str((folder / "model.onnx").resolve()) in (cache / entry / tie_lite.COMPILED_SOURCE).read_text()

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(ort, "ModelCompiler", no_compiling)
    kept = tie_lite.Model.load(folder, provider="openvino", openvino_cache=cache)
    monkeypatch.undo()
    fresh = tie_lite.Model.load(folder, provider="openvino", openvino_cache=False)
    assert kept.session.get_providers()[0] == "OpenVINOExecutionProvider"
    for tokens, positions in canvases(fresh):
        a, b = (m.stats(tokens, positions, with_logits=True) for m in (kept, fresh))
        for name in ("top_ids", "top_probs", "entropy", "logits"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (name, tokens.size)
    assert entries(cache) == [entry]


def test_openvino_cache_compiles_a_changed_graph_again_and_drops_its_old_entry(device, tmp_path):
    folder, cache = tmp_path / "b", tmp_path / "kept"
    shutil.copytree(ROOT / "models" / "b" / "onnx", folder)
    tie_lite.Model.load(folder, provider="openvino", openvino_cache=cache)
    (before,) = entries(cache)
    graph = folder / "model.onnx"
    os.utime(graph, ns=(graph.stat().st_atime_ns, graph.stat().st_mtime_ns + 10**9))  # as a re-export would
    tie_lite.Model.load(folder, provider="openvino", openvino_cache=cache)
    (after,) = entries(cache)
    assert after != before
    tie_lite.Model.load(folder, provider="openvino", openvino_cache=cache, threads=1)  # other settings (as in TIE)
    assert len(entries(cache)) == 2 and after in entries(cache)  # ... an entry of their own, beside the other
    shutil.copy2(graph, tmp_path / "copy")
    os.replace(tmp_path / "copy", graph)  # the same bytes, size and times, another file (as `cp -p` gives)
    tie_lite.Model.load(folder, provider="openvino", openvino_cache=cache)
    assert after not in entries(cache) and len(entries(cache)) == 1  # both entries were of the old file


def test_openvino_cache_removes_staging_folders_of_killed_compiles(device, tmp_path):
    cache = tmp_path / "kept"
    (cache / ".killed").mkdir(parents=True)
    (cache / ".compiling").mkdir()
    old = time.time() - tie_lite.STAGING_MAX_AGE - 60
    os.utime(cache / ".killed", (old, old))
    tie_lite.Model.load(ROOT / "models" / "b" / "onnx", provider="openvino", openvino_cache=cache)
    assert not (cache / ".killed").exists() and (cache / ".compiling").is_dir()


def test_openvino_cache_compiles_a_damaged_entry_again(device, tmp_path):
    folder, cache = ROOT / "models" / "b" / "onnx", tmp_path / "kept"
    tie_lite.Model.load(folder, provider="openvino", openvino_cache=cache)
    (entry,) = entries(cache)
    blobs = [f for f in (cache / entry).iterdir() if f.name not in (tie_lite.COMPILED_GRAPH, tie_lite.COMPILED_SOURCE)]
    assert blobs  # OpenVINO's compiled model, beside the graph that names it
    for blob in blobs:
        blob.write_bytes(b"garbage")
    model = tie_lite.Model.load(folder, provider="openvino", openvino_cache=cache)
    assert all(blob.read_bytes() != b"garbage" for blob in blobs)  # compiled again
    fresh = tie_lite.Model.load(folder, provider="openvino", openvino_cache=False)
    tokens, positions = canvases(fresh)[0]
    assert np.array_equal(model.stats(tokens, positions).top_probs, fresh.stats(tokens, positions).top_probs)
    assert entries(cache) == [entry]


def test_an_openvino_cache_that_cannot_be_written_warns_and_the_model_loads(device, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.warns(UserWarning, match="compiled it for this load only"):
        model = tie_lite.Model.load(ROOT / "models" / "b" / "onnx", provider="openvino",
                                    openvino_cache=tmp_path / "file" / "kept")  # a folder under a file
    assert model.session.get_providers()[0] == "OpenVINOExecutionProvider"


@pytest.mark.parametrize("value", [3, "", None])
def test_openvino_cache_is_true_false_or_a_folder(value):
    with pytest.raises(tie_lite.ConfigError, match=f"got {value!r}"):
        tie_lite.Model.load(ROOT / "models" / "b" / "onnx", provider="openvino", openvino_cache=value)


def test_an_openvino_cache_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(tie_lite.ConfigError, match="is a file, not a folder"):
        tie_lite.Model.load(ROOT / "models" / "b" / "onnx", provider="openvino", openvino_cache=tmp_path / "file")
    assert_one_line_error(run_cli("--prompt", PROMPT, "--provider", "openvino", "--openvino-cache",
                                  str(tmp_path / "file")), "is a file, not a folder")


def test_openvino_cache_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(tie_lite.OPENVINO_CACHE_ENV, str(tmp_path / "env"))
    assert tie_lite.openvino_cache_dir() == tmp_path / "env"
    monkeypatch.delenv(tie_lite.OPENVINO_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "name", "posix")
    assert tie_lite.openvino_cache_dir(True) == tmp_path / "xdg" / "tie-lite" / "openvino"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tie_lite.openvino_cache_dir(True) == tmp_path / "home" / ".cache" / "tie-lite" / "openvino"
    assert tie_lite.openvino_cache_dir(False) is None


def test_the_cli_keeps_compiled_graphs_where_it_is_told(device, tmp_path, monkeypatch):
    kept = tmp_path / "kept"
    result = run_cli("--prompt", PROMPT, "--provider", "openvino", "--openvino-cache", str(kept))
    assert (result.returncode, result.stdout, result.stderr) == (0, TEXT + "\n", "")
    assert len(entries(kept)) == 2  # the pair b + d, one graph each
    monkeypatch.setenv(tie_lite.OPENVINO_CACHE_ENV, str(tmp_path / "default"))
    result = run_cli("--prompt", PROMPT, "--provider", "openvino", "--no-openvino-cache")
    assert (result.returncode, result.stdout, result.stderr) == (0, TEXT + "\n", "")
    assert not (tmp_path / "default").exists()


def test_the_cli_warns_in_one_line_when_it_cannot_keep_a_compiled_graph(device, tmp_path):
    (tmp_path / "file").write_text("")
    unwritable = tmp_path / "file" / "kept"  # a folder under a file
    result = run_cli("--prompt", PROMPT, "--provider", "openvino", "--openvino-cache", str(unwritable))
    assert (result.returncode, result.stdout) == (0, TEXT + "\n")
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines  # b's and d's
    for line, name in zip(lines, ("b", "d")):
        assert line.startswith(f"warning: cannot keep OpenVINO's compiled {ROOT / 'models' / name / 'onnx' / 'model.onnx'}")


def test_an_openvino_cache_that_cannot_be_a_folder_is_one_clear_error():
    with pytest.raises(tie_lite.ConfigError, match="~nosuchuser-tie-lite"):
        tie_lite.Model.load(ROOT / "models" / "b" / "onnx", provider="openvino",
                            openvino_cache="~nosuchuser-tie-lite/c")
    assert_one_line_error(run_cli("--prompt", PROMPT, "--provider", "openvino", "--openvino-cache", ""), "got ''")
