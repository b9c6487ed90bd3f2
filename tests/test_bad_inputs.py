"""The bad-input catalogue: every entry gets one `error: ...` line on stderr, exit code 2, no traceback.

Each row: (what is wrong, how the model folder is broken or None, extra CLI arguments, what the
error line must say). The README summarises this table.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_one_line_error, run_cli


def _edit_manifest(**changes):
    def edit(folder):
        path = folder / "tie_lite.json"
        data = json.loads(path.read_text())
        for key, value in changes.items():
            if value is _DELETE:
                del data[key]
            else:
                data[key] = value
        path.write_text(json.dumps(data))
    return edit


_DELETE = object()


def _write(name, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def _truncate(name):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:2000])


def _remove(name):
    return lambda folder: (folder / name).unlink()


def _other_graph(folder):
    """A valid ONNX graph whose inputs and outputs are not the statistics graph's."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])
    y = helper.make_tensor_value_info("logits", TensorProto.INT64, [1, None])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "other", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(folder / "model.onnx"))


def _other_tokenizer(char_folder):
    return lambda folder: shutil.copy(char_folder / "tokenizer.json", folder / "tokenizer.json")


M = ["--answer-length", "16", "--gen-length", "32"]  # ensemble rows: a valid infilling layout

CATALOGUE = [
    # model folders, manifests, graphs, tokenizers
    ("model folder missing", "gone", [], "model folder not found"),
    ("model.onnx missing", _remove("model.onnx"), [], "ONNX graph not found"),
    ("model.onnx not ONNX", _write("model.onnx", b"not an onnx graph"), [], "cannot load ONNX graph"),
    ("model.onnx truncated", _truncate("model.onnx"), [], "cannot load ONNX graph"),
    ("ONNX inputs/outputs not the manifest's", _other_graph, [], "tie-lite needs"),
    ("manifest missing", _remove("tie_lite.json"), [], "has no tie_lite.json"),
    ("manifest not JSON", _write("tie_lite.json", b"{"), [], "cannot read"),
    ("manifest not an object", _write("tie_lite.json", b"[1, 2]"), [], "expected a JSON object"),
    ("manifest schema version unknown", _edit_manifest(schema_version=99), [], "schema_version 99"),
    ("manifest field missing", _edit_manifest(mask_id=_DELETE), [], "'mask_id' is missing"),
    ("manifest field of wrong type", _edit_manifest(max_length="128"), [], "'max_length' must be int"),
    ("mask id out of range", _edit_manifest(mask_id=10_000), [], "mask_id 10000 is outside"),
    ("stop id out of range", _edit_manifest(stop_ids=[-1]), [], "stop_ids[0] -1"),
    ("logit shift not 0/1", _edit_manifest(logits_shift=2), [], "logits_shift must be 0 or 1"),
    ("prompt format without {prompt}", _edit_manifest(prompt_format="Q:"), [], "{prompt}"),
    ("stop texts not strings", _edit_manifest(stop_texts=[3]), [], "stop_texts must be a list"),
    ("decode defaults invalid", _edit_manifest(decode_defaults={"gen_length": 30}), [], "decode_defaults"),
    ("tokenizer.json missing", _remove("tokenizer.json"), [], "no tokenizer.json"),
    ("tokenizer.json not the manifest's", "other tokenizer", [], "does not match the manifest"),
    # prompts
    ("empty prompt", None, ["--prompt", "   "], "prompt is empty"),
    ("prompt over max length", None, ["--prompt", " ".join(["cat"] * 120)], "max length 128"),
    ("prompt not valid UTF-8", None, ["--prompt", "caf\udce9"], "not valid UTF-8"),
    # decoding options
    ("gen length not divisible by block size", None, ["--gen-length", "20"], "gen_length 20 is not divisible"),
    ("gen length not a number", None, ["--gen-length", "lots"], "invalid int value: 'lots'"),
    ("block size zero", None, ["--block-size", "0"], "block_size must be positive"),
    ("steps zero", None, ["--steps", "0"], "steps must be positive, got 0"),
    ("steps negative", None, ["--steps", "-3"], "got -3"),
    ("steps over gen length", None, ["--steps", "128"], "steps 128 exceeds"),
    ("steps with threshold strategy", None, ["--steps", "16", "--strategy", "threshold"], "applies only"),
    ("answer length not a block multiple", None, ["--answer-length", "8"], "answer_length 8"),
    ("threshold out of range", None, ["--threshold", "1.5"], "threshold must be in (0, 1)"),
    ("temperature negative", None, ["--temperature", "-0.5"], "temperature must be"),
    ("temperature not finite", None, ["--temperature", "nan"], "temperature must be"),
    ("tokens per step zero", None, ["--tokens-per-step", "0"], "tokens_per_step must be positive"),
    ("unknown strategy", None, ["--strategy", "psychic"], "invalid choice: 'psychic'"),
    ("history without json", None, ["--history"], "--history needs --json"),
    # runtime
    ("unknown provider", None, ["--provider", "tpu"], "provider must be cpu, cuda or cuda:N"),
    ("bad CUDA device", None, ["--provider", "cuda:x"], "cuda:x"),
    ("CUDA where it is not available", None, ["--provider", "cuda"], "provider 'cuda' is not available"),
    ("threads zero", None, ["--threads", "0"], "threads must be positive"),
    # ensembles
    ("ensemble of one", "one", [], "two or more"),
    ("--model and --models together", "both", [], "not allowed with argument"),
    ("ensemble without answer positions", "pair", ["--answer-length", "0"], "set answer_length > 0"),
    ("interval zero", "pair", [*M, "--interval", "0"], "interval must be positive"),
    ("unknown score", "pair", [*M, "--score", "loud"], "invalid choice: 'loud'"),
    ("unknown selection", "pair", [*M, "--select", "loudest"], "select must be one of"),
    ("best-model names no model", "pair", [*M, "--select", "best-model:nobody"], "nobody"),
    ("source-only with tcc", "pair", [*M, "--source-only"], "source-only"),
    ("first-k zero", "pair", [*M, "--first-k", "0"], "first_k must be positive"),
    ("providers do not match models", "pair", [*M, "--provider", "cpu,cpu,cpu"], "3 providers for 2 models"),
    ("prompt fits one model, not the other", "short pair", ["--answer-length", "16", "--gen-length", "96"],
     "exceeds modernbert's max length 90"),
]


