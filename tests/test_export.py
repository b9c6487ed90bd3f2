"""export/: the manifest it writes, its validation against PyTorch, its CLI.

Most tests need the export extras (marked torch); those that export a model or run python -m export are
slow. What export_model and the CLI's parser check before loading a model, and the shipped manifests,
need neither."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, assert_one_line_error, run_cli, run_export
from tolerances import float32_reach, model_dims, near_ties


@pytest.mark.torch
def test_manifest_contents(tiny_modernbert):
    hf_dir, onnx_dir = tiny_modernbert
    manifest = json.loads((onnx_dir / "tie_lite.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["family"] == "modernbert"
    assert manifest["graph_vocab_size"] == manifest["vocab_size"] + 3
    assert manifest["logits_shift"] == 0 and manifest["max_length"] == 128
    assert manifest["mask_id"] == 2 and manifest["eos_id"] == 3 and manifest["stop_ids"] == [3]
    assert manifest["prompt_format"] == "{prompt}" and manifest["answer_marker"] == "Answer:"
    sha = hashlib.sha256((onnx_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert manifest["tokenizer_sha256"] == sha
    report = manifest["validation"]
    assert report["positions"] > 0 and report["top1_agree"] + report["near_ties"] == report["positions"]
    assert report["max_prob_diff"] <= report["prob_atol"]  # the export's own bar, recorded beside its numbers
    # and what the export measured (ONNX vs PyTorch on its sample canvases) lies within float32's reach
    # for this model's own logits (tests/tolerances.py), which needs no fixed atol to state
    assert_validation_within_float32(report, onnx_dir)


def assert_validation_within_float32(report: dict, onnx_dir) -> None:
    """A validation report (ONNX vs PyTorch over export's sample canvases, every position) against the
    float32 reach of the model's logits there: top-1 ids differ only at near-ties (counted on the ONNX side
    within twice the log-ratio, since PyTorch's own log-ratio is at most one reach away), probabilities
    by <= expm1(2 delta) (p <= 1), entropies by <= 4 delta H_max (+ the tails' rounding)."""
    import numpy as np

    import tie_lite
    from export.validate import sample_canvases

    model = tie_lite.Model.load(onnx_dir)
    m = model.manifest
    ties, prob_bar, entropy_bar = 0, 0.0, 0.0
    for tokens in sample_canvases(m.vocab_size, m.mask_id, m.max_length):  # the canvases export compared
        stats = model.stats(tokens, np.arange(tokens.size), with_logits=True)
        reach = float32_reach([stats.logits], *model_dims(onnx_dir, tokens.size))
        ties += int(near_ties(stats.top_probs, 2 * reach.log_prob).sum())
        prob_bar = max(prob_bar, reach.prob_rel)
        entropy_bar = max(entropy_bar, float(reach.entropy(stats.entropy.max())))
    assert report["positions"] - report["top1_agree"] <= ties
    assert report["max_prob_diff"] <= prob_bar, (report["max_prob_diff"], prob_bar)
    assert report["max_entropy_diff"] <= entropy_bar, (report["max_entropy_diff"], entropy_bar)


@pytest.mark.torch
def test_manifest_records_the_source_relative_to_the_output_or_as_given(tiny_modernbert, tmp_path, monkeypatch):
    """A local folder is recorded relative to the output folder, a Hub id as given: never a machine path."""
    from export import recorded_source

    hf_dir, onnx_dir = tiny_modernbert  # BASE/hf exported to BASE/onnx
    assert json.loads((onnx_dir / "tie_lite.json").read_text())["source"] == "../hf"
    out = tmp_path / "deep" / "er" / "onnx"
    assert recorded_source(hf_dir, out) == Path(os.path.relpath(hf_dir, out)).as_posix()
    assert not Path(recorded_source(hf_dir, out)).is_absolute()
    monkeypatch.chdir(hf_dir.parent)  # a relative source and output, as typed on the command line
    assert recorded_source("hf", "onnx") == "../hf" and recorded_source(Path("hf"), Path("x/onnx")) == "../../hf"
    assert recorded_source("answerdotai/ModernBERT-base", out) == "answerdotai/ModernBERT-base"
    assert recorded_source("bert-base-uncased", out) == "bert-base-uncased"


def test_shipped_manifests_record_no_machine_path():
    from conftest import ROOT

    for manifest_path in sorted((ROOT / "models").glob("*/onnx/tie_lite.json")):
        manifest = json.loads(manifest_path.read_text())
        assert manifest["source"] == "../hf", manifest_path
        assert not any(isinstance(v, str) and Path(v).is_absolute() for v in manifest.values()), manifest_path


@pytest.mark.torch
def test_validation_catches_a_graph_that_disagrees(tiny_bert, tiny_char):
    import torch
    from transformers import AutoModelForMaskedLM

    from export.families import family_for
    from export.graph import suppressed_columns
    from export.validate import ExportValidationError, validate

    other = AutoModelForMaskedLM.from_pretrained(tiny_bert[0]).eval()
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.5 * torch.randn_like(param))
    manifest = json.loads((tiny_bert[1] / "tie_lite.json").read_text())
    is_suppressed = suppressed_columns(manifest["graph_vocab_size"], manifest["vocab_size"], [manifest["mask_id"]])
    with pytest.raises(ExportValidationError, match="differ"):
        validate(tiny_bert[1] / "model.onnx", other, family_for("bert"), is_suppressed, manifest["top_k"],
                 manifest["vocab_size"], manifest["mask_id"], manifest["max_length"])


@pytest.mark.torch
def test_chat_template_renders_into_prompt_format(tiny_bert):
    from transformers import AutoTokenizer

    from export import chat_prompt_format

    tok = AutoTokenizer.from_pretrained(tiny_bert[0])
    assert chat_prompt_format(tok) == "{prompt}"
    tok.chat_template = "{% for m in messages %}[Question]\n{{ m['content'] }}\n[/Question]\n{% endfor %}[Answer]\n"
    assert chat_prompt_format(tok) == "[Question]\n{prompt}\n[/Question]\n[Answer]"


@pytest.mark.torch
def test_chat_template_renders_with_thinking_disabled(tiny_bert):
    """Qwen3-style templates (A2D-Qwen3) add an empty think block when enable_thinking is False."""
    from transformers import AutoTokenizer

    from export import chat_prompt_format

    tok = AutoTokenizer.from_pretrained(tiny_bert[0])
    tok.chat_template = ("{% for m in messages %}<|im_start|>user\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
                         "<think>\n\n</think>\n\n{% endif %}")
    assert chat_prompt_format(tok) == ("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
                                       "<think>\n\n</think>\n\n")


@pytest.mark.slow
@pytest.mark.torch
def test_export_cli_writes_a_loadable_folder(tiny_char, tmp_path):
    result = run_cli(str(tiny_char[0]), str(tmp_path / "out"), "--name", "char", "--answer-marker", " = ",
                     module="export", timeout=300)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "tie_lite.json").read_text())
    assert manifest["name"] == "char" and manifest["answer_marker"] == " = "
    assert manifest["source"] == Path(os.path.relpath(tiny_char[0], tmp_path / "out")).as_posix()
    run = run_cli("--model", str(tmp_path / "out"), "--prompt", "2+2", "--json")
    assert run.returncode == 0, run.stderr


