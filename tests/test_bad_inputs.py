"""The bad-input catalogue: every entry gets one `error: ...` line on stderr, exit code 2, no traceback,
within seconds; the library raises ConfigError / ModelError for the same inputs.

Each row: (what is wrong, how the model folder is broken or None, extra CLI arguments, what the
error line must say). The README summarises this table. The rows run on the shipped models (models/),
so they need no torch: b (a BERT) is the model a row breaks, a (a ModernBERT) its partner in an
ensemble, d (another family, tokenizer and vocabulary) the source of a graph or tokenizer that does not
belong. The length limits in the messages come from b's manifest (its max length and generation length).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

import tie_lite
from conftest import ROOT, assert_one_line_error, run_cli

SHIPPED = {name: ROOT / "models" / name / "onnx" for name in ("a", "b", "d")}
B = json.loads((SHIPPED["b"] / "tie_lite.json").read_text())  # the model most rows break
MAX_LENGTH, GEN_LENGTH = B["max_length"], B["decode_defaults"]["gen_length"]


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
    """A valid ONNX graph whose inputs and outputs are not the statistics graph's: the shipped policy's."""
    shutil.copy(ROOT / "models" / "policy" / "policy.onnx", folder / "model.onnx")


def _other_tokenizer(other_folder):
    return lambda folder: shutil.copy(other_folder / "tokenizer.json", folder / "tokenizer.json")


def _other_models_graph(other_folder):
    """model.onnx of another export (another vocabulary width) beside this folder's manifest."""
    return lambda folder: shutil.copy(other_folder / "model.onnx", folder / "model.onnx")


def _prompt_file(text: str):
    return lambda folder: (folder / "prompt.txt").write_text(text, encoding="utf-8")


def _prompts_file(text: str):
    return lambda folder: (folder / "prompts.txt").write_text(text, encoding="utf-8")


LONG_PROMPT = "the cat " * 250_000  # 2,000,000 characters


