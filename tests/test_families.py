"""Real model families on tiny random models with their conventions: A2D-Qwen, Dream (shifted logits), LLaDA.

Every test needs the export extras and is slow: the module exports four models of its own, and decodes with
PyTorch or runs python -m export."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tie_lite
from conftest import run_export
from tolerances import float32_reach, live_columns, model_dims

pytestmark = [pytest.mark.torch, pytest.mark.slow]

SETTINGS = [dict(gen_length=16, block_size=16), dict(gen_length=32, block_size=16, answer_length=16),
            dict(gen_length=32, block_size=8, steps=16)]


@pytest.fixture(scope="module")
def families(tmp_path_factory, export_extras):
    from export import export_model
    from tiny import save_llada_like, save_qwen_family

    out = {}
    for family, extra in (("a2d-qwen3", 0), ("dream", 5), ("llada", 0)):
        base = tmp_path_factory.mktemp(family)
        if family == "llada":
            hf = save_llada_like(base / "hf", seed=7)
        else:
            hf = save_qwen_family(base / "hf", family, seed=7, extra_columns=extra)
        export_model(hf, base / "onnx", name=family, family=_FAMILY_OPTION.get(family), log=lambda m: None)
        out[family] = (hf, base / "onnx")
    return out


_FAMILY_OPTION = {"dream": "dream", "llada": "llada"}  # plain Qwen2 / Llama checkpoints say no family


def _torch_model(hf, family):
    from export.families import family_for, read_config

    fam = family_for(read_config(hf)["model_type"], _FAMILY_OPTION.get(family))
    return fam.load(str(hf), False).eval()


def test_manifests_carry_the_family_conventions(families):
    from transformers import AutoTokenizer

    a2d = json.loads((families["a2d-qwen3"][1] / "tie_lite.json").read_text())
    dream = json.loads((families["dream"][1] / "tie_lite.json").read_text())
    tok = AutoTokenizer.from_pretrained(families["a2d-qwen3"][0])
    assert a2d["family"] == "a2d-qwen" and a2d["logits_shift"] == 0
    assert a2d["mask_id"] == tok.convert_tokens_to_ids("<|mask|>")  # found by the family, not the tokenizer
    assert a2d["stop_ids"] == [tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")]
    assert dream["family"] == "dream" and dream["logits_shift"] == 1
    assert dream["graph_vocab_size"] == dream["vocab_size"] + 5
    llada = json.loads((families["llada"][1] / "tie_lite.json").read_text())
    tok = AutoTokenizer.from_pretrained(families["llada"][0])
    assert tok.mask_token_id is None  # as in LLaDA's tokenizer: the family knows the mask token
    assert llada["family"] == "llada" and llada["logits_shift"] == 0
    assert llada["mask_id"] == tok.convert_tokens_to_ids("<|mdm_mask|>")
    assert llada["stop_ids"] == [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|eot_id|>")]


@pytest.mark.parametrize("family", ["a2d-qwen3", "llada"])
def test_decoder_families_attend_bidirectionally(families, family):
    """A causal mask would make position 0's prediction ignore the rest of the canvas."""
    model = tie_lite.Model.load(families[family][1])
    a, b = model.encode("the cat is big"), model.encode("the dog is small")
    assert a[0] == b[0]
    stats_a, stats_b = model.stats(a, np.array([0]), True), model.stats(b, np.array([0]), True)
    # a causal graph would give position 0 the same logits on both canvases, up to float32 rounding: at
    # most delta apart (tests/tolerances.py); attending to the rest moves them further
    live = live_columns(stats_a.logits)
    reach = float32_reach([stats_a.logits, stats_b.logits], *model_dims(families[family][0], a.size))
    moved = np.abs(stats_a.logits[:, live] - stats_b.logits[:, live]).max()
    assert moved > reach.delta, (moved, reach.delta)


@pytest.mark.parametrize("family", ["a2d-qwen3", "dream", "llada"])
@pytest.mark.parametrize("setting", SETTINGS, ids=["plain", "infill", "two-per-step"])
def test_family_decode_matches_pytorch(families, family, setting):
    """Exact tokens: no decision lies within float32's reach of a tie (tests/tolerances.py); the nearest,
    plain-a2d-qwen3's second step, ranks its pick 3.2 reaches ahead of the next position."""
    from transformers import AutoTokenizer

    from reference import reference_decode

    hf, onnx = families[family]
    model = tie_lite.Model.load(onnx)
    m = model.manifest
    config = tie_lite.DecodeConfig(**setting)
    expected, forwards = reference_decode(
        _torch_model(hf, family), AutoTokenizer.from_pretrained(hf), "what is two plus three ?",
        marker=m.answer_marker, vocab_size=m.vocab_size, mask_id=m.mask_id, bidirectional=True,
        shift=m.logits_shift, **setting)
    canvas = tie_lite.build_canvas(model, "what is two plus three ?", config)
    state = tie_lite.DecodeState(canvas, np.random.default_rng(0))
    tie_lite.decode(model, state, config)
    assert state.tokens[state.canvas.prompt_length:].tolist() == expected
    assert state.steps == forwards


def test_tie_across_two_families_with_different_tokenizers(families, tiny_char):
    models = [tie_lite.Model.load(families["a2d-qwen3"][1]), tie_lite.Model.load(tiny_char[1])]
    config = tie_lite.DecodeConfig(gen_length=48, answer_length=16)
    result = tie_lite.generate(models, "what is two plus three ?", config, tie_lite.EnsembleConfig(interval=16))
    assert len(result.relays) >= 1 and {c.model for c in result.candidates} == {"a2d-qwen3", "char"}
    assert all(isinstance(c.answer, str) for c in result.candidates)