@pytest.mark.torch
def test_export_cli_refuses_unsupported_family(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    result = run_export(capsys, str(tmp_path / "gpt2"), str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.torch
def test_export_cli_missing_source(tmp_path, capsys):
    result = run_export(capsys, str(tmp_path / "missing"), str(tmp_path / "out"))
    assert result.returncode == 2
    assert "error: " in result.stderr


EXPORT_BAD_INPUTS = [  # (what, extra arguments after SOURCE OUT, the error line's text); SOURCE is shipped a's hf
    ("unknown option", ["--top-kk", "3"], "unrecognized arguments: --top-kk"),
    ("abbreviated option", ["--int4-b", "64"], "unrecognized arguments: --int4-b"),
    ("option given twice", ["--top-k", "3", "--top-k", "5"], "--top-k is given twice"),
    ("top-k not an integer", ["--top-k", "1.5"], "argument --top-k: invalid int value: '1.5'"),
    ("int4 option without --int4", ["--int4-block-size", "64"], "--int4-block-size applies with --int4"),
    ("int8 option without --int8", ["--int8-all-layers"], "--int8-all-layers applies with --int8"),
    ("opset torch cannot write", ["--opset", "99"], "opset must be an integer in [14, 20]"),
    ("opset too old for these graphs", ["--opset", "9"], "opset must be an integer in [14, 20]"),
    ("negative external data size", ["--external-data-min-bytes", "-1"], "external_data_min_bytes must be"),
    ("empty stop text", ["--stop-text", ""], "stop_texts must be non-empty texts"),
    ("prompt format without its slot", ["--prompt-format", "no slot"], "prompt_format must contain {prompt}"),
    ("top-k over the vocabulary", ["--top-k", "100000"], "top_k 100000 exceeds the model's vocabulary"),
    ("gen length past the model", ["--gen-length", "1000000"], "gen_length 1000000 leaves no room"),
    ("family of another layout", ["--family", "dream"], "family 'dream' does not export model_type 'modernbert'"),
]


@pytest.mark.torch
@pytest.mark.parametrize("what,extra,message", EXPORT_BAD_INPUTS, ids=[row[0] for row in EXPORT_BAD_INPUTS])
def test_export_bad_input_gets_one_clear_error_line(what, extra, message, tmp_path, capsys):
    """python -m export: one error line and exit status 2, and nothing written, for each bad input."""
    result = run_export(capsys, str(ROOT / "models" / "a" / "hf"), str(tmp_path / "out"), *extra)
    assert_error_after_progress(result, message)
    assert not (tmp_path / "out").exists()


def assert_error_after_progress(result, message) -> None:
    """Exit status 2, no traceback, one error line, the last, naming the problem (export's progress lines,
    e.g. "loading SOURCE", may come before it)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr
    assert message in lines[-1], lines[-1]


@pytest.mark.torch
def test_export_refuses_bad_folders_in_one_line(tmp_path, capsys):
    """A source path that is missing, a file or holds no config.json, an output folder that is a file or the
    source itself: one error line, exit status 2."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    source = str(ROOT / "models" / "a" / "hf")
    for args, message in [([str(tmp_path / "missing"), str(tmp_path / "out")], "no such folder"),
                          ([str(tmp_path / "file"), str(tmp_path / "out")], "not a folder"),
                          ([str(tmp_path / "empty"), str(tmp_path / "out")], "holds no config.json"),
                          ([source, str(tmp_path / "file")], f"the output folder {tmp_path / 'file'} is a file"),
                          ([source, source], "is the source folder"),
                          (["no/such/folder", str(tmp_path / "out")], "no such folder")]:  # not read as a Hub id
        assert_error_after_progress(run_export(capsys, *args), message)


@pytest.mark.parametrize("options,named", [
    (dict(decode_defaults={"gen_length": None}), "decode_defaults' lengths must be integers"),
    (dict(stop_texts=None), "stop_texts must be a list of texts, got None"),
    (dict(int8="yes"), "int8 must be True or False, got 'yes'"),
    (dict(name=5), "name must be a text or None, got 5"),
    (dict(opset=13), "opset must be an integer in [14, 20]"),
])
def test_export_options_refuse_values_of_the_wrong_type(options, named):
    from export import ExportError, ExportOptions

    with pytest.raises(ExportError, match=re.escape(named)):
        ExportOptions(**options)
    assert ExportOptions(decode_defaults={"gen_length": np.int64(64)}).decode_defaults == {"gen_length": 64}


def test_export_cli_takes_repeatable_options_again():
    """--stop-text is repeatable (action append): given twice it is two stop texts, not an error."""
    from export.__main__ import parse_args
    from export.options import options_from_args

    args = parse_args(["SOURCE", "OUT", "--stop-text", "[/A]", "--stop-text", "[/B]"])
    assert options_from_args(args).stop_texts == ("[/A]", "[/B]")


def test_export_interrupted_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C during an export: one line saying it did not finish, exit status 130."""
    import export.__main__ as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "export_model", interrupted)
    assert cli.main(["SOURCE", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: interrupted: the export into {tmp_path / 'out'} did not finish"]


def test_export_shapes_command_refuses_a_graph_that_is_not_onnx(tmp_path, capsys):
    from export.shapes import main

    for content in (b"\x00 not a graph \xff" * 10, b""):
        (tmp_path / "model.onnx").write_bytes(content)
        assert main([str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'model.onnx'}: cannot rewrite it: "), err


@pytest.mark.torch
def test_roberta_max_length_excludes_its_position_offset(tiny_roberta):
    manifest = json.loads((tiny_roberta[1] / "tie_lite.json").read_text())
    assert manifest["family"] == "roberta" and manifest["max_length"] == 128


@pytest.mark.torch
def test_export_refuses_custom_code_without_trust_and_says_what_it_would_run(tmp_path, capsys):
    source = tmp_path / "custom"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "Dream", "auto_map": {
        "AutoConfig": "configuration_mything.MyConfig", "AutoModel": "modeling_mything.MyModel"}}))
    (source / "configuration_mything.py").write_text("raise SystemExit('must not run')\n")
    result = run_export(capsys, str(source), str(tmp_path / "out"))
    assert result.returncode == 2
    assert "contains custom Python code; pass --trust-remote-code" in result.stderr

    from export import remote_code_notice

    assert remote_code_notice(source) == f"--trust-remote-code: running configuration_mything.py from {source}"


@pytest.mark.slow
@pytest.mark.torch
def test_int8_export_records_its_agreement_and_decodes(tiny_bert, tmp_path):
    import tie_lite
    from export import export_model
    from export.validate import ExportValidationError, ValidationReport, check_agreement

    path = export_model(tiny_bert[0], tmp_path / "int8", int8=True, log=lambda m: None)
    manifest = json.loads(path.read_text())
    report = manifest["int8_validation"]
    assert manifest["quantization"] == "int8-dynamic"
    assert report["top1_agree"] / report["positions"] >= 0.9
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < (tiny_bert[1] / "model.onnx").stat().st_size
    result = tie_lite.generate(tie_lite.Model.load(tmp_path / "int8"), "the cat", tie_lite.DecodeConfig(gen_length=16))
    assert result.steps == 16
    with pytest.raises(ExportValidationError, match="50.0% of positions"):
        check_agreement(ValidationReport(1, 10, 5, 0, 0.1, 0.1), 0.9)


@pytest.mark.slow
@pytest.mark.torch
def test_int4_export_quantizes_every_weight_matmul_records_its_agreement_and_decodes(tiny_bert, tmp_path):
    """--int4 on both graphs: each weight matmul becomes MatMulNBits (the tied LM head's too), the token
    embedding table GatherBlockQuantized; the manifest records the agreement with PyTorch, whose floor
    export enforces; the runtime decodes the graphs, with and without the cache."""
    import onnx

    import tie_lite
    from export import DEFAULT_INT4_ACCURACY_LEVEL, DEFAULT_INT4_BLOCK_SIZE, export_model
    from export.validate import ExportValidationError

    # a tiny random model's distributions are flat, so 4 bits flip more of its top-1 ids (here about a
    # quarter) than of a trained model's (bench/README.md): the floor is lowered for it
    path = export_model(tiny_bert[0], tmp_path / "int4", int4=True, kv_cache=True, int4_min_agreement=0.5,
                        log=lambda m: None)
    manifest = json.loads(path.read_text())
    assert manifest["quantization"] == "int4-matmulnbits"
    assert (manifest["int4_block_size"], manifest["int4_accuracy_level"]) == (DEFAULT_INT4_BLOCK_SIZE,
                                                                              DEFAULT_INT4_ACCURACY_LEVEL)
    for key in ("int4_validation", "cache_int4_validation"):
        assert manifest[key]["positions"] > 0 and manifest[key]["top1_agree"] / manifest[key]["positions"] >= 0.5
    for graph in ("model.onnx", "cache.onnx"):
        g = onnx.load(str(tmp_path / "int4" / graph)).graph
        weights = {t.name for t in g.initializer}
        ops = [n.op_type for n in g.node]
        # 6 per layer (query, key, value, attention output, intermediate, output), the head's dense layer, its
        # decoder (tied to the embedding: a Transpose of the table before)
        assert ops.count("MatMulNBits") == 2 * 6 + 2 and ops.count("GatherBlockQuantized") == 1, graph
        assert not [n.name for n in g.node if n.op_type == "MatMul" and n.input[1] in weights], graph
        assert (tmp_path / "int4" / graph).stat().st_size < (tiny_bert[1] / "model.onnx").stat().st_size  # float32
    for kv_cache in (None, "prefix"):
        model = tie_lite.Model.load(tmp_path / "int4", kv_cache=kv_cache)
        assert tie_lite.generate(model, "the cat", tie_lite.DecodeConfig(gen_length=16, block_size=4)).steps == 16
    with pytest.raises(ExportValidationError, match=r"the int4 graph's top-1 ids agree with PyTorch at .* below"):
        export_model(tiny_bert[0], tmp_path / "strict", int4=True, int4_min_agreement=1.0, log=lambda m: None)


def test_int4_refuses_int8_and_what_matmulnbits_cannot_take(tmp_path, capsys):
    """Before loading anything: --int4 with --int8, a block size that is no power of two >= 16, an accuracy
    level MatMulNBits does not define."""
    from export import ExportError, ExportOptions

    with pytest.raises(ExportError, match="int4 and int8 exclude each other"):
        ExportOptions(int4=True, int8=True)
    for size in (8, 24, 0, -32, 32.0):
        with pytest.raises(ExportError, match=rf"int4_block_size must be a power of two >= 16 .*got {size}$"):
            ExportOptions(int4=True, int4_block_size=size)
    with pytest.raises(ExportError, match="int4_accuracy_level must be one of"):
        ExportOptions(int4_accuracy_level=5)
    for size in (16, 32, 64, 128, 256):
        assert ExportOptions(int4=True, int4_block_size=size).int4_block_size == size
    source = str(ROOT / "models" / "a" / "hf")
    assert_one_line_error(run_cli(source, str(tmp_path / "out"), "--int4", "--int8", module="export"),
                          "int4 and int8 exclude each other (--int4, --int8)")  # the command itself, once
    assert_one_line_error(run_export(capsys, source, str(tmp_path / "out"), "--int4", "--int4-block-size", "24"),
                          "int4_block_size must be a power of two >= 16")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.torch
def test_graphs_stored_as_external_data_export_quantize_and_load(tmp_path, monkeypatch):
    """What a model over 2 GB gets (forced here on a tiny one through optimum's switch)."""
    import shutil

    import tie_lite
    from export import export_model, quantize_int8
    from export.merge import split_graph_file
    from tiny import save_tiny

    monkeypatch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")
    source = save_tiny(tmp_path / "hf", "bert", seed=5)
    # int4 converts the graph to opset 21 without its weights, then reads them from the data file
    for quantization in ({}, {"int8": True}, {"int4": True, "int4_min_agreement": 0}):
        out = tmp_path / f"onnx-{'-'.join(quantization)}"
        export_model(source, out, log=lambda m: None, **quantization)
        files = sorted(p.name for p in out.iterdir())
        assert any(name != "model.onnx" and name.startswith("model.onnx") for name in files), files
        result = tie_lite.generate(tie_lite.Model.load(out), "the cat", tie_lite.DecodeConfig(gen_length=16))
        assert result.steps == 16
    # the float32 export's merged matmuls, split apart with the weights in the data file, then quantized
    copy = shutil.copytree(tmp_path / "onnx-", tmp_path / "split")
    assert split_graph_file(copy / "model.onnx") == 2 * 2  # 2 layers, query/key/value: 2 more MatMuls each
    quantize_int8(copy / "model.onnx")
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith("model.onnx")) == ["model.onnx",
                                                                                        "model.onnx.data"]
    result = tie_lite.generate(tie_lite.Model.load(copy), "the cat", tie_lite.DecodeConfig(gen_length=16))
    assert result.steps == 16


@pytest.mark.slow
@pytest.mark.torch
def test_modernbert_chat_conventions(tiny_modernbert, tmp_path):
    """ModernBERT-chat: the chat format rendered at export, "[/Answer]" ending the output."""
    from transformers import AutoTokenizer

    import tie_lite
    from export import export_model

    tok = AutoTokenizer.from_pretrained(tiny_modernbert[0])
    tok.chat_template = ("{% for m in messages %}[Question]\n{{ m['content'] }}\n[/Question]\n\n{% endfor %}"
                         "{% if add_generation_prompt %}[Answer]\n{% endif %}")
    source = tmp_path / "chat"
    import shutil
    shutil.copytree(tiny_modernbert[0], source)
    tok.save_pretrained(source)
    path = export_model(source, tmp_path / "onnx", stop_texts=["[/Answer]"], log=lambda m: None)
    manifest = tie_lite.Manifest.from_dict(json.loads(path.read_text()))
    assert manifest.prompt_format == "[Question]\n{prompt}\n[/Question]\n\n[Answer]\n"
    assert manifest.stop_texts == ("[/Answer]",)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("int8", [False, True])
def test_big_graphs_keep_their_weights_in_a_data_file(tiny_bert, tmp_path, int8):
    """Graphs over export's size bar (forced to 0 here) are stored as model.onnx + model.onnx.data,
    which onnxruntime maps; the decode is the same as the single-file export's."""
    import tie_lite
    from export import export_model

    out = tmp_path / "external"
    export_model(tiny_bert[0], out, int8=int8, external_data_min_bytes=0, log=lambda m: None)
    single = tmp_path / "single"
    export_model(tiny_bert[0], single, int8=int8, log=lambda m: None)
    assert not (single / "model.onnx.data").exists()
    moved = (single / "model.onnx").stat().st_size - (out / "model.onnx").stat().st_size
    assert moved > 0 and (out / "model.onnx.data").stat().st_size >= moved - 4096  # the weights moved out
    mode = lambda path: path.stat().st_mode & 0o777  # noqa: E731
    assert mode(out / "model.onnx.data") == mode(out / "model.onnx")  # not left owner-only
    config = tie_lite.DecodeConfig(gen_length=16, block_size=4)
    a, b = (tie_lite.generate(tie_lite.Model.load(d), "the cat", config) for d in (out, single))
    assert a.tokens.tolist() == b.tokens.tolist()
    export_model(tiny_bert[0], out, int8=int8, log=lambda m: None)  # re-export, below the bar
    assert not (out / "model.onnx.data").exists()


@pytest.mark.slow
@pytest.mark.torch
def test_int8_keeps_the_first_layer_in_float32(tmp_path):
    """--int8 leaves exactly the first layer's weight matmuls unquantized, in both graphs."""
    import onnx
    from transformers import AutoModelForMaskedLM

    from export import export_model, first_layer_matmuls, quantize_int8
    from tiny import save_tiny

    source = save_tiny(tmp_path / "hf", "bert", seed=11, layers=3)
    fp32 = tmp_path / "fp32"
    # unmerged, as quantize_int8 hands graphs to it (a merged query/key/value weight equals no one Linear's)
    export_model(source, fp32, kv_cache=True, merge_matmuls=False, log=lambda m: None)
    model = AutoModelForMaskedLM.from_pretrained(source)
    for graph in ("model.onnx", "cache.onnx"):  # the first layer's six are the graph's first weight matmuls
        g = onnx.load(str(fp32 / graph)).graph
        weights = {t.name for t in g.initializer}
        in_order = [n.name for n in g.node if n.op_type == "MatMul" and n.input[1] in weights]
        assert sorted(first_layer_matmuls(fp32 / graph, model)) == sorted(in_order[:6]), graph
    for all_layers in (False, True):
        out = tmp_path / f"int8-{all_layers}"
        export_model(source, out, kv_cache=True, int8=True, int8_first_layer_fp32=not all_layers,
                     log=lambda m: None)
        for graph in ("model.onnx", "cache.onnx"):
            g = onnx.load(str(out / graph)).graph
            weights = {t.name for t in g.initializer}
            weight_matmuls = [n for n in g.node if n.op_type == "MatMul" and n.input[1] in weights]
            assert len(weight_matmuls) == (0 if all_layers else 6), (graph, [n.name for n in weight_matmuls])
    # a float32 export's merged graph, quantized as bench scripts quantize copies: split apart first, the same
    merged = tmp_path / "merged"
    export_model(source, merged, log=lambda m: None)
    assert [n for n in onnx.load(str(merged / "model.onnx")).graph.node if n.op_type == "Split"]
    assert len(quantize_int8(merged / "model.onnx", first_layer_of=model)) == 6
    g = onnx.load(str(merged / "model.onnx")).graph
    weights = {t.name for t in g.initializer}
    assert len([n for n in g.node if n.op_type == "MatMul" and n.input[1] in weights]) == 6
    assert len([n for n in g.node if n.op_type == "MatMulInteger"]) == 2 * 6 + 2  # layers 2-3 and the head


def test_export_model_rejects_an_unknown_option_by_name(tmp_path):
    """Before loading anything: a misspelt keyword is a TypeError naming it, a bad value an ExportError."""
    from export import ExportError, ExportOptions, export_model

    with pytest.raises(TypeError, match=r"unknown option\(s\) 'int8_all_layer'"):
        export_model(tmp_path / "missing", tmp_path / "out", int8_all_layer=True, log=lambda m: None)
    with pytest.raises(TypeError, match="'topk'"):
        export_model(tmp_path / "missing", tmp_path / "out", ExportOptions(int8=True), topk=3)
    with pytest.raises(ExportError, match="'gen_len'"):
        export_model(tmp_path / "missing", tmp_path / "out", decode_defaults={"gen_len": 8})
    with pytest.raises(ExportError, match="top_k must be an integer >= 2, got 1"):
        ExportOptions(top_k=1)
    assert not (tmp_path / "out").exists()


# a value other than the default for every ExportOptions field: a new field needs one here, and a flag
NON_DEFAULT_OPTIONS = {
    "top_k": 7, "prompt_format": "Q: {prompt}\n", "answer_marker": " = ", "name": "n", "opset": 18,
    "decode_defaults": {"gen_length": 8, "answer_length": 4, "block_size": 4}, "stop_texts": ("[/A]", "END"),
    "family": "dream", "int8": True, "int8_first_layer_fp32": False, "int8_min_agreement": 0.5,
    "int4_block_size": 64, "int4_accuracy_level": 0, "int4_min_agreement": 0.5,
    "external_data_min_bytes": 0, "merge_matmuls": False, "kv_cache": True, "trust_remote_code": True,
}
EXCLUSIVE_OPTIONS = {"int4": True}  # excludes int8, so checked in place of it


def test_every_export_option_is_a_cli_flag_and_every_flag_an_option():
    import argparse
    import dataclasses

    import tie_lite
    from export import ExportOptions
    from export.__main__ import build_parser
    from export.options import options_from_args

    fields = [f.name for f in dataclasses.fields(ExportOptions)]
    assert sorted({**NON_DEFAULT_OPTIONS, **EXCLUSIVE_OPTIONS}) == sorted(fields)
    parser = build_parser()
    flags = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    by_flag = dict(NON_DEFAULT_OPTIONS, **NON_DEFAULT_OPTIONS["decode_defaults"])
    del by_flag["decode_defaults"]
    assert sorted(flags) == sorted({**by_flag, **EXCLUSIVE_OPTIONS})  # decode_defaults: one flag per DECODE_OPTIONS
    assert [flags[name].option_strings[0] for name in tie_lite.DECODE_OPTIONS] == [
        "--gen-length", "--answer-length", "--block-size"]
    argv = ["src", "out"]
    for dest, given in by_flag.items():
        action = flags[dest]
        for value in given if isinstance(given, tuple) else (given,):
            takes_value = not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            argv += [action.option_strings[0], *([str(value)] if takes_value else [])]
    assert options_from_args(parser.parse_args(argv)) == ExportOptions(**NON_DEFAULT_OPTIONS)
    exclusive = [a for name in EXCLUSIVE_OPTIONS for a in flags[name].option_strings[:1]]
    argv = [a for a in argv if a != flags["int8"].option_strings[0]] + exclusive
    assert options_from_args(parser.parse_args(argv)) == ExportOptions(**{**NON_DEFAULT_OPTIONS, "int8": False,
                                                                          **EXCLUSIVE_OPTIONS})
    assert options_from_args(parser.parse_args(["src", "out"])) == ExportOptions()  # the CLI's defaults are its
    assert options_from_args(parser.parse_args(["src", "out", "--block-size", "4"])).decode_defaults == {
        "block_size": 4}


@pytest.mark.torch
def test_export_takes_graph_names_from_tie_lite():
    """export writes the names the runtime checks: its Statistics are tie_lite.GRAPH_OUTPUTS, in order."""
    import tie_lite
    from export.graph import Statistics, StatsOnnxConfig

    assert Statistics._fields == tie_lite.GRAPH_OUTPUTS == tie_lite.CACHE_OUTPUTS
    config = StatsOnnxConfig.__new__(StatsOnnxConfig)  # its inputs / outputs need no model config
    assert tuple(config.inputs) == tie_lite.GRAPH_INPUTS and tuple(config.outputs) == tie_lite.GRAPH_OUTPUTS


def test_export_without_its_extras_says_what_to_install(tmp_path):
    """In a runtime-only venv the export's imports fail: one error line naming the extras, exit 2."""
    script = ("import sys; sys.modules['transformers'] = sys.modules['torch'] = None; "
              "from export.__main__ import main; "
              f"sys.exit(main([{str(ROOT / 'models' / 'a' / 'hf')!r}, {str(tmp_path / 'out')!r}]))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after export's progress lines
    assert last.startswith("error: python -m export needs the export extras") and 'pip install ".[export]"' in last


LAST_LAYER_CASES = {  # the last layer attending through a sliding window, or by relative distances
    "modernbert-local": ("modernbert", dict(layers=3, global_attn_every_n_layers=3, local_attention=16)),
    "bert-relative": ("bert", dict(layers=2, position_embedding_type="relative_key")),
}


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("case", LAST_LAYER_CASES)
def test_the_last_layer_runs_at_the_gathered_positions_only(tmp_path, case):
    """model.onnx runs its last layer's attention and MLP at the gathered positions only (its MLP output has
    K + 1 rows, not L: one spare, export/cache.py's with_spare_row), and its statistics there, asked in any
    order, equal those of PyTorch's full forward at those positions as far as float32 reaches
    (tests/tolerances.py)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    import tie_lite
    from export import export_model
    from export.families import family_for, read_config
    from export.graph import confidence_statistics, suppressed_columns
    from tiny import save_tiny
    from tolerances import assert_statistics_agree

    arch, options = LAST_LAYER_CASES[case]
    hf, out = save_tiny(tmp_path / "hf", arch, seed=5, **options), tmp_path / "onnx"
    export_model(hf, out, log=lambda m: None)
    model = tie_lite.Model.load(out)
    tokens = model.encode("what is two plus three ? " * 6)  # longer than the 16-position window
    positions = np.array([tokens.size - 1, 3, tokens.size - 12, 0, 17])  # (K,), in no order

    family = family_for(read_config(hf)["model_type"])
    torch_model = family.load(str(hf), False).eval()
    with torch.no_grad():
        ids = torch.from_numpy(tokens)[None]  # (1, L)
        logits = family.full_logits(torch_model, ids, torch.ones_like(ids))[:, positions]  # (1, K, Vg)
    m = model.manifest
    is_suppressed = suppressed_columns(m.graph_vocab_size, m.vocab_size, [m.mask_id])
    want = {k: v[0].numpy() for k, v in confidence_statistics(logits, is_suppressed, m.top_k).named().items()}
    assert_statistics_agree(model.stats(tokens, positions, with_logits=True), want, *model_dims(out, tokens.size))

    last = (torch_model.model.layers[-1].mlp.Wo if arch == "modernbert"
            else torch_model.bert.encoder.layer[-1].output.dense).weight.detach().numpy()  # (out, in)
    graph = onnx.load(str(out / "model.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    (node,) = [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in weights
               and np.array_equal(weights[n.input[1]], last.T)]
    graph.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"input_ids": tokens[None], "attention_mask": np.ones((1, tokens.size), np.int64),
            "positions": positions[None]}
    assert session.run([node.output[0]], feed)[0].shape[:2] == (1, positions.size + 1)


def _sibling_graph(opset: int):
    """X (2, 3, 8) times W0 (8, 5), W1 (8, 3), W2 (8, 4) (siblings, W1's product plus a bias), and
    Relu(X) times U (8, 6), then times V (6, 7) (no siblings: other inputs)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"W0": (8, 5), "W1": (8, 3), "W2": (8, 4), "U": (8, 6), "V": (6, 7)}
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in weights.items()]
    inits.append(numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b1"))
    nodes = [helper.make_node("MatMul", ["X", "W0"], ["Y0"], name="q"),
             helper.make_node("MatMul", ["X", "W1"], ["P1"], name="k"),
             helper.make_node("Add", ["P1", "b1"], ["Y1"]),
             helper.make_node("Relu", ["X"], ["R"]),
             helper.make_node("MatMul", ["R", "U"], ["H"], name="lone"),
             helper.make_node("MatMul", ["H", "V"], ["Y3"], name="after"),
             helper.make_node("MatMul", ["X", "W2"], ["Y2"], name="v")]
    outputs = [helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, [2, 3, width])
               for i, width in enumerate((5, 3, 4, 7))]
    graph = helper.make_graph(nodes, "siblings", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3, 8])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("opset", [11, 17])
def test_sibling_matmuls_merge_into_one_with_a_split_and_compute_the_same(opset):
    """merge_sibling_matmuls: the three products of X become one MatMul by (8, 12) and a Split (sizes as an
    input from opset 13, as an attribute before); the lone chain stays; every output equals the unmerged
    graph's within float32 rounding of a dot product of length K = 8, in either order: each side off by
    at most gamma_K = K u / (1 - K u), u = EPS32 / 2, relative to the sum of |x_k w_k| (Higham, Accuracy
    and Stability of Numerical Algorithms, 3.1; products and sums rounded), so the two by 2 gamma_K, plus
    one rounding of the result where a bias is added after it. split_merged_matmuls restores the three matmuls, their
    weights and the outputs exactly."""
    np = pytest.importorskip("numpy")
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import numpy_helper

    from export.merge import merge_sibling_matmuls, split_merged_matmuls

    def run(graph):
        return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})

    model = _sibling_graph(opset)
    merged = _sibling_graph(opset)
    assert merge_sibling_matmuls(merged) == 2
    onnx.checker.check_model(merged, full_check=True)
    ops = [n.op_type for n in merged.graph.node]
    assert ops.count("MatMul") == 3 and ops.count("Split") == 1
    weights = {t.name: numpy_helper.to_array(t) for t in merged.graph.initializer}
    product = next(n for n in merged.graph.node if n.op_type == "MatMul" and n.input[0] == "X")
    assert weights[product.input[1]].shape == (8, 12) and not {"W0", "W1", "W2"} & set(weights)
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    before, after = run(model), run(merged)
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    eps = np.finfo(np.float32).eps
    for out, name in enumerate(("W0", "W1", "W2")):
        gamma = 8 * (eps / 2) / (1 - 8 * (eps / 2))  # K = 8
        bound = 2 * gamma * (np.abs(x) @ np.abs(original[name])) + eps * np.abs(before[out])
        assert before[out].shape == after[out].shape
        assert (np.abs(after[out] - before[out]) <= bound).all(), name
    np.testing.assert_array_equal(after[3], before[3])  # untouched
    assert split_merged_matmuls(merged) == 2
    onnx.checker.check_model(merged, full_check=True)
    restored = {t.name: numpy_helper.to_array(t) for t in merged.graph.initializer}
    assert sorted(n.name for n in merged.graph.node) == sorted(n.name for n in model.graph.node)  # as written
    assert sorted(restored) == sorted(original)
    assert [n.op_type for n in merged.graph.node].count("MatMul") == 5 and "Split" not in [
        n.op_type for n in merged.graph.node]
    assert sorted(map(str, (w.tolist() for w in restored.values()))) == sorted(
        map(str, (w.tolist() for w in original.values())))
    for ours, theirs in zip(run(merged), before):
        np.testing.assert_array_equal(ours, theirs)  # the same graph up to names: the same arithmetic


