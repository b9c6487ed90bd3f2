"""Block key/value-cache decoding (python -m export --kv-cache, tie_lite --kv-cache)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import tie_lite
from conftest import ROOT, assert_one_line_error, assert_same_decodes, run_cli
from tolerances import assert_statistics_agree, float32_reach, model_dims, near_ties

PROMPTS = ["what is two plus three ?", "the cat and the dog"]
SETTINGS = [  # DecodeConfig options
    dict(gen_length=16, block_size=4),
    dict(gen_length=24, block_size=8, answer_length=8),
    dict(gen_length=16, block_size=8, strategy="threshold", threshold=0.3),
    dict(gen_length=24, block_size=8, answer_length=8, exit_threshold=0.5),
    dict(gen_length=16, block_size=8, temperature=0.8, seed=3),  # sampling reads the logits output
]


def _export(tmp_path_factory, name: str, arch: str, **model_options):
    from export import export_model
    from tiny import save_tiny

    base = tmp_path_factory.mktemp(name)
    hf_dir = save_tiny(base / "hf", arch, seed=7, **model_options)
    export_model(hf_dir, base / "onnx", name=name, kv_cache=True, log=lambda msg: None)
    return base / "onnx"


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory, export_extras):
    """One-layer exports, where reusing kept keys/values is exact: {arch: onnx folder}."""
    return {"bert": _export(tmp_path_factory, "bert1", "bert", layers=1, position_embedding_type="relative_key"),
            "modernbert": _export(tmp_path_factory, "mb1", "modernbert", layers=1)}


@pytest.fixture(scope="module")
def local_modernbert(tmp_path_factory, export_extras):
    """Three ModernBERT layers, two of them with a 16-position sliding window."""
    return _export(tmp_path_factory, "mb3", "modernbert", layers=3, global_attn_every_n_layers=3,
                   local_attention=16)


@pytest.mark.torch
@pytest.mark.parametrize("mode", tie_lite.KV_CACHE_MODES)
@pytest.mark.parametrize("arch", ["bert", "modernbert"])
@pytest.mark.parametrize("options", SETTINGS)
def test_one_layer_cached_decode_is_token_identical(one_layer, arch, options, mode):
    plain = tie_lite.Model.load(one_layer[arch])
    cached = tie_lite.Model.load(one_layer[arch], kv_cache=mode)
    assert_same_decodes(plain, cached, tie_lite.DecodeConfig(**options), PROMPTS)


@pytest.mark.torch
def test_full_pass_of_the_cache_graph_matches_model_onnx(local_modernbert):
    """The same arithmetic in another graph: equal as far as float32 rounding reaches (tests/tolerances.py):
    logits within delta = 2 (N + 1) sqrt(K) EPS32 max|z| (N = 3 layers, K = 64, the MLP width),
    top-1 ids equal but at near-ties, probabilities within p * expm1(2 delta), entropies 4 delta H."""
    plain = tie_lite.Model.load(local_modernbert)
    cached = tie_lite.Model.load(local_modernbert, kv_cache="dual")
    tokens = plain.encode("what is two plus three ? " * 6)  # longer than the sliding window
    positions = np.arange(tokens.size)
    a, b = plain.stats(tokens, positions, with_logits=True), cached.stats(tokens, positions, with_logits=True)
    assert_statistics_agree(a, b, *model_dims(local_modernbert, tokens.size))


@pytest.mark.parametrize("name", ["a", "b", "d"])
def test_the_shipped_models_cache_graphs_match_their_model_onnx(name):
    """Bounded by the models' own numbers, not by one CPU's (tests/tolerances.py): 4 layers (d: 5), dot
    products up to K = 384 (a), 448 (d) or 512 (b, the MLP widths), logits up to |z| ~ 15-21, so delta =
    2 * (N + 1) * sqrt(K) * EPS32 * max|z| ~ 4-6e-4 and probabilities may move by p * expm1(2 delta) ~ 1e-3 p.
    (The model c shipped before had top-k probabilities differing by 1.06e-5 at p = 0.36 on some CPUs, its
    logits by 4.6e-5: within 3% and 9% of those bounds; an absolute atol=1e-5 on the probabilities was not.)"""
    folder = ROOT / "models" / name / "onnx"
    plain, cached = tie_lite.Model.load(folder), tie_lite.Model.load(folder, kv_cache="prefix")
    canvas = tie_lite.build_canvas(plain, "Compute 7 - 6 + 8.", tie_lite.DecodeConfig())
    positions = np.arange(canvas.tokens.size)
    a = plain.stats(canvas.tokens, positions, with_logits=True)
    b = cached.stats(canvas.tokens, positions, with_logits=True)
    assert_statistics_agree(a, b, *model_dims(folder, canvas.tokens.size), what=f"model {name}")


def _recorded_decode(folder, mode, monkeypatch, window=None):
    """Decode once with kv_cache=mode; return (result, canvas, full passes, rows of each cached step)."""
    model = tie_lite.Model.load(folder, kv_cache=mode, kv_window=window)
    config = tie_lite.DecodeConfig(gen_length=24, block_size=8, answer_length=8)
    primes, cached_rows = [], []
    prime, cached_stats = tie_lite.Model.prime, tie_lite.Model.cached_stats
    monkeypatch.setattr(tie_lite.Model, "prime", lambda self, *a, **k: primes.append(1) or prime(self, *a, **k))
    monkeypatch.setattr(tie_lite.Model, "cached_stats",
                        lambda self, tokens, cache, rows, *a, **k:
                        cached_rows.append(rows.tolist()) or cached_stats(self, tokens, cache, rows, *a, **k))
    result = tie_lite.generate(model, PROMPTS[0], config)
    return result, tie_lite.build_canvas(model, PROMPTS[0], config), primes, cached_rows


@pytest.mark.torch
@pytest.mark.parametrize("window", [None, 0, 3])
@pytest.mark.parametrize("mode", tie_lite.KV_CACHE_MODES)
def test_one_full_pass_per_block_and_the_modes_rows_otherwise(local_modernbert, monkeypatch, mode, window):
    result, canvas, primes, cached_rows = _recorded_decode(local_modernbert, mode, monkeypatch, window)
    assert len(primes) == 3  # blocks
    assert len(primes) + len(cached_rows) == result.steps
    blocks = [canvas.gen_idx[i * 8:(i + 1) * 8].tolist() for i in range(3)]
    length = canvas.tokens.size
    before = 8 if window is None else window  # default: as many positions as the block has

    def expected(block: list) -> list:
        start = max(0, block[0] - before)
        if mode == "dual":  # plain decoding reads the block's masks only
            return list(range(start, block[0])) + block
        return list(range(start, length))  # and everything after the block

    assert sorted({tuple(r) for r in cached_rows}) == sorted(tuple(expected(b)) for b in blocks)


@pytest.mark.torch
def test_kept_keys_and_values_stay_onnxruntime_values_on_the_session_device(one_layer):
    import onnxruntime as ort

    model = tie_lite.Model.load(one_layer["modernbert"], kv_cache="dual")
    tokens = model.encode(PROMPTS[1] + " " + PROMPTS[0])  # (L,)
    every = np.arange(tokens.size)
    stats, cache = model.prime(tokens, every, block=0, with_logits=True)
    layers, heads, dim = model.cache_dims
    assert len(cache.keys) == len(cache.values) == layers
    for value in cache.keys + cache.values:  # bound back as they are: never copied to numpy
        assert isinstance(value, ort.OrtValue)
        assert value.device_name() == "cpu"
        assert value.shape() == [1, heads, tokens.size, dim]
    rows = np.arange(2, 6)
    again = model.cached_stats(tokens, cache, rows, np.arange(rows.size), with_logits=True)  # nothing changed
    # the same numbers, as far as float32 lets the graph's GEMMs at 4 query rows instead of L round
    # differently (tests/tolerances.py; one layer, K = 64, so delta = 2 * 2 * 8 * EPS32 * max|z|)
    assert_statistics_agree(stats.take(rows), again,
                            *model_dims(one_layer["modernbert"], tokens.size))


def test_concurrent_cached_ensembles_match_serial_ones():
    from concurrent.futures import ThreadPoolExecutor

    pair = [tie_lite.Model.load(ROOT / "models" / name / "onnx", threads=1, kv_cache="prefix") for name in "ab"]
    config = tie_lite.DecodeConfig(gen_length=32, answer_length=4, block_size=4)
    prompts = [f"Compute {i} + {i + 3} - 2." for i in range(8)]
    serial = [tie_lite.generate(pair, prompt, config).tokens.tolist() for prompt in prompts]
    with ThreadPoolExecutor(max_workers=8) as pool:  # one session per model, a cache per decode
        concurrent = list(pool.map(lambda prompt: tie_lite.generate(pair, prompt, config).tokens.tolist(), prompts))
    assert concurrent == serial


def test_cache_is_refreshed_when_a_token_outside_the_block_changes():
    tokens = np.arange(10)
    cache = tie_lite.KVCache(np.zeros(1), np.zeros(1), tokens.copy(), block=1)
    block_idx = np.array([4, 5])
    assert cache.serves(tokens, block_idx, 1)
    inside = tokens.copy()
    inside[4] = 99
    assert cache.serves(inside, block_idx, 1)
    outside = tokens.copy()
    outside[7] = 99  # e.g. a relay rewrote the canvas
    assert not cache.serves(outside, block_idx, 1)
    assert not cache.serves(tokens, block_idx, 2)  # a new block


def test_cached_rows_follow_the_mode_and_window():
    block_idx, read = np.array([6, 7]), np.array([7, 9])
    assert tie_lite.KVCache.rows(block_idx, read, 12, "dual", None).tolist() == [4, 5, 6, 7, 9]
    assert tie_lite.KVCache.rows(block_idx, read, 12, "dual", 0).tolist() == [6, 7, 9]
    assert tie_lite.KVCache.rows(block_idx, read, 12, "prefix", 1).tolist() == [5, 6, 7, 8, 9, 10, 11]
    assert tie_lite.KVCache.rows(block_idx, read, 12, "dual", 50).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9]


@pytest.mark.torch
def test_tie_ensemble_with_kv_cache_decodes(one_layer):
    plain = [tie_lite.Model.load(one_layer[a]) for a in ("bert", "modernbert")]
    cached = [tie_lite.Model.load(one_layer[a], kv_cache="dual") for a in ("bert", "modernbert")]
    config = tie_lite.DecodeConfig(gen_length=24, block_size=8, answer_length=8)
    want = tie_lite.generate(plain, PROMPTS[0], config)
    got = tie_lite.generate(cached, PROMPTS[0], config)  # relays rewrite canvases: caches must refresh
    assert got.tokens.tolist() == want.tokens.tolist()


@pytest.mark.slow
@pytest.mark.torch
def test_export_records_the_cache_graph_validation_and_int8_quantizes_it(tmp_path):
    import json

    from export import export_model
    from tiny import save_tiny

    source = save_tiny(tmp_path / "hf", "bert", seed=8)
    export_model(source, tmp_path / "int8", kv_cache=True, int8=True, log=lambda m: None)
    manifest = json.loads((tmp_path / "int8" / "tie_lite.json").read_text())
    report = manifest["cache_validation"]  # the float32 cache graph against PyTorch, before quantizing
    assert report["positions"] - report["top1_agree"] <= _torch_near_ties(source, manifest)
    assert manifest["cache_int8_validation"]["positions"] > 0
    model = tie_lite.Model.load(tmp_path / "int8", kv_cache="dual")
    assert len(tie_lite.generate(model, PROMPTS[0], tie_lite.DecodeConfig(gen_length=8, block_size=4)).tokens) == 8
    export_model(source, tmp_path / "int8", log=lambda m: None)  # re-export without: no stale cache graph
    assert not (tmp_path / "int8" / "cache.onnx").exists()


def _torch_near_ties(source, manifest: dict) -> int:
    """The positions export's cache validation compares (each sample canvas in full, then its rows L/4 to
    L/2 again from the cache) whose PyTorch top two lie within float32's reach of a swap (tests/tolerances.py):
    the only ones where the cache graph's top-1 may differ."""
    from transformers import AutoModelForMaskedLM

    from export.families import family_for
    from export.graph import suppressed_columns
    from export.validate import sample_canvases, torch_statistics

    model = AutoModelForMaskedLM.from_pretrained(source).eval()
    m = tie_lite.Manifest.from_dict(manifest)
    is_suppressed = suppressed_columns(m.graph_vocab_size, m.vocab_size, [m.mask_id])
    count = 0
    for tokens in sample_canvases(m.vocab_size, m.mask_id, m.max_length):
        length = tokens.size
        ref = torch_statistics(model, family_for(model.config.model_type), tokens, np.arange(length),
                               is_suppressed, m.top_k)
        tied = near_ties(ref.top_probs, float32_reach([ref.logits], *model_dims(source, length)).log_prob)
        count += int(tied.sum() + tied[length // 4:length // 2].sum())
    return count


@pytest.mark.slow
@pytest.mark.torch
def test_a_tied_embedding_is_stored_once_in_the_cache_graph(tmp_path):
    from export import export_model
    from tiny import save_tiny

    source = save_tiny(tmp_path / "hf", "modernbert", seed=10, extra_columns=4000)  # the embedding dominates
    out = tmp_path / "out"
    export_model(source, out, kv_cache=True, log=lambda m: None)
    assert (out / "cache.onnx").stat().st_size < 1.1 * (out / "model.onnx").stat().st_size
    model, cached = tie_lite.Model.load(out), tie_lite.Model.load(out, kv_cache="prefix")
    tokens = model.encode(PROMPTS[0])
    positions = np.arange(tokens.size)
    # the two graphs agree as float32 lets them (tests/tolerances.py): over all 4000+ columns of the head
    assert_statistics_agree(model.stats(tokens, positions, True), cached.stats(tokens, positions, True),
                            *model_dims(out, tokens.size))


@pytest.mark.slow
@pytest.mark.torch
def test_a_cache_graph_over_protobufs_limit_keeps_its_weights_in_one_file(tmp_path, monkeypatch):
    """A 0.5B Dream's cache graph is over 2 GB: the tracer then writes a file per weight, and a whole
    save fails. With the limit lowered to this tiny model's size, export writes cache.onnx + one
    cache.onnx.data, float32 and int8, decoding as the whole graph does."""
    import export
    from export import export_model
    from tiny import save_tiny

    source = save_tiny(tmp_path / "hf", "modernbert", seed=11)
    export_model(source, tmp_path / "whole", kv_cache=True, log=lambda m: None)
    monkeypatch.setattr(export, "PROTOBUF_LIMIT", export.STRUCTURE_ROOM + 1024)
    config = tie_lite.DecodeConfig(gen_length=16, block_size=4)
    for name, options in (("split", {}), ("split-int8", dict(int8=True))):
        out = tmp_path / name
        export_model(source, out, kv_cache=True, log=lambda m: None, **options)
        graph_files = sorted(f.name for f in out.iterdir() if f.name.startswith("cache"))
        assert graph_files == ["cache.onnx", "cache.onnx.data"], graph_files
        assert (out / "cache.onnx.data").stat().st_mode == (out / "cache.onnx").stat().st_mode
        if not options:
            whole = tie_lite.Model.load(tmp_path / "whole", kv_cache="prefix")
            split = tie_lite.Model.load(out, kv_cache="prefix")
            assert_same_decodes(whole, split, config, PROMPTS)
        else:
            assert tie_lite.generate(tie_lite.Model.load(out, kv_cache="prefix"), PROMPTS[0], config).steps > 0
    monkeypatch.undo()  # the limit back: the same folder exported again keeps no stale data file
    export_model(source, tmp_path / "split", kv_cache=True, log=lambda m: None)
    assert not (tmp_path / "split" / "cache.onnx.data").exists()


@pytest.mark.torch
def test_export_refuses_kv_cache_for_a_family_without_the_cache_graph(tmp_path):
    from export import ExportError, export_model
    from tiny import save_tiny

    source = save_tiny(tmp_path / "hf", "roberta", seed=9)
    with pytest.raises(ExportError, match="K/V-cache graph is written for modernbert, bert, a2d-qwen, dream, "
                                          "llada only, not roberta"):
        export_model(source, tmp_path / "out", kv_cache=True, log=lambda m: None)


@pytest.mark.parametrize("options, message", [
    (dict(kv_cache="full"), "kv_cache must be one of prefix, dual, got 'full'"),
    (dict(kv_window=4), "kv_window (4) needs a kv_cache mode"),
    (dict(kv_cache="dual", kv_window=-1), "kv_window must be an int >= 0, got -1"),
    (dict(kv_cache="dual", kv_window=2.5), "kv_window must be an int >= 0, got 2.5"),
])
def test_bad_kv_options_are_named(options, message):
    with pytest.raises(tie_lite.ConfigError, match=re.escape(message)):
        tie_lite.Model.load(ROOT / "models" / "b" / "onnx", **options)


@pytest.mark.torch
def test_cli_kv_cache(one_layer, tiny_bert):
    ok = run_cli("--model", str(one_layer["bert"]), "--prompt", "the cat", "--gen-length", "8", "--block-size", "4",
                 "--kv-cache")
    assert ok.returncode == 0, ok.stderr
    plain = run_cli("--model", str(one_layer["bert"]), "--prompt", "the cat", "--gen-length", "8", "--block-size",
                    "4")
    assert ok.stdout == plain.stdout
    assert_one_line_error(run_cli("--model", str(tiny_bert[1]), "--prompt", "the cat", "--kv-cache"),
                          "has no cache.onnx for --kv-cache")
    assert_one_line_error(run_cli("--model", str(one_layer["bert"]), "--prompt", "the cat", "--kv-window", "2"),
                          "kv_window (2) needs a kv_cache mode")
