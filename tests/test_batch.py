"""Batched prompts: generate(models, [prompts]) is token-identical to generating each prompt alone."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import tie_lite
from conftest import ROOT, assert_one_line_error, run_cli
from tie_lite import DecodeConfig, EnsembleConfig

# different lengths, so that canvases are padded in a batch
PROMPTS = ["the cat", "what is two plus three ?", "how many red sun and blue moon are big ?", "yes",
           "the dog is small and the cat is big", "what is seven times two ?"]
INFILL = DecodeConfig(gen_length=32, answer_length=16, block_size=16)

SINGLE_CONFIGS = {
    "schedule": DecodeConfig(gen_length=32, block_size=8),
    "infilling": INFILL,
    "threshold": DecodeConfig(gen_length=32, block_size=8, strategy="threshold", threshold=0.3),
    "early exit": DecodeConfig(gen_length=48, answer_length=16, block_size=16, exit_threshold=0.2),
    "sampling": DecodeConfig(gen_length=32, block_size=16, temperature=1.0, seed=5),
    "med entropy": DecodeConfig(gen_length=32, block_size=16, strategy="med", entropy_budget=4.0,
                                confidence="entropy"),
    "dream alg_temp": DecodeConfig(gen_length=32, block_size=16, steps=12, strategy="dream", alg_temp=0.5, seed=2),
}

pytestmark = pytest.mark.torch  # most tests batch the tiny models that conftest exports with torch


@pytest.fixture(scope="module")
def bert(tiny_bert):
    return tie_lite.Model.load(tiny_bert[1])


@pytest.fixture(scope="module")
def modernbert(tiny_modernbert):
    return tie_lite.Model.load(tiny_modernbert[1])


@pytest.fixture(scope="module")
def char(tiny_char):
    return tie_lite.Model.load(tiny_char[1])


def assert_same(batched: tie_lite.GenerateResult, alone: tie_lite.GenerateResult) -> None:
    """Every field equal: text, tokens, steps, calls, relays, candidates and, when kept, the history."""
    assert (batched.text, batched.answer, batched.steps, batched.stopped, batched.model, batched.model_calls,
            batched.chosen) == (alone.text, alone.answer, alone.steps, alone.stopped, alone.model,
                                alone.model_calls, alone.chosen)
    assert np.array_equal(batched.tokens, alone.tokens)
    assert [(r.steps, r.leader, r.changed) for r in batched.relays] == \
        [(r.steps, r.leader, r.changed) for r in alone.relays]
    for b, a in zip(batched.relays, alone.relays):
        np.testing.assert_array_equal(b.scores, a.scores)  # NaN (a score nobody could judge) equals NaN
    assert len(batched.candidates) == len(alone.candidates)
    for b, a in zip(batched.candidates, alone.candidates):
        assert_same(b, a)
    assert (batched.history is None) == (alone.history is None)
    for b, a in zip(batched.history or [], alone.history or []):
        assert (b.step, b.block, b.model) == (a.step, a.block, a.model)
        for name in ("committed_idx", "committed_ids", "confidence", "tokens"):
            assert np.array_equal(getattr(b, name), getattr(a, name)), name


def check_batched(models, prompts, config, ensemble=EnsembleConfig(), batch_sizes=(2, 4, 64), history=False):
    alone = [tie_lite.generate(models, p, config, ensemble, record_history=history) for p in prompts]
    for size in batch_sizes:
        batched = tie_lite.generate(models, prompts, config, ensemble, record_history=history, batch_size=size)
        assert len(batched) == len(prompts)
        for b, a in zip(batched, alone):
            assert_same(b, a)
    return alone


# --- the statistics ------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_modernbert", "tiny_char"])
def test_batched_statistics_are_bit_identical_to_one_canvas_per_call(fixture, request):
    model = tie_lite.Model.load(request.getfixturevalue(fixture)[1])
    canvases, positions = random_canvases(model, 24, seed=0)
    batched = model.batch_stats(canvases, positions, with_logits=True)
    for tokens, wanted, stats in zip(canvases, positions, batched):
        assert_stats_equal(stats, model.stats(tokens, wanted, with_logits=True))


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_modernbert"])
def test_a_canvas_read_at_one_position_is_bit_identical_batched_with_canvases_read_at_more(fixture, request):
    """model.onnx's last layer runs at the read positions and one spare row, so its attention never multiplies
    a single query row, which onnxruntime does with another kernel (a matrix-vector product) than several
    (without the spare row this fails on both models: such canvases got other last bits alone than batched)."""
    model = tie_lite.Model.load(request.getfixturevalue(fixture)[1])
    canvases, positions = random_canvases(model, 24, seed=4)
    positions = [p[:1] if i % 2 else p for i, p in enumerate(positions)]  # every other canvas read at one position
    assert max(p.size for p in positions) > 1
    batched = model.batch_stats(canvases, positions, with_logits=True)
    for tokens, wanted, stats in zip(canvases, positions, batched):
        assert_stats_equal(stats, model.stats(tokens, wanted, with_logits=True))


def test_batch_rows_start_every_canvas_on_a_64_byte_boundary():
    for vocab in (43, 51, 100, 300, 50368, 151936):
        for positions in (1, 5, 16, 33):
            rows = tie_lite.batch_rows(positions, vocab)
            assert rows >= positions and rows * vocab * 4 % 64 == 0 and rows - positions < 16


# --- one model -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SINGLE_CONFIGS))
def test_one_model_batched_is_token_identical(bert, modernbert, name):
    for model in (bert, modernbert):
        check_batched(model, PROMPTS, SINGLE_CONFIGS[name], history=name in ("threshold", "sampling"))


def test_prompts_finish_at_different_steps(bert):
    alone = check_batched(bert, PROMPTS, SINGLE_CONFIGS["threshold"], batch_sizes=(3,))
    assert len({r.steps for r in alone}) > 1
    early = check_batched(bert, PROMPTS, SINGLE_CONFIGS["early exit"], batch_sizes=(3,))
    assert len({r.steps for r in early}) > 1 and min(r.steps for r in early) < 48


def test_a_single_prompt_and_short_lists(bert):
    one = tie_lite.generate(bert, "the cat", INFILL)
    assert isinstance(one, tie_lite.GenerateResult)
    listed = tie_lite.generate(bert, ["the cat"], INFILL)
    assert isinstance(listed, list) and len(listed) == 1
    assert_same(listed[0], one)
    assert tie_lite.generate(bert, [], INFILL) == []
    assert_same(tie_lite.generate(bert, ("the cat",), INFILL)[0], one)


def random_canvases(model: tie_lite.Model, count: int, seed: int, most_read: int = 20) -> tuple:
    """`count` canvases (L,) of different lengths, about 40% masked, and sorted positions (K,) to read in each."""
    m, rng = model.manifest, np.random.default_rng(seed)
    canvases, positions = [], []
    for _ in range(count):
        length = int(rng.integers(8, m.max_length + 1))
        tokens = rng.integers(4, m.vocab_size, length)  # (L,)
        tokens[rng.random(length) < 0.4] = m.mask_id
        canvases.append(tokens.astype(np.int64))
        positions.append(np.sort(rng.choice(length, int(rng.integers(1, min(most_read, length))), replace=False)).astype(np.int64))
    return canvases, positions


def assert_stats_equal(got: tie_lite.Stats, want: tie_lite.Stats) -> None:
    for name in ("top_ids", "top_probs", "entropy", "logits"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name


@pytest.mark.parametrize("name", ["a", "b", "d"])
def test_batched_cache_passes_are_bit_identical_to_one_canvas_per_call(name):
    """A full pass (prime) over canvases of different lengths, and cached steps of equally many rows over
    them, equal each canvas's own call, statistics and kept keys and values alike."""
    model = tie_lite.Model.load(ROOT / "models" / name / "onnx", kv_cache="dual")
    canvases, positions = random_canvases(model, 12, seed=1)
    primed = model.batch_prime(canvases, positions, [0] * len(canvases), with_logits=True)
    for tokens, wanted, (stats, cache) in zip(canvases, positions, primed):
        alone, own = model.prime(tokens, wanted, 0, with_logits=True)
        assert_stats_equal(stats, alone)
        for got, want in zip(cache.keys + cache.values, own.keys + own.values):
            assert np.array_equal(got.numpy(), want.numpy())
    rows = [np.sort(np.random.default_rng(b).choice(t.size, 6, replace=False)) for b, t in enumerate(canvases)]
    gathers = [np.array([0, 2, 5]) for _ in canvases]
    caches = [cache for _, cache in primed]
    batched = model.batch_cached_stats(canvases, caches, rows, gathers, with_logits=True)
    for tokens, cache, own_rows, gather, stats in zip(canvases, caches, rows, gathers, batched):
        assert_stats_equal(stats, model.cached_stats(tokens, cache, own_rows, gather, with_logits=True))


