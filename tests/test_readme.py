"""Every code block of README.md that runs tie-lite or export runs as written, on the shipped models.

Python blocks run in a fresh interpreter; shell lines that call `python tie_lite.py`,
`python -m tie_lite`, `tie-lite` or `python -m export` (also behind a pipe) run in bash. Both run
in a scratch folder holding links to the checkout's models/ and tie_lite.py, so that what a
block writes stays out of the checkout. The set-up commands (venvs, pip) are left to CI,
which runs the test command itself. Blocks that export need the export extras and take a while:
they are marked torch and slow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
RUNS = re.compile(r"(^|\|\s*)(python tie_lite\.py|python -m tie_lite|tie-lite|python -m export)\b")
EXAMPLE = "Compute 7 - 6 + 8."
EXPORTS = re.compile(r"python -m export\b|^\s*(from export\b|import export\b)", re.M)


def _blocks(language: str) -> list[str]:
    return [code for lang, code in FENCE.findall((ROOT / "README.md").read_text()) if lang == language]


def _cases(codes: list[str], ids=None) -> list:
    """codes as parameters; those that export marked torch and slow."""
    return [pytest.param(code, id=ids(code) if ids else None,
                         marks=[pytest.mark.torch, pytest.mark.slow] if EXPORTS.search(code) else [])
            for code in codes]


def _shell_lines() -> list[str]:
    lines = []
    for code in _blocks(""):
        for line in code.replace("\\\n", " ").splitlines():
            if RUNS.search(line.strip()):
                lines.append(line.strip())
    return lines


@pytest.fixture
def scratch(tmp_path) -> Path:
    for name in ("models", "tie_lite.py", "export", "train"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def _env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PYTHONPATH": str(ROOT), "PATH": bin_dir + os.pathsep + os.environ["PATH"]}


def test_the_readme_has_runnable_blocks():
    assert _blocks("python") and _shell_lines()


@pytest.mark.parametrize("code", _cases(_blocks("python"), ids=lambda code: code.splitlines()[0][:40]))
def test_python_blocks_run_as_written(code, scratch):
    result = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    if EXAMPLE in code and "print(result.text)" in code:
        cli = run_cli("--model", "models/a/onnx", "--prompt", EXAMPLE)
        assert result.stdout == cli.stdout  # the library's default decode is the CLI's


@pytest.mark.parametrize("line", _cases(_shell_lines()))
def test_shell_lines_run_as_written(line, scratch):
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=scratch, env=_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    if EXAMPLE in line and "tie_lite" in line:
        assert "Answer: 9" in result.stdout
