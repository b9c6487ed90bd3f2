"""The block key/value-cache graph of the decoder families: A2D-Qwen (Qwen3), Dream (Qwen2, shifted logits),
LLaDA (a Llama checkpoint, and LLaDA's own module layout through tests/llada_standin).

Every model has grouped-query attention with two key/value heads for four query heads, so a wrong pairing
of query and key/value heads changes the predictions (with one key/value head every pairing is the same).
"""

from __future__ import annotations

import numpy as np
import pytest

import tie_lite
from conftest import assert_same_decodes
from tolerances import assert_statistics_agree, model_dims

pytestmark = [pytest.mark.torch, pytest.mark.slow]

FAMILIES = ["a2d-qwen3", "dream", "llada", "llada-code"]
PROMPTS = ["what is two plus three ?", "the cat and the dog"]
SETTINGS = [  # DecodeConfig options
    dict(gen_length=16, block_size=4),
    dict(gen_length=24, block_size=8, answer_length=8, exit_threshold=0.5),
    dict(gen_length=16, block_size=8, temperature=0.8, seed=3),  # sampling reads the logits output
]
GQA = {"qwen": dict(num_attention_heads=4, num_key_value_heads=2), "llada": dict(n_heads=4, n_kv_heads=2)}


def _save(folder, family: str, layers: int):
    """A tiny random checkpoint of `family` with `layers` layers and grouped-query attention."""
    from tiny import save_llada_code, save_llada_like, save_qwen_family

    if family == "llada-code":
        return save_llada_code(folder, seed=3, n_layers=layers, **GQA["llada"])
    if family == "llada":
        return save_llada_like(folder, seed=7, num_hidden_layers=layers, **GQA["qwen"])
    head_dim = {"head_dim": 8} if family == "a2d-qwen3" else {}  # Qwen3's own head width: 4 heads of 8
    return save_qwen_family(folder, family, seed=7, extra_columns=5 if family == "dream" else 0,
                            num_hidden_layers=layers, **head_dim, **GQA["qwen"])


def _export_all(tmp_path_factory, layers: int) -> dict:
    """{family: (hf folder, onnx folder with cache.onnx)}."""
    from export import export_model

    out = {}
    for family in FAMILIES:
        base = tmp_path_factory.mktemp(f"{family}-{layers}")
        hf = _save(base / "hf", family, layers)
        export_model(hf, base / "onnx", name=family, family={"dream": "dream", "llada": "llada"}.get(family),
                     kv_cache=True, trust_remote_code=family == "llada-code", log=lambda m: None)
        out[family] = hf, base / "onnx"
    return out


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory, export_extras):
    """One-layer exports, where reusing kept keys/values is exact."""
    return _export_all(tmp_path_factory, layers=1)


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory, export_extras):
    return _export_all(tmp_path_factory, layers=3)


def _torch_statistics(hf, onnx, tokens: np.ndarray, positions: np.ndarray):
    """PyTorch's own full forward of the checkpoint, the graph's statistics at `positions` (shift honoured)."""
    from export.families import family_for, read_config
    from export.graph import suppressed_columns
    from export.validate import torch_statistics

    m = tie_lite.Model.load(onnx).manifest
    family = family_for(read_config(hf)["model_type"], m.family)
    model = family.load(str(hf), True).eval()
    is_suppressed = suppressed_columns(m.graph_vocab_size, m.vocab_size, [m.mask_id])
    return torch_statistics(model, family, tokens, positions, is_suppressed, m.top_k)._asdict()


@pytest.mark.parametrize("family", FAMILIES)
def test_full_pass_of_the_cache_graph_matches_pytorch_and_model_onnx(three_layers, family):
    """Every row recomputed, nothing kept (P = 0): the model's forward, as far as float32 rounding reaches
    (tests/tolerances.py: N = 3 layers, K = 64 the MLP width, delta = 2 (N + 1) sqrt(K) EPS32 max|z|)."""
    hf, onnx = three_layers[family]
    plain, cached = tie_lite.Model.load(onnx), tie_lite.Model.load(onnx, kv_cache="prefix")
    tokens = plain.encode("what is two plus three ? the cat and the dog")
    positions = np.arange(tokens.size)
    got = cached.stats(tokens, positions, with_logits=True)
    dims = model_dims(hf, tokens.size)
    assert_statistics_agree(_torch_statistics(hf, onnx, tokens, positions), got, *dims, what=f"{family} vs PyTorch")
    assert_statistics_agree(plain.stats(tokens, positions, with_logits=True), got, *dims, what=family)