@pytest.mark.slow
@pytest.mark.torch
def test_float32_exports_merge_sibling_matmuls_unless_told_not_to(tiny_bert, tmp_path):
    """BERT's query, key and value matmuls: one matmul a layer in the default export, three with
    merge_matmuls=False (--no-merge-matmuls); both decode the same greedy tokens."""
    import onnx

    import tie_lite
    from export import export_model
    from export.merge import sibling_groups

    export_model(tiny_bert[0], tmp_path / "apart", merge_matmuls=False, log=lambda m: None)
    graphs = {name: onnx.load(str(folder / "model.onnx")).graph
              for name, folder in (("merged", tiny_bert[1]), ("apart", tmp_path / "apart"))}
    assert sibling_groups(graphs["merged"]) == [] and [n.op_type for n in graphs["merged"].node].count("Split") == 2
    assert [len(group) for group in sibling_groups(graphs["apart"])] == [3, 3]  # 2 layers
    config = tie_lite.DecodeConfig(gen_length=16, block_size=4)
    merged, apart = (tie_lite.generate(tie_lite.Model.load(folder), "the cat", config)
                     for folder in (tiny_bert[1], tmp_path / "apart"))
    assert merged.tokens.tolist() == apart.tokens.tolist()


def test_reshape_targets_copy_known_and_equal_dimensions():
    """export/shapes.py's constant Reshape targets: numbers kept, a dimension equal to the input's at the
    same axis copied (0), one other left to -1; none when two are unknown or one is not inferred."""
    from export.shapes import reshape_target

    assert reshape_target(["B", "L", 896], ["B", "L", 14, 64]) == [0, 0, 14, 64]
    assert reshape_target(["B", 14, "L", 64], ["B", 2, "7*L", 64]) == [0, 2, -1, 64]
    assert reshape_target(["B", 2, "7*L", "L"], ["B", 14, "L", "L"]) == [0, 14, -1, 0]
    assert reshape_target(["B", "L", 14, 64], ["L", "B", 896]) is None  # two dimensions moved
    assert reshape_target(["B", "L"], ["B", None]) is None


