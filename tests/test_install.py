"""`pip install .` carries the default models: the installed command decodes with them from any folder.

Builds the project's wheel, installs it into a fresh venv holding only the runtime (no torch), and runs
`tie-lite` and `python -m tie_lite` from a folder outside the checkout. Needs the package index (or
pip's cache); without either it skips, saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import ROOT

PROMPT = "Compute 7 - 6 + 8."
# The checkout is copied before building, so build/ and *.egg-info land in the copy, not in it.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv*", "venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache")


def _env() -> dict:
    """The environment without this checkout on the path or this venv active."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _index_reachable() -> bool:
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(parsed.path).is_dir()
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=5).close()
        return True
    except OSError:
        return False


def _pip(python: Path, *args: str, cwd: Path) -> None:
    result = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args],
                            capture_output=True, text=True, cwd=cwd, env=_env(), timeout=900)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        if not _index_reachable():
            pytest.skip(f"pip {args[0]} failed with no network to the package index and nothing usable in "
                        f"pip's cache: {last}")
        pytest.fail(f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@pytest.mark.slow
def test_installed_command_runs_the_default_models_from_any_folder(tmp_path):
    source = Path(shutil.copytree(ROOT, tmp_path / "src", ignore=NOT_COPIED))
    venv_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True, env=_env(), timeout=300)
    scripts = venv_dir / ("Scripts" if os.name == "nt" else "bin")
    python = scripts / "python"

    _pip(python, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(source), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("tie_lite-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("a", "b", "d"):
        for file in ("model.onnx", "tie_lite.json", "tokenizer.json"):
            assert f"tie_lite_models/{name}/onnx/{file}" in names
    assert {"tie_lite_models/policy/policy.onnx", "tie_lite_models/policy/policy.json"} <= set(names)
    assert not [n for n in names if "/hf/" in n or n.endswith(".safetensors")], "checkpoints in the wheel"

    _pip(python, "install", str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import importlib.util, tie_lite; "
                            "print(importlib.util.find_spec('torch') is None); print(tie_lite.DEFAULT_MODELS_DIR)"],
                           capture_output=True, text=True, cwd=elsewhere, env=_env(), timeout=120)
    assert where.returncode == 0, where.stderr
    no_torch, models_dir = where.stdout.split("\n")[:2]
    assert no_torch == "True", "the runtime venv holds torch"
    assert Path(models_dir).name == "tie_lite_models" and venv_dir.resolve() in Path(models_dir).resolve().parents

    for command in ([str(scripts / "tie-lite")], [str(python), "-m", "tie_lite"]):
        result = subprocess.run(command + ["--prompt", PROMPT], capture_output=True, text=True, cwd=elsewhere,
                                env=_env(), timeout=300)
        assert result.returncode == 0, (command, result.stderr)
        assert "Answer: 9" in result.stdout, (command, result.stdout)