@pytest.mark.parametrize("mode", tie_lite.KV_CACHE_MODES)
def test_kv_cache_models_batched_are_token_identical(mode):
    """Prompts of different lengths, with blocks entered at different steps (threshold), batched with the
    cache: every result as generated alone; with TIE too."""
    a, d = (tie_lite.Model.load(ROOT / "models" / name / "onnx", kv_cache=mode) for name in ("a", "d"))
    prompts = [ex["prompt"] for ex in _task().make_split("test", 6, seed=0)]
    check_batched(a, prompts, DecodeConfig(), batch_sizes=(4,))
    finishing = check_batched(d, prompts, DecodeConfig(strategy="threshold", threshold=0.9), batch_sizes=(6,))
    assert len({r.steps for r in finishing}) > 1
    check_batched([a, d], prompts, DecodeConfig(), batch_sizes=(6,))


def test_a_cache_graph_exported_before_its_layout_was_recorded_steps_one_canvas_per_call(tmp_path, monkeypatch):
    """Such a graph may sum a padded canvas's scores in another order than a call of its own: never batched."""
    import json
    import shutil

    folder = shutil.copytree(ROOT / "models" / "a" / "onnx", tmp_path / "a")
    manifest = json.loads((folder / tie_lite.MANIFEST_NAME).read_text())
    del manifest["cache_layout"]
    (folder / tie_lite.MANIFEST_NAME).write_text(json.dumps(manifest))
    model = tie_lite.Model.load(folder, kv_cache="prefix")
    assert not model.batches_exactly and tie_lite.Model.load(folder).batches_exactly
    calls, batch = [], tie_lite.Model._run_cache_batch
    monkeypatch.setattr(tie_lite.Model, "_run_cache_batch", lambda *a, **k: calls.append(1) or batch(*a, **k))
    check_batched(model, [ex["prompt"] for ex in _task().make_split("test", 4, seed=0)], DecodeConfig(),
                  batch_sizes=(4,))
    assert calls == []