M = ["--answer-length", "16", "--gen-length", "32"]  # ensemble rows: a valid infilling layout
P = ["--prompts-file", "{folder}/prompts.txt"]        # prompts-file rows

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
    ("model.onnx of another vocabulary", "other graph", [], "the manifest's graph_vocab_size is"),
    ("model path is a file", "file", [], "model path is not a folder"),
    # prompts
    ("empty prompt", None, ["--prompt", "   "], "prompt is empty"),
    ("prompt over max length", None, ["--prompt", " ".join(["cat"] * 120)], f"max length {MAX_LENGTH}"),
    ("prompt not valid Unicode", None, ["--prompt", "caf\udce9"], "not valid Unicode text"),
    ("prompt given twice", None, ["--prompt", "the cat", "--prompt", "the dog"], "--prompt is given twice"),
    ("prompt and prompt file", None, ["--prompt", "a", "--prompt-file", "x"], "not allowed with argument"),
    ("no prompt", "no prompt", ["--gen-length", "16"],
     "one of the arguments --prompt --prompt-file --prompts-file is required"),
    ("prompt file missing", None, ["--prompt-file", "/nonexistent/prompt.txt"], "no such file"),
    ("prompt file is a folder", None, ["--prompt-file", "/"], "a folder, not a file"),
    ("prompt file not UTF-8", _write("prompt.txt", b"caf\xe9"), ["--prompt-file", "{folder}/prompt.txt"],
     "is not UTF-8 text"),
    ("prompt with a NUL character", _prompt_file("the\0cat"), ["--prompt-file", "{folder}/prompt.txt"],
     "NUL character"),
    ("prompt of 2,000,000 characters", _prompt_file(LONG_PROMPT), ["--prompt-file", "{folder}/prompt.txt"],
     "characters; more than"),
    ("abbreviated option", None, ["--prom", "the cat"], "unrecognized arguments"),
    # prompts files (--prompts-file)
    ("prompts file missing", None, ["--prompts-file", "/nonexistent/prompts.txt"], "no such file"),
    ("prompts file empty", _prompts_file(""), P, "holds no prompts"),
    ("prompts file with an empty line", _prompts_file("the cat\n\nthe dog\n"), P, "prompts.txt line 2 is empty"),
    ("prompts file line not JSON", _prompts_file('{"prompt": "the cat"}\n{"prompt": oops}\n'), P,
     "line 2 is not valid JSON (Expecting value, column 12)"),
    ("prompts file line without prompt", _prompts_file('{"prompt": "the cat"}\n{"text": "the dog"}\n'), P,
     'line 2: a JSON line must be an object with a "prompt" field'),
    ("prompts file prompt not a string", _prompts_file('{"prompt": "the cat"}\n{"prompt": 7}\n'), P,
     'line 2: "prompt" must be a string, got int 7'),
    ("prompts file prompt over max length", _prompts_file("the cat\n" + " ".join(["cat"] * 120)), P,
     f"line 2: prompt (480 tokens) + gen_length {GEN_LENGTH} + marker (9) = {480 + GEN_LENGTH + 9} tokens "
     f"exceeds b's max length {MAX_LENGTH}"),
    ("prompts file not UTF-8", _write("prompts.txt", b"the cat\ncaf\xe9\n"), P, "is not UTF-8 text"),
    ("prompt and prompts file", None, ["--prompt", "a", "--prompts-file", "x"], "not allowed with argument"),
    ("prompts file with --stream", _prompts_file("the cat\n"), [*P, "--stream"],
     "--stream applies to one --prompt, not to --prompts-file"),
    ("batch size zero", _prompts_file("the cat\n"), [*P, "--batch-size", "0"],
     "--batch-size must be a positive integer, got 0"),
    ("batch size without prompts file", None, ["--batch-size", "4"], "--batch-size needs --prompts-file"),
    ("prompts file path empty", None, ["--prompts-file", ""], "argument --prompts-file: an empty path"),
    ("prompts file JSON first line broken", _prompts_file('{"prompt": "the cat"\n{"prompt": "the dog"}\n'), P,
     "line 1 starts as a JSON object but is not valid JSON (Expecting ',' delimiter, column 21)"),
    # decoding options
    ("gen length not divisible by block size", None, ["--gen-length", "18"], "gen_length 18 is not divisible"),
    ("gen length not a number", None, ["--gen-length", "lots"], "invalid int value: 'lots'"),
    ("gen length of a billion", None, ["--gen-length", "1000000000", "--block-size", "1"],
     f"exceeds b's max length {MAX_LENGTH}"),
    ("gen length past int64", None, ["--gen-length", "4000000000000000000"], f"exceeds b's max length {MAX_LENGTH}"),
    ("block size zero", None, ["--block-size", "0"], "block_size must be positive"),
    ("steps zero", None, ["--steps", "0"], "steps must be positive, got 0"),
    ("steps negative", None, ["--steps", "-3"], "got -3"),
    ("steps over gen length", None, ["--steps", "128"], "steps 128 exceeds"),
    ("steps with threshold strategy", None, ["--steps", "16", "--strategy", "threshold"], "applies only"),
    ("answer length not a block multiple", None, ["--answer-length", "6"], "answer_length 6"),
    ("threshold out of range", None, ["--strategy", "threshold", "--threshold", "1.5"], "threshold must be in (0, 1)"),
    ("another strategy's option", None, ["--eps", "0.1"], "--eps applies to --strategy dream, not schedule"),
    ("temperature negative", None, ["--temperature", "-0.5"], "temperature must be"),
    ("temperature not finite", None, ["--temperature", "nan"], "temperature must be"),
    ("tokens per step zero", None, ["--strategy", "topk", "--tokens-per-step", "0"], "tokens_per_step must be positive"),
    ("unknown strategy", None, ["--strategy", "psychic"], "invalid choice: 'psychic'"),
    ("history without json", None, ["--history"], "--history needs --json"),
    # runtime
    ("unknown provider", None, ["--provider", "tpu"], "provider must be cpu, cuda, cuda:N or openvino"),
    ("bad CUDA device", None, ["--provider", "cuda:x"], "cuda:x"),
    ("CUDA where it is not available", None, ["--provider", "cuda"], "provider 'cuda' is not available"),
    ("threads zero", None, ["--threads", "0"], "threads must be an integer in [1, "),
    ("threads 10000", None, ["--threads", "10000"], "got 10000"),
    ("threads 100000", None, ["--threads", "100000"], "got 100000"),
    ("fewer threads than models", "pair", [*M, "--threads", "1"], "threads 1 is fewer than the 2 models"),
    ("kv window past any canvas", None, ["--kv-cache", "--kv-window", "100000"], "kv_window 100000 exceeds"),
    ("OpenVINO cache without OpenVINO", None, ["--openvino-cache", "/tmp/x"],
     "--openvino-cache applies to --provider openvino, not cpu"),
    ("given answer empty", None, ["--answer-length", "16", "--gen-length", "32", "--answer", ""],
     "--answer is empty"),
    ("option given twice", None, ["--gen-length", "16", "--gen-length", "32"], "--gen-length is given twice"),
    # ensembles
    ("ensemble of one", "one", [], "two or more"),
    ("ensembling option with one model", None, ["--interval", "4"], "--interval applies to an ensemble"),
    ("--model and --models together", "both", [], "not allowed with argument"),
    ("ensemble without answer positions", "pair", ["--answer-length", "0"], "set answer_length > 0"),
    ("interval zero", "pair", [*M, "--interval", "0"], "interval must be positive"),
    ("unknown score", "pair", [*M, "--score", "loud"], "invalid choice: 'loud'"),
    ("unknown selection", "pair", [*M, "--select", "loudest"], "select must be one of"),
    ("best-model names no model", "pair", [*M, "--select", "best-model:nobody"], "nobody"),
    ("source-only with tcc", "pair", [*M, "--score", "tcc", "--select", "tcc", "--source-only"], "source-only"),
    ("first-k zero", "pair", [*M, "--first-k", "0"], "first_k must be positive"),
    ("first-k past the answer", "pair", [*M, "--first-k", "17"], "first_k 17 exceeds the answer's 16"),
    ("one model twice", "same pair", M, "two models named 'b'"),
    ("models trained on different layouts", "layout pair", [],
     "the models recommend different gen_length values (b "),
    ("unknown interval unit", "pair", [*M, "--interval-unit", "hours"], "invalid choice: 'hours'"),
    ("providers do not match models", "pair", [*M, "--provider", "cpu,cpu,cpu"], "3 providers for 2 models"),
    ("prompt fits one model, not the other", "short pair", ["--answer-length", "16", "--gen-length", "96"],
     "exceeds a's max length 90"),
]