def _argv(setup, extra, tmp_path, tiny_bert, tiny_modernbert, tiny_char):
    prompt = [] if "--prompt" in extra else ["--prompt", "the cat"]
    if setup == "gone":
        return ["--model", str(tmp_path / "gone"), *prompt, *extra]
    if setup == "one":
        return ["--models", str(tiny_bert[1]), *prompt, *extra]
    if setup == "both":
        return ["--model", str(tiny_bert[1]), "--models", str(tiny_bert[1]), str(tiny_bert[1]), *prompt, *extra]
    if setup == "pair":
        return ["--models", str(tiny_bert[1]), str(tiny_modernbert[1]), *prompt, *extra]
    if setup == "short pair":  # the second model accepts only 90 tokens
        shutil.copytree(tiny_modernbert[1], tmp_path / "short")
        _edit_manifest(max_length=90)(tmp_path / "short")
        return ["--models", str(tiny_bert[1]), str(tmp_path / "short"), *prompt, *extra]
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert[1], folder)
    if setup == "other tokenizer":
        setup = _other_tokenizer(tiny_char[1])
    if setup is not None:
        setup(folder)
    return ["--model", str(folder), *prompt, *extra]


@pytest.mark.parametrize("what,setup,extra,message", CATALOGUE, ids=[row[0] for row in CATALOGUE])
def test_bad_input_gets_one_clear_error_line(what, setup, extra, message, tmp_path, tiny_bert, tiny_modernbert,
                                             tiny_char):
    argv = _argv(setup, extra, tmp_path, tiny_bert, tiny_modernbert, tiny_char)
    assert_one_line_error(run_cli(*argv), message)


def test_the_catalogue_is_at_least_25_entries_long():
    assert len(CATALOGUE) >= 25