def test_int8_models_step_one_canvas_per_call(tmp_path, monkeypatch):
    """int8's dynamic quantization scales a call's activations by the range of the whole batch: batched, a
    canvas's statistics would change with its neighbours. So an int8 model steps its canvases one per call,
    with or without its cache, and its batched decodes equal each prompt's own."""
    from export import export_model

    folder = export_model(ROOT / "models" / "a" / "hf", tmp_path / "a8", int8=True, kv_cache=True,
                          log=lambda msg: None).parent
    model = tie_lite.Model.load(folder)
    assert not model.batches_exactly
    canvases, positions = random_canvases(model, 6, seed=3)
    monkeypatch.setattr(tie_lite.Model, "batches_exactly", True)
    mixed = model.batch_stats(canvases, positions)
    monkeypatch.undo()
    alone = [model.stats(tokens, wanted) for tokens, wanted in zip(canvases, positions)]
    # the reason: in one call some canvas's statistics differ from its own call's (this onnxruntime, these data)
    assert not all(np.array_equal(m.top_probs, a.top_probs) for m, a in zip(mixed, alone))
    for stats, own in zip(model.batch_stats(canvases, positions), alone):
        assert_stats_equal(stats, own)
    prompts = [ex["prompt"] for ex in _task().make_split("test", 6, seed=0)]
    config = DecodeConfig(gen_length=32, answer_length=4, block_size=4)
    check_batched(model, prompts, config, batch_sizes=(6,))
    check_batched(tie_lite.Model.load(folder, kv_cache="prefix"), prompts, config, batch_sizes=(6,))


