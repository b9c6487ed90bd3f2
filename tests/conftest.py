"""Session fixtures: tiny random masked LMs, exported through export_model like a user would; the
`torch` and `cuda_absent` markers' skips.

The runtime's tests need only the runtime (numpy, onnxruntime, tokenizers) and pytest: `pip install .
pytest && python -m pytest`. Tests that build models with PyTorch, export them or read ONNX files with the
onnx package need the export extras (`pip install ".[export]"`); they are marked `torch` and skipped, saying
so, where those are not installed. Nothing here imports them at module level: the fixtures that build
models do, inside, and depend on `export_extras`, which a test using them must declare with the marker
(checked at collection, in every environment).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

# What `pip install ".[export]"` adds to the runtime that the `torch` tests import (optimum-onnx installs
# the module `optimum`; onnx-ir, `onnx_ir`, is what onnxruntime's int4 quantizer imports).
EXPORT_EXTRAS = ("torch", "transformers", "optimum", "onnx", "onnx_ir")
MISSING_EXTRAS = [name for name in EXPORT_EXTRAS if importlib.util.find_spec(name) is None]
NO_EXTRAS_REASON = (f"needs the export extras (pip install \".[export]\"); not installed: {', '.join(MISSING_EXTRAS)}")


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def pytest_collection_modifyitems(config, items):
    """Skip `torch` tests without the export extras and `cuda_absent` tests where CUDA is there; refuse a
    test that uses a model-building fixture (one depending on `export_extras`) without the `torch` marker."""
    unmarked = [item.nodeid for item in items
                if "export_extras" in getattr(item, "fixturenames", ()) and item.get_closest_marker("torch") is None]
    if unmarked:
        raise pytest.UsageError("these tests use a fixture that builds models with PyTorch but are not marked "
                                "@pytest.mark.torch:\n  " + "\n  ".join(unmarked))
    skip_torch = pytest.mark.skip(reason=NO_EXTRAS_REASON) if MISSING_EXTRAS else None
    has_cuda = None
    for item in items:
        if skip_torch and item.get_closest_marker("torch"):
            item.add_marker(skip_torch)
        if item.get_closest_marker("cuda_absent"):
            has_cuda = cuda_available() if has_cuda is None else has_cuda
            if has_cuda:
                item.add_marker(pytest.mark.skip(reason="asserts CUDA is unavailable, but this onnxruntime "
                                                        "has CUDAExecutionProvider"))


@pytest.fixture(scope="session", autouse=True)
def openvino_cache(tmp_path_factory):
    """The folder every test's OpenVINO sessions keep their compiled graphs in (TIE_LITE_OPENVINO_CACHE, also
    for the CLI's subprocesses), so that no test writes into the user's cache."""
    folder = tmp_path_factory.mktemp("openvino-cache")
    before = os.environ.get("TIE_LITE_OPENVINO_CACHE")
    os.environ["TIE_LITE_OPENVINO_CACHE"] = str(folder)
    yield folder
    if before is None:
        del os.environ["TIE_LITE_OPENVINO_CACHE"]
    else:
        os.environ["TIE_LITE_OPENVINO_CACHE"] = before


@pytest.fixture(scope="session")
def export_extras():
    """Depended on by every fixture that builds or exports models with PyTorch (see the module docstring)."""
    if MISSING_EXTRAS:  # a `torch` test is skipped before it gets here; this is the fallback
        pytest.skip(NO_EXTRAS_REASON)


def _export(tmp_path_factory, name: str, arch: str, tokenizer: str, seed: int, **kwargs):
    from export import export_model
    from tiny import save_tiny

    base = tmp_path_factory.mktemp(name)
    hf_dir = save_tiny(base / "hf", arch, tokenizer=tokenizer, seed=seed, **kwargs)
    export_model(hf_dir, base / "onnx", name=name, log=lambda msg: None)
    return hf_dir, base / "onnx"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, export_extras):
    """(hf folder, onnx folder) of a tiny BERT with a word-level tokenizer."""
    return _export(tmp_path_factory, "bert", "bert", "word", seed=1)


@pytest.fixture(scope="session")
def tiny_modernbert(tmp_path_factory, export_extras):
    """(hf folder, onnx folder) of a tiny ModernBERT whose LM head is 3 columns wider than its tokenizer."""
    return _export(tmp_path_factory, "modernbert", "modernbert", "word", seed=2, extra_columns=3)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, export_extras):
    """(hf folder, onnx folder) of a tiny RoBERTa with a word-level tokenizer."""
    return _export(tmp_path_factory, "roberta", "roberta", "word", seed=4)


@pytest.fixture(scope="session")
def tiny_char(tmp_path_factory, export_extras):
    """(hf folder, onnx folder) of a tiny BERT with a character-level tokenizer."""
    return _export(tmp_path_factory, "char", "bert", "char", seed=3)


def run_cli(*args: str, module: str | None = None, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `python tie_lite.py ARGS` (or `python -m MODULE ARGS`) from the repo root; `stdin` is piped in
    (else standard input is empty)."""
    cmd = [sys.executable, "-m", module] if module else [sys.executable, str(ROOT / "tie_lite.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
                          input=stdin if stdin is not None else "")


def run_export(capsys, *args: str) -> subprocess.CompletedProcess:
    """`python -m export ARGS` run in this process (torch is imported once, not once a test), its exit code
    and output returned as run_cli returns them; test_export_cli_writes_a_loadable_folder runs the command."""
    from export.__main__ import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["python", "-m", "export", *args], code, out, err)


def assert_one_line_error(result, message):
    """Exit code 2, no traceback, and exactly one stderr line: "error: ...message..."."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]


def assert_same_decodes(plain, cached, config, prompts) -> None:
    """Every prompt decodes to the same tokens in the same number of steps with both models."""
    import tie_lite

    for prompt in prompts:
        want = tie_lite.generate(plain, prompt, config)
        got = tie_lite.generate(cached, prompt, config)
        assert got.tokens.tolist() == want.tokens.tolist()
        assert got.steps == want.steps