def _quantized_int4_copy(onnx_dir, tmp_path):
    """A copy of an export whose model.onnx quantize_int4 (what --int4 does after validation) rewrote;
    (folder, quantize_int4's summary, the rewritten graph)."""
    import shutil

    import onnx

    from export import quantize_int4

    folder = shutil.copytree(onnx_dir, tmp_path / "int4")
    done = quantize_int4(folder / "model.onnx")
    return folder, done, onnx.load(str(folder / "model.onnx")).graph


def _weight_matmuls(graph) -> list:
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


@pytest.mark.parametrize("family", ["a2d-qwen3", "dream", "llada"])
def test_int4_quantizes_every_weight_matmul_of_the_family(families, family, tmp_path):
    """Each layer's q, k, v, o, gate, up and down projections and the LM head become MatMulNBits (the
    float32 export's merged q/k/v and gate/up matmuls split apart first, as --int4 has them), the
    embedding table GatherBlockQuantized; the runtime decodes the graph."""
    folder, done, graph = _quantized_int4_copy(families[family][1], tmp_path)
    assert done == {"matmuls": 2 * 7 + 1, "embedding": True} and not _weight_matmuls(graph)
    assert not [n for n in graph.node if n.op_type == "Split"]
    result = tie_lite.generate(tie_lite.Model.load(folder), "what is two plus three ?",
                               tie_lite.DecodeConfig(gen_length=16))
    assert result.steps == 16


@pytest.fixture(scope="module")
def llada_code(tmp_path_factory, export_extras):
    """LLaDA's own checkpoint format: custom code run through trust_remote_code (a test stand-in)."""
    from export import export_model
    from tiny import save_llada_code

    base = tmp_path_factory.mktemp("llada-code")
    hf = save_llada_code(base / "hf", seed=3, extra_columns=8)
    export_model(hf, base / "onnx", trust_remote_code=True, log=lambda m: None)
    return hf, base / "onnx"


def test_llada_code_manifest(llada_code):
    from transformers import AutoTokenizer

    hf, onnx = llada_code
    manifest = json.loads((onnx / "tie_lite.json").read_text())
    tok = AutoTokenizer.from_pretrained(hf)
    assert manifest["family"] == "llada" and manifest["logits_shift"] == 0
    assert manifest["graph_vocab_size"] == manifest["vocab_size"] + 8 == len(tok) + 8  # embedding_size
    assert manifest["max_length"] == 128  # max_sequence_length
    assert manifest["mask_id"] == tok.convert_tokens_to_ids("<|mdm_mask|>")


@pytest.mark.parametrize("setting", SETTINGS, ids=["plain", "infill", "two-per-step"])
def test_llada_code_decode_matches_pytorch(llada_code, setting):
    """Hidden states after ln_f, the tied and scaled output layer: the same tokens as the model's own logits."""
    from transformers import AutoTokenizer

    from export.families import family_for
    from reference import reference_decode

    hf, onnx = llada_code
    model = tie_lite.Model.load(onnx)
    m = model.manifest
    torch_model = family_for("llada").load(str(hf), True).eval()
    config = tie_lite.DecodeConfig(**setting)
    expected, forwards = reference_decode(
        torch_model, AutoTokenizer.from_pretrained(hf), "what is two plus three ?", marker=m.answer_marker,
        vocab_size=m.vocab_size, mask_id=m.mask_id, **setting)
    canvas = tie_lite.build_canvas(model, "what is two plus three ?", config)
    state = tie_lite.DecodeState(canvas, np.random.default_rng(0))
    tie_lite.decode(model, state, config)
    assert state.tokens[state.canvas.prompt_length:].tolist() == expected
    assert state.steps == forwards


def test_int4_converts_an_older_opset_for_the_int4_embedding_table(llada_code, tmp_path):
    """LLaDA's own code exports at opset 14 (ReduceMean with an axes attribute); int4 tensors need opset 21,
    which the version converter reaches without breaking the graph. The tied, scaled head is quantized too."""
    import onnx

    assert onnx.load(str(llada_code[1] / "model.onnx")).opset_import[0].version < 18
    folder, done, graph = _quantized_int4_copy(llada_code[1], tmp_path)
    # 2 layers x (q, k, v, attn_out, ff_proj, up_proj, ff_out) + the head
    assert done == {"matmuls": 2 * 7 + 1, "embedding": True} and not _weight_matmuls(graph)
    assert {(o.domain, o.version) for o in onnx.load(str(folder / "model.onnx")).opset_import} >= {("", 21)}
    result = tie_lite.generate(tie_lite.Model.load(folder), "what is two plus three ?",
                               tie_lite.DecodeConfig(gen_length=16))
    assert result.steps == 16


def test_llada_code_needs_trust_remote_code(llada_code, tmp_path, capsys):
    result = run_export(capsys, str(llada_code[0]), str(tmp_path / "out"))
    assert result.returncode == 2 and "--trust-remote-code" in result.stderr


def test_bd3lm_is_refused_with_the_reason(tmp_path, capsys):
    (tmp_path / "bd3lm").mkdir()
    (tmp_path / "bd3lm" / "config.json").write_text(json.dumps({"model_type": "bd3lm"}))
    result = run_export(capsys, str(tmp_path / "bd3lm"), str(tmp_path / "out"))
    assert result.returncode == 2 and "block-causal" in result.stderr