@pytest.mark.parametrize("rows", [[5, 6, 7, 8], list(range(5, 20))], ids=["dual", "prefix"])
@pytest.mark.parametrize("family", FAMILIES)
def test_rows_recomputed_over_current_keys_reproduce_the_full_pass(three_layers, family, rows):
    """Rows recomputed over the kept keys/values of the unchanged canvas attend to what the full pass
    attended to, so predict what it predicted: only if their fresh keys are rotated at their canvas
    positions, as the kept ones were. Read as a cached step reads them (with Dream's shift, position p
    from row p - 1)."""
    hf, onnx = three_layers[family]
    model = tie_lite.Model.load(onnx, kv_cache="dual")
    tokens = model.encode("what is two plus three ? the cat and the dog")  # (11,)
    tokens = np.concatenate([tokens, np.full(9, model.manifest.mask_id)])  # (L,) L = 20, a masked tail
    full, cache = model.prime(tokens, np.arange(tokens.size), block=0, with_logits=True)
    rows = np.asarray(rows)  # (Q,)
    wanted = rows[np.isin(model.read_rows(rows), rows)]  # (K,) positions predicted from the rows
    again = model.cached_stats(tokens, cache, rows, np.searchsorted(rows, model.read_rows(wanted)), True)
    assert_statistics_agree(full.take(wanted), again, *model_dims(hf, tokens.size), what=family)


@pytest.mark.parametrize("window", [None, 0])
@pytest.mark.parametrize("mode", tie_lite.KV_CACHE_MODES)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("options", SETTINGS)
def test_one_layer_cached_decode_is_token_identical(one_layer, family, options, mode, window):
    """window 0: no row before the block is recomputed but those read (Dream reads the block's first
    position from the row before it)."""
    onnx = one_layer[family][1]
    plain, cached = tie_lite.Model.load(onnx), tie_lite.Model.load(onnx, kv_cache=mode, kv_window=window)
    assert_same_decodes(plain, cached, tie_lite.DecodeConfig(**options), PROMPTS)


@pytest.mark.parametrize("mode", tie_lite.KV_CACHE_MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decode_makes_one_full_pass_per_block(three_layers, family, mode, monkeypatch):
    onnx = three_layers[family][1]
    model = tie_lite.Model.load(onnx, kv_cache=mode)
    primes, cached = [], []
    prime, cached_stats = tie_lite.Model.prime, tie_lite.Model.cached_stats
    monkeypatch.setattr(tie_lite.Model, "prime", lambda self, *a, **k: primes.append(1) or prime(self, *a, **k))
    monkeypatch.setattr(tie_lite.Model, "cached_stats",
                        lambda self, *a, **k: cached.append(1) or cached_stats(self, *a, **k))
    result = tie_lite.generate(model, PROMPTS[0], tie_lite.DecodeConfig(gen_length=16, block_size=4))
    assert result.steps == 16  # one token a step
    assert len(primes) == 4 and len(cached) == 12  # blocks; their other steps


@pytest.mark.parametrize("mode", tie_lite.KV_CACHE_MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_cached_decodes_equal_each_prompt_alone(three_layers, family, mode, monkeypatch):
    """Rotary, grouped-query attention and Dream's shift, batched: prompts of different lengths step together,
    one call per step for all four (a full pass at each block's start, cached rows otherwise), and each
    decodes as it does alone."""
    model = tie_lite.Model.load(three_layers[family][1], kv_cache=mode)
    prompts = [*PROMPTS, "the dog is small", "how many red sun and blue moon are big ?"]  # each >= 4 tokens, the window
    config = tie_lite.DecodeConfig(gen_length=16, block_size=4)
    alone = [tie_lite.generate(model, prompt, config) for prompt in prompts]
    calls, batch = [], tie_lite.Model._run_cache_batch
    monkeypatch.setattr(tie_lite.Model, "_run_cache_batch",
                        lambda self, canvases, *a, **k: calls.append(len(canvases)) or batch(self, canvases, *a, **k))
    batched = tie_lite.generate(model, prompts, config, batch_size=4)
    for got, want in zip(batched, alone):
        assert got.tokens.tolist() == want.tokens.tolist() and got.steps == want.steps
    assert calls == [4] * 16


@pytest.mark.parametrize("family", FAMILIES)
def test_sibling_projections_run_as_one_matmul(three_layers, family):
    """Float32 graphs multiply each layer's normed states once for query, key and value and once for
    the MLP's gate and up (export/merge.py): a Split after each of those two matmuls, none left with
    a sibling. The decodes above check that the values stayed the model's."""
    import onnx

    from export.merge import sibling_groups

    for graph_file in ("model.onnx", tie_lite.CACHE_GRAPH):
        graph = onnx.load(str(three_layers[family][1] / graph_file)).graph
        weights = {t.name for t in graph.initializer}
        splits = {n.input[0] for n in graph.node if n.op_type == "Split"}
        merged = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights and n.output[0] in splits]
        assert len(merged) == 2 * 3 and not sibling_groups(graph), (graph_file, [n.name for n in merged])