# rows that hold only where onnxruntime has no CUDA (the CPU-only onnxruntime the runtime installs)
ASSUME_NO_CUDA = {"CUDA where it is not available"}


def _cases() -> list:
    return [pytest.param(*row, id=row[0], marks=[pytest.mark.cuda_absent] if row[0] in ASSUME_NO_CUDA else [])
            for row in CATALOGUE]


def _argv(setup, extra, tmp_path):
    given = "--prompt" in extra or "--prompt-file" in extra or "--prompts-file" in extra or setup == "no prompt"
    prompt = [] if given else ["--prompt", "the cat"]
    setup = None if setup == "no prompt" else setup
    if setup == "gone":
        return ["--model", str(tmp_path / "gone"), *prompt, *extra]
    if setup == "one":
        return ["--models", str(SHIPPED["b"]), *prompt, *extra]
    if setup == "both":
        return ["--model", str(SHIPPED["b"]), "--models", str(SHIPPED["b"]), str(SHIPPED["b"]), *prompt, *extra]
    if setup == "pair":
        return ["--models", str(SHIPPED["b"]), str(SHIPPED["a"]), *prompt, *extra]
    if setup == "same pair":
        return ["--models", str(SHIPPED["b"]), str(SHIPPED["b"]), *prompt, *extra]
    if setup == "file":
        (tmp_path / "model.txt").write_text("not a folder")
        return ["--model", str(tmp_path / "model.txt"), *prompt, *extra]
    if setup == "layout pair":  # the second model recommends another generation length
        shutil.copytree(SHIPPED["a"], tmp_path / "other")
        decode = json.loads((SHIPPED["a"] / "tie_lite.json").read_text())["decode_defaults"]
        _edit_manifest(name="other", decode_defaults={**decode, "gen_length": 96})(tmp_path / "other")
        return ["--models", str(SHIPPED["b"]), str(tmp_path / "other"), *prompt, *extra]
    if setup == "short pair":  # the second model accepts only 90 tokens
        shutil.copytree(SHIPPED["a"], tmp_path / "short")
        _edit_manifest(max_length=90)(tmp_path / "short")
        return ["--models", str(SHIPPED["b"]), str(tmp_path / "short"), *prompt, *extra]
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED["b"], folder)
    if setup == "other tokenizer":
        setup = _other_tokenizer(SHIPPED["d"])
    if setup == "other graph":
        setup = _other_models_graph(SHIPPED["d"])
    if setup is not None:
        setup(folder)
    return ["--model", str(folder), *prompt, *[arg.replace("{folder}", str(folder)) for arg in extra]]