def test_on_step_sees_prompt_indices_and_stops_one_prompt(bert):
    seen = []

    def on_step(event):
        seen.append(event.prompt)
        return not (event.prompt == 1 and event.step == 3)

    results = tie_lite.generate(bert, PROMPTS[:3], INFILL, on_step=on_step)
    assert sorted(set(seen)) == [0, 1, 2] and seen.count(1) == 3
    assert results[1].stopped and results[1].steps == 3
    for i in (0, 2):
        assert_same(results[i], tie_lite.generate(bert, PROMPTS[i], INFILL))


def test_batched_errors_name_the_prompt(bert, modernbert):
    with pytest.raises(tie_lite.ConfigError, match=r"prompts\[1\]: prompt is empty"):
        tie_lite.generate(bert, ["the cat", "  "], INFILL)
    with pytest.raises(tie_lite.ConfigError, match=r"prompts\[2\]: prompt .* exceeds bert's max length"):
        tie_lite.generate(bert, ["the cat", "yes", " ".join(["cat"] * 120)], INFILL)
    with pytest.raises(tie_lite.ConfigError, match="batch_size must be a positive integer, got 0"):
        tie_lite.generate(bert, ["the cat"], INFILL, batch_size=0)
    with pytest.raises(tie_lite.ConfigError, match="one prompt"):
        tie_lite.generate(bert, ["the cat"], INFILL, answer="yes")
    with pytest.raises(tie_lite.ConfigError, match="answer_length"):
        tie_lite.generate([bert, modernbert], ["the cat"], DecodeConfig(gen_length=32))


# --- TIE -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,ensemble", [
    (INFILL, EnsembleConfig(interval=8)),
    (INFILL, EnsembleConfig(interval=8, score="tcc", select="tcc")),
    (INFILL, EnsembleConfig(interval=4, score="top1")),
    (DecodeConfig(gen_length=32, answer_length=16, block_size=16, temperature=0.8, seed=3), EnsembleConfig(interval=8)),
    (DecodeConfig(gen_length=48, answer_length=16, block_size=16, strategy="threshold", threshold=0.3,
                  exit_threshold=0.2), EnsembleConfig(interval=6)),
    (INFILL, EnsembleConfig(interval=8, parallel=False, select="most-selected")),
], ids=["pll (default)", "tcc", "top1", "sampling", "threshold+exit", "sequential"])
def test_tie_batched_is_token_identical(bert, modernbert, config, ensemble):
    check_batched([bert, modernbert], PROMPTS, config, ensemble, batch_sizes=(2, 6), history=True)


def test_tie_batched_across_tokenizers(bert, char):
    check_batched([bert, char], PROMPTS[:4], INFILL, EnsembleConfig(interval=8), batch_sizes=(4,))


def test_tie_relays_carry_their_prompt(bert, modernbert):
    relays = []
    tie_lite.generate([bert, modernbert], PROMPTS[:3], INFILL, EnsembleConfig(interval=8),
                      on_step=lambda e: relays.append(e.prompt) if isinstance(e, tie_lite.Relay) else None)
    assert sorted(relays) == [0] * 3 + [1] * 3 + [2] * 3


# --- the shipped models --------------------------------------------------------------------------

def _task():
    sys.path.insert(0, str(ROOT / "train"))
    import task

    return task


@pytest.fixture(scope="module")
def shipped():
    return [tie_lite.Model.load(ROOT / "models" / name / "onnx") for name in tie_lite.DEFAULT_MODELS]