def _bias_and_scale_graph(width: int):
    """x (B, L, width) @ w, + bias, * scale: weights an Add and a Mul take, as a decomposed norm's."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.ones(shape, np.float32), name)
               for name, shape in (("w", (width, width)), ("bias", (width,)), ("scale", (width,)))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["product"]), helper.make_node("Add", ["product", "bias"], ["sum"]),
             helper.make_node("Mul", ["scale", "sum"], ["y"])]
    graph = helper.make_graph(nodes, "bias_and_scale", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                              ["B", "L", width])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("graph", ["d", "bias and scale 1024 wide"])
def test_shape_inference_reads_no_weights_and_infers_what_it_would_with_them(graph, monkeypatch):
    """export/shapes.py's inference gets the graph's weights as typed, shaped inputs, no values (an 8B
    model's weights are not held twice), and infers the same shape for every value as it does with their
    values: on shipped d's model.onnx, and where weights of 1024 or more enter an Add and a Mul (whose
    inputs' values the inference reads when they are initializers)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from export import shapes

    graph_model = (onnx.load(str(ROOT / "models" / "d" / "onnx" / "model.onnx")) if graph == "d"
                   else _bias_and_scale_graph(1024))
    weights = {t.name for t in graph_model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
               and len(onnx.numpy_helper.to_array(t).reshape(-1)) >= shapes.WEIGHT_ELEMENTS}
    assert len(weights) >= 3
    seen = []
    preprocess = SymbolicShapeInference._preprocess
    monkeypatch.setattr(SymbolicShapeInference, "_preprocess",
                        lambda self, model: seen.append(model) or preprocess(self, model))
    light = shapes._dimensions(shapes._inferred_graph(graph_model))
    assert not weights & {t.name for t in seen[0].graph.initializer}
    assert weights <= {value.name for value in seen[0].graph.input}
    monkeypatch.setattr(shapes, "_without_weights", lambda model: model)
    full = shapes._dimensions(shapes._inferred_graph(graph_model))
    assert len(full) > 3 and {name: light[name] for name in full} == full


def _raw_export(hf, folder: Path, monkeypatch, **options) -> Path:
    """An export of hf into folder with its shape arithmetic as the exporter wrote it."""
    import export

    with monkeypatch.context() as patched:
        patched.setattr(export, "_static_shapes", lambda path, log: None)
        export.export_model(hf, folder, log=lambda m: None, **options)
    return folder


def _graph_feeds(vocab: int) -> list[dict]:
    """model.onnx inputs: one canvas, and three of length 9 with the last one left-padded by 4."""
    import numpy as np

    rng = np.random.default_rng(0)
    one = dict(input_ids=rng.integers(0, vocab, (1, 12)), attention_mask=np.ones((1, 12), np.int64),
               positions=np.array([[4, 7, 11]]))                                 # (1, 12), (1, 12), (1, 3)
    mask = np.ones((3, 9), np.int64)
    mask[2, :4] = 0                                                              # (3, 9)
    three = dict(input_ids=rng.integers(0, vocab, (3, 9)), attention_mask=mask,
                 positions=np.array([[5, 6], [7, 8], [6, 8]]))                   # (3, 9), (3, 9), (3, 2)
    return [one, three]


def _basic_sessions(monkeypatch) -> None:
    """Every onnxruntime session opened from here on with basic graph optimizations only: no fusion that
    depends on shapes (export/shapes.py's module docstring), so two graphs of the same operators give
    the same bits."""
    import onnxruntime as ort

    opened = ort.InferenceSession

    def basic(path, sess_options=None, *args, **kwargs):
        sess_options = sess_options or ort.SessionOptions()
        sess_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        return opened(path, sess_options, *args, **kwargs)
    monkeypatch.setattr(ort, "InferenceSession", basic)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("family", ["dream", "a2d-qwen3", "llada", "modernbert"])
def test_shape_arithmetic_becomes_constants_that_compute_the_same_values(family, tmp_path, monkeypatch):
    """Export replaces the graphs' Shape -> Gather -> ... -> Reshape chains by constant targets
    (export/shapes.py): fewer nodes; model.onnx's outputs on one canvas and on a padded batch equal the
    exporter's graph's as float32 allows with onnxruntime's full optimizations, bit for bit with its basic
    ones (the same operators on the values); decodes through cache.onnx the same with basic optimizations."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    import tie_lite
    from export import export_model
    from tiny import save_llada_like, save_qwen_family, save_tiny
    from tolerances import assert_statistics_agree, model_dims

    if family == "modernbert":
        hf = save_tiny(tmp_path / "hf", "modernbert", seed=2)
    elif family == "llada":
        hf = save_llada_like(tmp_path / "hf", seed=7, num_attention_heads=4, num_key_value_heads=2)
    else:
        hf = save_qwen_family(tmp_path / "hf", family, seed=7, num_attention_heads=4, num_key_value_heads=2)
    options = dict(kv_cache=True, family=family if family in ("dream", "llada") else None)
    raw = _raw_export(hf, tmp_path / "raw", monkeypatch, **options)
    export_model(hf, tmp_path / "static", log=lambda m: None, **options)
    static = tmp_path / "static"
    for graph in ("model.onnx", "cache.onnx"):
        ops = {name: [n.op_type for n in onnx.load(str(name / graph)).graph.node] for name in (raw, static)}
        assert len(ops[static]) < len(ops[raw]) and ops[static].count("Shape") < ops[raw].count("Shape")
    feeds = _graph_feeds(tie_lite.Model.load(raw).manifest.vocab_size)
    names = ["top_ids", "top_probs", "entropy", "logits"]
    full = [ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
            for folder in (raw, static)]
    for feed in feeds:
        ours, theirs = (dict(zip(names, session.run(names, feed))) for session in full)
        for row in range(feed["input_ids"].shape[0]):
            assert_statistics_agree({k: v[row] for k, v in ours.items()}, {k: v[row] for k, v in theirs.items()},
                                    *model_dims(hf, feed["input_ids"].shape[1]), what=f"{family} row {row}")
    _basic_sessions(monkeypatch)
    basic = [ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
             for folder in (raw, static)]
    for feed in feeds:
        for ours, theirs in zip(*(session.run(names, feed) for session in basic)):
            assert np.array_equal(ours, theirs)
    config = tie_lite.DecodeConfig(gen_length=16, block_size=4)
    prompts = ["the cat", "what is two plus three ?"]
    for mode in tie_lite.KV_CACHE_MODES:
        decodes = [tie_lite.generate(tie_lite.Model.load(folder, kv_cache=mode), prompts, config)
                   for folder in (raw, static)]
        for ours, theirs in zip(*decodes):
            assert ours.tokens.tolist() == theirs.tokens.tolist() and ours.steps == theirs.steps


@pytest.mark.torch
@pytest.mark.slow
def test_export_leaves_shapes_it_cannot_infer_and_says_so(tiny_bert, tmp_path):
    """BERT slices its position ids to min(maximum length, L) and adds them at L: symbolic shape inference
    stops there, so export keeps the graph's shape arithmetic and logs why (the graph still validates)."""
    import onnx

    from export import export_model

    said = []
    export_model(tiny_bert[0], tmp_path / "onnx", log=said.append)
    assert sum("shape arithmetic left in the graph (" in line for line in said) == 1, said
    assert "Shape" in [n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node]


@pytest.mark.torch
@pytest.mark.slow
def test_export_shapes_command_rewrites_folders_and_refuses_one_without_a_graph(tmp_path, capsys, monkeypatch):
    """python -m export.shapes FOLDER...: an export's graphs from before export made shapes constant are
    rewritten; shipped b's are left as they are (their shapes cannot be inferred: the line says why), and so
    is shipped d's cache graph (its kept axis named as the canvas length: once named apart, the mask's slice
    to P columns could only be assumed P wide), its model.onnx already rewritten (0 nodes); nothing is
    written where it runs; a folder without model.onnx is one error line and exit status 2, before any
    folder is touched."""
    import shutil

    from export.shapes import main
    from tiny import save_qwen_family

    raw = _raw_export(save_qwen_family(tmp_path / "hf", "dream", seed=7), tmp_path / "raw", monkeypatch,
                      family="dream", kv_cache=True)
    for name in ("b", "d"):
        shutil.copytree(ROOT / "models" / name / "onnx", tmp_path / name)
    before = {path: path.read_bytes() for path in (raw / "model.onnx", tmp_path / "b" / "model.onnx",
                                                   tmp_path / "d" / "cache.onnx")}
    (tmp_path / "empty").mkdir()
    assert main([str(raw), str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'empty'} holds no model.onnx"
    assert (raw / "model.onnx").read_bytes() == before[raw / "model.onnx"]
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert main([str(raw), str(tmp_path / "b"), str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6 and all(line.endswith(" nodes removed") for line in out[:2]), out
    assert all("left as it is (" in line for line in out[2:4]), out
    assert out[4].endswith("model.onnx: 0 nodes removed") and "left as it is (" in out[5], out
    assert (raw / "model.onnx").read_bytes() != before[raw / "model.onnx"]
    for path in (tmp_path / "b" / "model.onnx", tmp_path / "d" / "cache.onnx"):
        assert path.read_bytes() == before[path]
    assert list((tmp_path / "work").iterdir()) == []
