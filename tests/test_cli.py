"""The CLI as a user runs it: a subprocess, text or --json out, one clear error line on bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_one_line_error as _assert_one_line_error, run_cli

pytestmark = pytest.mark.torch  # every test runs the CLI on the tiny exported models (conftest.py)


def test_cli_prints_text(tiny_bert):
    result = run_cli("--model", str(tiny_bert[1]), "--prompt", "what is two plus two ?", "--gen-length", "16")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_cli_json_output(tiny_bert):
    result = run_cli("--model", str(tiny_bert[1]), "--prompt", "the cat", "--gen-length", "32",
                     "--answer-length", "16", "--json", "--history")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["steps"] == 32 and out["stopped"] is False and out["model"] == "bert"
    assert isinstance(out["answer"], str) and "Answer:" in out["text"]
    assert [len(e["positions"]) for e in out["history"]] == [1] * 32


def test_cli_sampling_is_seeded(tiny_bert):
    args = ("--model", str(tiny_bert[1]), "--prompt", "the dog", "--gen-length", "16", "--temperature", "1.0",
            "--json")
    first, again = run_cli(*args, "--seed", "7"), run_cli(*args, "--seed", "7")
    other = [run_cli(*args, "--seed", str(s)) for s in (8, 9)]
    tokens = lambda r: json.loads(r.stdout)["tokens"]  # noqa: E731
    assert tokens(first) == tokens(again)
    assert any(tokens(o) != tokens(first) for o in other)


def test_cli_ensemble_json_and_trace(tiny_bert, tiny_modernbert):
    result = run_cli("--models", str(tiny_bert[1]), str(tiny_modernbert[1]), "--prompt", "the cat",
                     "--gen-length", "48", "--answer-length", "16", "--interval", "8", "--score", "entropy", "--select", "tcc",
                     "--json", "--trace")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [c["model"] for c in out["candidates"]] == ["bert", "modernbert"]
    assert len(out["relays"]) == 5 and all(len(r["scores"]) == 2 for r in out["relays"])
    assert all(set(r["top1"]) == {"bert", "modernbert"} and all(0 < p <= 1 for p in r["top1"].values())
               for r in out["relays"])
    assert out["model"] == out["candidates"][out["chosen"]]["model"]
    assert out["model_calls"] == 2 * 48 + 5 * 4  # decode steps + 2x2 cross-model forwards per relay
    trace = result.stderr.strip().splitlines()
    assert len(trace) == 6 and trace[0].startswith("relay at step 8: bert=")
    assert trace[-1].startswith("leader change rate: ")


def test_cli_takes_lengths_from_the_manifest(tiny_bert, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert[1], folder)
    manifest = json.loads((folder / "tie_lite.json").read_text())
    manifest["decode_defaults"] = {"gen_length": 32, "answer_length": 16, "block_size": 8}
    (folder / "tie_lite.json").write_text(json.dumps(manifest))
    out = json.loads(run_cli("--model", str(folder), "--prompt", "the cat", "--json", "--history").stdout)
    assert out["steps"] == 32 and out["answer"] is not None
    assert max(e["block"] for e in out["history"]) == 3  # block size 8
    manifest["decode_defaults"] = {"gen_length": 30}
    (folder / "tie_lite.json").write_text(json.dumps(manifest))
    _assert_one_line_error(run_cli("--model", str(folder), "--prompt", "the cat"), "decode_defaults")


def test_cli_one_provider_per_model(tiny_bert, tiny_modernbert):
    base = ["--models", str(tiny_bert[1]), str(tiny_modernbert[1]), "--prompt", "the", "--answer-length", "16"]
    assert run_cli(*base, "--provider", "cpu,cpu").returncode == 0
    _assert_one_line_error(run_cli(*base, "--provider", "cpu,cpu,cpu"), "3 providers for 2 models")


@pytest.mark.cuda_absent
def test_cli_names_a_provider_it_does_not_have(tiny_bert, tiny_modernbert):
    base = ["--models", str(tiny_bert[1]), str(tiny_modernbert[1]), "--prompt", "the", "--answer-length", "16"]
    _assert_one_line_error(run_cli(*base, "--provider", "cpu,cuda:1"), "provider 'cuda:1' is not available")


def test_cli_given_answer_and_early_exit(tiny_bert):
    base = ["--model", str(tiny_bert[1]), "--prompt", "what is two plus three ?", "--gen-length", "48",
            "--answer-length", "16", "--json"]
    out = json.loads(run_cli(*base, "--answer", "five").stdout)
    assert out["answer"] == "five" and len(out["answer_confidence"]) == out["steps"] == 32
    early = json.loads(run_cli(*base, "--exit-threshold", "0.2").stdout)
    assert early["steps"] < 48 and early["answer"] is not None