@pytest.mark.parametrize("config", [
    DecodeConfig(),
    DecodeConfig(strategy="threshold", threshold=0.8, exit_threshold=0.9),
    DecodeConfig(temperature=1.0, seed=11),
    DecodeConfig(policy=str(ROOT / "models" / "policy")),
], ids=["defaults", "threshold+exit", "sampling", "policy"])
def test_shipped_models_batched_are_token_identical(shipped, config):
    prompts = [ex["prompt"] for ex in _task().make_split("test", 6, seed=0)]
    check_batched(shipped[:1], prompts, config, batch_sizes=(6,))
    check_batched(shipped, prompts, config, batch_sizes=(4,))


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_prompts_file_writes_one_json_line_per_prompt_in_order(tiny_bert, tmp_path):
    base = ["--model", str(tiny_bert[1]), "--gen-length", "32", "--answer-length", "16"]
    alone = [json.loads(run_cli(*base, "--prompt", p, "--json").stdout) for p in PROMPTS[:4]]
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:4]) + "\n", encoding="utf-8")
    lines = [json.dumps({"prompt": p, "id": i}) for i, p in enumerate(PROMPTS[:4])]
    (tmp_path / "prompts.jsonl").write_text("\r\n".join(lines), encoding="utf-8")  # no final newline, CRLF
    for argv in (["--prompts-file", str(tmp_path / "prompts.txt"), "--batch-size", "3"],
                 ["--prompts-file", str(tmp_path / "prompts.jsonl")]):
        result = run_cli(*base, *argv)
        assert result.returncode == 0 and result.stderr == "", result.stderr  # no progress line off a terminal
        assert [json.loads(line) for line in result.stdout.splitlines()] == alone
    piped = run_cli(*base, "--prompts-file", "-", stdin="\n".join(PROMPTS[:4]))
    assert [json.loads(line) for line in piped.stdout.splitlines()] == alone


def test_cli_prompts_file_with_an_ensemble_and_history(tiny_bert, tiny_modernbert, tmp_path):
    base = ["--models", str(tiny_bert[1]), str(tiny_modernbert[1]), "--gen-length", "32", "--answer-length", "16",
            "--interval", "8"]
    alone = [json.loads(run_cli(*base, "--prompt", p, "--json", "--history").stdout) for p in PROMPTS[:3]]
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:3]), encoding="utf-8")
    result = run_cli(*base, "--prompts-file", str(tmp_path / "prompts.txt"), "--history", "--trace")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == alone
    assert result.stderr.splitlines()[0].startswith("line 1: relay at step 8: bert=")


def test_cli_prompts_file_line_errors(tiny_bert, tmp_path):
    path = tmp_path / "prompts.txt"
    base = ["--model", str(tiny_bert[1]), "--prompts-file", str(path)]
    for text, message in [
        ("the cat\n\nthe dog\n", "line 2 is empty"),
        ('{"prompt": "the cat"}\nthe dog\n', "line 2 is not valid JSON"),
        ("the cat\nthe dog\n" + " ".join(["cat"] * 120) + "\n", "line 3: prompt (120 tokens)"),
        ("the cat\nthe\0dog\n", "line 2: the prompt contains a NUL character"),
    ]:
        path.write_text(text, encoding="utf-8")
        assert_one_line_error(run_cli(*base), message)


