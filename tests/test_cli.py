"""The CLI as a user runs it: a subprocess, text or --json out, one clear error line on bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_cli


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


def _broken_copy(src, tmp_path, how):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    if how == "missing onnx":
        (dst / "model.onnx").unlink()
    elif how == "corrupt onnx":
        (dst / "model.onnx").write_bytes(b"this is not an onnx graph")
    elif how == "truncated onnx":
        data = (dst / "model.onnx").read_bytes()
        (dst / "model.onnx").write_bytes(data[: len(data) // 2])
    elif how == "schema version":
        manifest = json.loads((dst / "tie_lite.json").read_text())
        manifest["schema_version"] = 99
        (dst / "tie_lite.json").write_text(json.dumps(manifest))
    elif how == "manifest field missing":
        manifest = json.loads((dst / "tie_lite.json").read_text())
        del manifest["mask_id"]
        (dst / "tie_lite.json").write_text(json.dumps(manifest))
    elif how == "manifest not json":
        (dst / "tie_lite.json").write_text("{")
    elif how == "missing tokenizer":
        (dst / "tokenizer.json").unlink()
    return dst


@pytest.mark.parametrize("how,message", [
    ("missing onnx", "ONNX graph not found"),
    ("corrupt onnx", "cannot load ONNX graph"),
    ("truncated onnx", "cannot load ONNX graph"),
    ("schema version", "schema_version 99"),
    ("manifest field missing", "'mask_id' is missing"),
    ("manifest not json", "cannot read"),
    ("missing tokenizer", "no tokenizer.json"),
])
def test_cli_bad_model_folder(tiny_bert, tmp_path, how, message):
    folder = _broken_copy(tiny_bert[1], tmp_path, how)
    _assert_one_line_error(run_cli("--model", str(folder), "--prompt", "the cat"), message)


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent/model"], "model folder not found"),
    (["--gen-length", "20", "--block-size", "16"], "gen_length 20 is not divisible by block_size 16"),
    (["--steps", "0"], "steps must be positive, got 0"),
    (["--steps", "-3"], "got -3"),
    (["--provider", "tpu"], "provider must be cpu, cuda or cuda:N"),
    (["--provider", "cuda:x"], "cuda:x"),
    (["--gen-length", "128"], "exceeds"),
    (["--threshold", "2"], "threshold must be in"),
    (["--threads", "0"], "threads must be positive"),
])
def test_cli_bad_options(tiny_bert, args, message):
    base = ["--model", str(tiny_bert[1]), "--prompt", "the cat"]
    if args[0] == "--model":
        base = ["--prompt", "the cat"]
    _assert_one_line_error(run_cli(*base, *args), message)


def test_cli_prompt_too_long(tiny_bert):
    prompt = " ".join(["cat"] * 120)
    _assert_one_line_error(run_cli("--model", str(tiny_bert[1]), "--prompt", prompt), "max length 128")


def test_cli_empty_prompt(tiny_bert):
    _assert_one_line_error(run_cli("--model", str(tiny_bert[1]), "--prompt", "  "), "prompt is empty")


def test_cli_cuda_where_unavailable(tiny_bert):
    _assert_one_line_error(run_cli("--model", str(tiny_bert[1]), "--prompt", "the", "--provider", "cuda"),
                           "provider 'cuda' is not available")


def _assert_one_line_error(result, message):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]


def test_cli_ensemble_json_and_trace(tiny_bert, tiny_modernbert):
    result = run_cli("--models", str(tiny_bert[1]), str(tiny_modernbert[1]), "--prompt", "the cat",
                     "--gen-length", "48", "--answer-length", "16", "--interval", "8", "--score", "entropy",
                     "--json", "--trace")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [c["model"] for c in out["candidates"]] == ["bert", "modernbert"]
    assert len(out["relays"]) == 5 and all(len(r["scores"]) == 2 for r in out["relays"])
    assert out["model"] == out["candidates"][out["chosen"]]["model"]
    assert out["model_calls"] == 2 * 48 + 5 * 4  # decode steps + 2x2 cross-model forwards per relay
    trace = result.stderr.strip().splitlines()
    assert len(trace) == 6 and trace[0].startswith("relay at step 8: bert=")
    assert trace[-1].startswith("leader change rate: ")


@pytest.mark.parametrize("args,message", [
    (["--interval", "0"], "interval must be positive"),
    (["--select", "best-model:nobody"], "nobody"),
    (["--score", "loud"], "invalid choice: 'loud'"),
    (["--answer-length", "0"], "set answer_length > 0"),
    (["--source-only"], "source-only"),
])
def test_cli_ensemble_bad_options(tiny_bert, tiny_modernbert, args, message):
    base = ["--models", str(tiny_bert[1]), str(tiny_modernbert[1]), "--prompt", "the cat",
            "--gen-length", "32", "--answer-length", "16"]
    _assert_one_line_error(run_cli(*base, *args), message)


def test_cli_models_needs_two(tiny_bert):
    _assert_one_line_error(run_cli("--models", str(tiny_bert[1]), "--prompt", "the"), "two or more")


def test_cli_model_and_models_conflict(tiny_bert):
    _assert_one_line_error(run_cli("--model", str(tiny_bert[1]), "--models", str(tiny_bert[1]), str(tiny_bert[1]),
                                   "--prompt", "the"), "not allowed with argument")


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
    _assert_one_line_error(run_cli(*base, "--provider", "cpu,cuda:1"), "provider 'cuda:1' is not available")
