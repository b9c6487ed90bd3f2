"""Session fixtures: tiny random masked LMs, exported through export_model like a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import save_tiny  # noqa: E402


def _export(tmp_path_factory, name: str, arch: str, tokenizer: str, seed: int, **kwargs):
    from export import export_model

    base = tmp_path_factory.mktemp(name)
    hf_dir = save_tiny(base / "hf", arch, tokenizer=tokenizer, seed=seed, **kwargs)
    export_model(hf_dir, base / "onnx", name=name, log=lambda msg: None)
    return hf_dir, base / "onnx"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """(hf folder, onnx folder) of a tiny BERT with a word-level tokenizer."""
    return _export(tmp_path_factory, "bert", "bert", "word", seed=1)


@pytest.fixture(scope="session")
def tiny_modernbert(tmp_path_factory):
    """(hf folder, onnx folder) of a tiny ModernBERT whose LM head is 3 columns wider than its tokenizer."""
    return _export(tmp_path_factory, "modernbert", "modernbert", "word", seed=2, extra_columns=3)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory):
    """(hf folder, onnx folder) of a tiny RoBERTa with a word-level tokenizer."""
    return _export(tmp_path_factory, "roberta", "roberta", "word", seed=4)


@pytest.fixture(scope="session")
def tiny_char(tmp_path_factory):
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


def assert_one_line_error(result, message):
    """Exit code 2, no traceback, and exactly one stderr line: "error: ...message..."."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