@pytest.mark.parametrize("what,setup,extra,message", _cases())
def test_bad_input_gets_one_clear_error_line(what, setup, extra, message, tmp_path):
    argv = _argv(setup, extra, tmp_path)
    start = time.perf_counter()
    result = run_cli(*argv)
    assert_one_line_error(result, message)
    assert time.perf_counter() - start < 60, "a bad input must be refused quickly, not after minutes of work"


@pytest.mark.parametrize("prompt,message", [
    (None, "prompt must be a str, got NoneType"),
    (7, "prompt must be a str, got int"),
    (b"the cat", "prompt must be a str, got bytes"),
    ("caf\udce9", "prompt is not valid Unicode text"),
    ("the\0cat", "NUL character (U+0000) at character 3"),
    ("  \n ", "prompt is empty"),
    (LONG_PROMPT, "prompt has 2000000 characters"),
])
def test_library_prompts_are_checked_before_tokenizing(prompt, message):
    model = tie_lite.Model.load(SHIPPED["b"])
    with pytest.raises(tie_lite.ConfigError, match=re.escape(message)):
        tie_lite.generate(model, prompt, tie_lite.DecodeConfig(gen_length=32))


def test_library_refuses_an_ensemble_of_two_layouts_until_the_lengths_are_given(tmp_path):
    other = shutil.copytree(SHIPPED["a"], tmp_path / "other")
    decode = json.loads((SHIPPED["b"] / "tie_lite.json").read_text())["decode_defaults"]
    answer = decode["answer_length"]
    _edit_manifest(name="other", decode_defaults={**decode, "answer_length": 2 * answer})(other)
    pair = [tie_lite.Model.load(SHIPPED["b"]), tie_lite.Model.load(other)]
    message = f"different answer_length values (b {answer}, other {2 * answer})"
    with pytest.raises(tie_lite.ConfigError, match=re.escape(message)):
        tie_lite.generate(pair, "the cat")
    given = tie_lite.DecodeConfig(gen_length=decode["gen_length"], answer_length=answer)
    assert tie_lite.generate(pair, "the cat", given).answer is not None


def test_library_refuses_bad_threads_and_folders(tmp_path):
    with pytest.raises(tie_lite.ConfigError, match="got 100000"):
        tie_lite.Model.load(SHIPPED["b"], threads=100000)
    (tmp_path / "file").write_text("x")
    with pytest.raises(tie_lite.ModelError, match="not a folder"):
        tie_lite.Model.load(tmp_path / "file")


def test_prompt_dash_reads_standard_input():
    base = ["--model", str(SHIPPED["b"]), "--gen-length", "32", "--json"]
    piped = run_cli(*base, "--prompt", "-", stdin="the cat\n")  # as `echo` sends it
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout) == json.loads(run_cli(*base, "--prompt", "the cat").stdout)
    assert_one_line_error(run_cli(*base, "--prompt", "-", stdin=""), "prompt is empty")


def _interrupt_during_import(module: str, argv0: str) -> subprocess.CompletedProcess:
    """Run the CLI with a Ctrl-C (SIGINT) delivered while `module` is being imported."""
    script = f"""
import os, runpy, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)  # as at a terminal (a background job, e.g. under CI, ignores it)
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv = [{argv0!r}, "--prompt", "the cat"]
if sys.argv[0].endswith("tie-lite"):
    import tie_lite
    sys.exit(tie_lite.main())
runpy.run_path({str(ROOT / "tie_lite.py")!r}, run_name="__main__")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("module,argv0", [("numpy", "tie_lite.py"), ("numpy", "/usr/bin/tie-lite"),
                                          ("onnxruntime", "tie_lite.py")])
def test_ctrl_c_at_any_moment_exits_130_with_one_line(module, argv0):
    result = _interrupt_during_import(module, argv0)
    assert result.returncode == 130, (result.returncode, result.stderr)
    assert result.stderr.strip() == "interrupted", result.stderr