def test_prompts_file_text_as_it_stands(tmp_path):
    """--prompts-file reads its bytes as standard input would: a lone \\r stays inside its line (as in a
    file; universal newlines would split it), a leading byte-order mark goes, and a pipe reads like a file."""
    import os
    import threading

    text = '\ufeff{"prompt": "the cat\\rsat"}\r\n{"prompt": "the dog"}\n'
    (tmp_path / "prompts.jsonl").write_text(text, encoding="utf-8", newline="")
    (tmp_path / "plain.txt").write_bytes(b"\xef\xbb\xbfthe cat\rsat\nthe dog\n")
    expected = ["the cat\rsat", "the dog"]
    for name in ("prompts.jsonl", "plain.txt"):
        args = tie_lite.parse_args(["--prompts-file", str(tmp_path / name)])
        assert tie_lite.read_prompts(args) == expected
        piped = io.TextIOWrapper(io.BytesIO((tmp_path / name).read_bytes()), encoding="utf-8", newline="\n")  # as POSIX stdin
        assert tie_lite.read_prompts(tie_lite.parse_args(["--prompts-file", "-"]), stdin=piped) == expected
    undecodable = io.TextIOWrapper(io.BytesIO(b"the cat\ncaf\xe9\n"), encoding="utf-8", errors="surrogateescape",
                                   newline="\n")  # as stdin under a C locale
    with pytest.raises(tie_lite.ConfigError, match="not UTF-8 text: an undecodable byte at character 11"):
        tie_lite.read_prompts(tie_lite.parse_args(["--prompts-file", "-"]), stdin=undecodable)
    if Path("/dev/zero").exists():  # a device that never ends is refused, not read until memory runs out
        with pytest.raises(tie_lite.ConfigError, match="neither a file nor a pipe"):
            tie_lite.read_prompts(tie_lite.parse_args(["--prompts-file", "/dev/zero"]))
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        writer = threading.Thread(target=lambda: (tmp_path / "fifo").write_bytes((tmp_path / "plain.txt").read_bytes()),
                                  daemon=True)  # blocked for good if the pipe were refused unread: no hang at exit
        writer.start()
        assert tie_lite.read_prompts(tie_lite.parse_args(["--prompts-file", str(tmp_path / "fifo")])) == expected
        writer.join(timeout=10)


def test_generate_refuses_what_is_no_model_and_a_bad_batch_size(bert):
    """generate()'s models and batch_size are checked whatever the prompt: a TieLiteError naming them."""
    for models, named in [("models/b/onnx", "got str 'models/b/onnx'"), (None, "got NoneType"),
                          ([bert, "models/a/onnx"], "models[1] is str 'models/a/onnx', not a Model"), ([], "no model")]:
        with pytest.raises(tie_lite.TieLiteError, match=named.replace("[", r"\[").replace("]", r"\]")):
            tie_lite.generate(models, "the cat", INFILL)
    with pytest.raises(tie_lite.TieLiteError, match="batch_size must be a positive integer, got 0"):
        tie_lite.generate(bert, "the cat", INFILL, batch_size=0)
    with pytest.raises(tie_lite.TieLiteError, match="on_step must be a callable or None, got 5"):
        tie_lite.generate(bert, "the cat", INFILL, on_step=5)
    for folder, provider, named in [(None, "cpu", "folder must be a path, got NoneType"),
                                    ("models/b/onnx", None, "provider must be cpu, cuda, cuda:N or openvino, got None")]:
        with pytest.raises(tie_lite.TieLiteError, match=named):
            tie_lite.Model.load(folder, provider=provider)
    steps = []
    tie_lite.generate(bert, "the cat", INFILL, on_step=lambda event: steps.append(event) and None or np.False_)
    assert len(steps) == 1  # numpy's False stops the decode as False does
    huge = tie_lite.generate(bert, PROMPTS[:2], INFILL, batch_size=2 ** 70)
    assert [r.tokens.tolist() for r in huge] == [r.tokens.tolist() for r in tie_lite.generate(bert, PROMPTS[:2], INFILL)]


def test_prompts_start_shortest_first_within_a_window(bert, monkeypatch):
    monkeypatch.setattr(tie_lite, "START_WINDOW", 2)
    config = INFILL.for_model(bert)
    order = tie_lite.start_order(bert, PROMPTS, config, batch_size=2)  # windows of 4 prompts
    assert sorted(order) == list(range(len(PROMPTS))) and set(order[:4]) == {0, 1, 2, 3}
    lengths = [tie_lite.build_canvas(bert, PROMPTS[i], config).tokens.size for i in order]
    assert lengths[:4] == sorted(lengths[:4]) and lengths[4:] == sorted(lengths[4:])


def test_cli_progress_line_only_on_a_terminal(tiny_bert, tmp_path, monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:3]), encoding="utf-8")
    argv = ["--model", str(tiny_bert[1]), "--gen-length", "16", "--prompts-file", str(tmp_path / "prompts.txt")]
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert tie_lite.main(argv) == 0
    assert "3/3 prompts" in sys.stderr.getvalue() and sys.stderr.getvalue().endswith("\r\x1b[K")
    assert len(capsys.readouterr().out.splitlines()) == 3
