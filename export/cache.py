"""The block key/value-cache graph: approximate decoding in the style of Fast-dLLM.

A masked diffusion LM attends bidirectionally, so no token's keys and values are
final until the whole canvas is. Fast-dLLM ("Training-free Acceleration of
Diffusion LLM by Enabling KV Cache and Parallel Decoding", 2025) observes that
within one block of semi-autoregressive decoding the keys and values outside the
block barely change, computes them once when the block starts and reuses them for
the block's steps, recomputing only some rows (its prefix cache: the block and
all after it; its DualCache: the block alone). The graph written here,
`cache.onnx`, serves both passes:

    input_ids       (B, Q) int64    tokens of the rows recomputed this call
    rows            (B, Q) int64    their canvas positions in [0, L), distinct where attention_mask is 1
    attention_mask  (B, L) int64    1 where a canvas position may be attended to
    gather          (B, K) int64    indices into the Q rows whose predictions are wanted
    past_keys_i     (B, h, P, d) float32  layer i's kept keys (rotary applied) of canvas positions
    past_values_i   (B, h, P, d) float32  0..P-1, i = 0..N-1; P = L, or 0 when every row is recomputed

and returns the statistics of export/graph.py at the gathered rows, plus

    keys_i    (B, h, Q, d) float32   the recomputed rows' keys and values, layer i = 0..N-1
    values_i  (B, h, Q, d) float32

One input and one output per layer, not one stacked (N, ...) tensor: onnxruntime
then reads each layer's kept keys where they lie and hands each layer's fresh ones
back as they are. Stacked, the outputs held every layer's twice (per layer, then
stacked), and onnxruntime fused the per-layer slices of the input into one Split
that copied every layer's at once, even for a step of a few rows, so the peak RSS was
higher (int8 + cache at L = 512 in bench/vs_pytorch.py).

With every row recomputed (Q = L, rows = 0..L-1) and nothing kept (P = 0) the call
is an ordinary full forward whose keys and values the runtime keeps. With Q = the
current block's rows and P = L, those rows attend to their own fresh keys and
values and to the kept ones everywhere else (the kept ones at the rows' own
positions masked, none copied): the approximation. In a one-layer
model the kept keys and values depend only on their own unchanged tokens, so the
approximation is exact there (tests/test_kv_cache.py and tests/test_kv_cache_decoders.py hold the
runtime to that).

h is the key/value head count: with grouped-query attention (the Qwen, Llama and
LLaDA decoders) fewer than the query heads, which share them inside `attend`, so the
kept keys and values are that many times smaller. Keys are kept with rotary applied,
at their canvas positions; a recomputed row's are rotated at its `rows` entry. The
statistics are those of the gathered rows' own logits: for Dream, whose position i is
read from the logits at i - 1, the runtime gathers (and recomputes) row i - 1
(tie_lite.Model.read_rows), as it gathers `positions` from model.onnx.

The layers are written here per family, from the transformers modules' own
weights and submodules, because the cache changes what attention reads.
model.onnx runs them too (export/graph.py: nothing kept, every row), and in both
graphs the last layer runs at the gathered rows only (gathered_last).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from torch import Tensor

from tie_lite import CACHE_GRAPH, CACHE_INPUTS, CACHE_OUTPUTS, layer_names

from .families import is_llada_code
from .graph import confidence_statistics


def past_names(layers: int) -> list:
    """cache.onnx's inputs after CACHE_INPUTS: every layer's kept keys, then every layer's kept values."""
    return layer_names("past_keys", layers) + layer_names("past_values", layers)


def fresh_names(layers: int) -> list:
    """cache.onnx's outputs after CACHE_OUTPUTS: every layer's fresh keys, then every layer's fresh values."""
    return layer_names("keys", layers) + layer_names("values", layers)


def attend(query: Tensor, key: Tensor, value: Tensor, past_key: Tensor | None, past_value: Tensor | None,
           allowed_past: Tensor | None, allowed_fresh: Tensor, scale: float,
           extra_past: Tensor | None = None, extra_fresh: Tensor | None = None) -> Tensor:
    """Attention of R query rows over the canvas: over the kept keys/values of canvas positions
    0..P-1 (P = L on a cached step, 0 on a full pass; None: nothing kept, as in model.onnx) and over
    the Q recomputed rows' own fresh ones, which stand in for the kept ones at the rows' positions
    (allowed_past is False there). Nothing kept is copied. query (B, h, R, d), R = Q or, in the last
    layer, the K gathered rows; key/value (B, g, Q, d) and past (B, g, P, d), g key/value heads
    (grouped-query attention: g divides h, and query head i reads key/value head i // (h / g), as
    transformers' repeat_kv and LLaDA's repeat_interleave pair them; g = h without it);
    allowed_past (B, 1, 1|R, P) and allowed_fresh (B, 1, 1|R, Q) bool; extra_* (B, h, R, P|Q) added to
    the scores and scaled with them (relative positions). Returns (B, R, h*d).

    The fresh rows come first in the softmax and the kept positions after them, so that a batch of
    canvases of different lengths, whose kept keys are padded at the end (masked), sums each canvas's
    scores in the same order as a call of its own: its batched statistics equal its own bit for bit."""
    batch, heads, count, dim = query.shape
    groups, fresh = key.shape[1], key.shape[2]
    kept = past_key is not None
    grouped = (query * scale).reshape(batch, groups, heads // groups * count, dim)  # (B, g, h/g * R, d): by group
    scores = torch.matmul(grouped, key.transpose(-1, -2))  # (B, g, h/g * R, Q)
    if kept:
        scores = torch.cat([scores, torch.matmul(grouped, past_key.transpose(-1, -2))], -1)  # (B, g, h/g * R, Q + P)
    columns = scores.shape[-1]  # Q [+ P]; as -1 below, symbolic shape inference (export/shapes.py) left it an
    # unsimplified quotient, floor(L * (2K + 2) / (2 * (K + 1))), in a tiny Dream's graph
    scores = scores.reshape(batch, heads, count, columns)  # (B, h, R, Q [+ P])
    if extra_fresh is not None:
        scores = scores + (torch.cat([extra_fresh, extra_past], -1) if kept else extra_fresh) * scale
    allowed = torch.cat([allowed_fresh, allowed_past], -1) if kept else allowed_fresh  # (B, 1, 1|R, Q [+ P])
    # masked by adding a bias of the mask's own (small) shape, not by a Where over every score: that
    # Where took 9.6% of the ModernBERT-base-sized forward's kernel time at L = 512, every Add together
    # 4.0% after (python bench/op_profile.py DIR --gathered 16)
    bias = torch.where(allowed, 0.0, torch.finfo(scores.dtype).min)  # (B, 1, 1|R, Q [+ P])
    probs = torch.softmax(scores + bias, dim=-1)  # (B, h, R, Q [+ P])
    probs = probs.reshape(batch, groups, heads // groups * count, columns)  # (B, g, h/g * R, Q [+ P])
    if kept:
        context = torch.matmul(probs[..., :fresh], value) + torch.matmul(probs[..., fresh:], past_value)
    else:
        context = torch.matmul(probs, value)  # (B, g, h/g * R, d)
    return context.reshape(batch, heads, count, dim).transpose(1, 2).reshape(batch, count, heads * dim)


def at_rows(x: Tensor | None, gather: Tensor, dim: int) -> Tensor | None:
    """x's entries at the gathered rows along `dim`, its rows axis (x batched on dim 0; gather (B, K)
    indices into that axis); None for None."""
    if x is None:
        return None
    index = gather.reshape(gather.shape[0], *[1] * (dim - 1), gather.shape[1], *[1] * (x.dim() - dim - 1))
    sizes = list(x.shape)
    sizes[dim] = gather.shape[1]
    return torch.gather(x, dim, index.expand(sizes))


def visible(rows: Tensor, attention_mask: Tensor, kept: int | None) -> tuple[Tensor | None, Tensor]:
    """Which kept positions (B, P) and which fresh rows (B, Q) the rows may attend to: the
    attention mask's, minus the kept positions the rows themselves replace (None: nothing kept)."""
    fresh = attention_mask.gather(1, rows).bool()  # (B, Q)
    if kept is None:
        return None, fresh
    canvas = torch.arange(kept, device=rows.device)  # (P,)
    replaced = (rows[:, :, None] == canvas[None, None, :]).any(dim=1)  # (B, P)
    # the mask's first P columns, gathered rather than sliced: a slice's width is min(P, L), which
    # shape inference (export/shapes.py) could only assume to be P
    kept_mask = attention_mask.gather(1, canvas[None, :].expand(rows.shape[0], kept))  # (B, P)
    return kept_mask.bool() & ~replaced, fresh


def _kept(past_keys: list) -> int | None:
    """P, the kept positions of past_keys (N tensors (B, g, P, d)), or None when they are N Nones."""
    return None if past_keys[0] is None else past_keys[0].shape[2]


def for_every_row(see_past: Tensor | None, see_fresh: Tensor) -> tuple[Tensor | None, Tensor]:
    """visible()'s masks as attend takes them when every query row sees the same positions:
    (B, 1, 1, P) (None when nothing is kept) and (B, 1, 1, Q)."""
    return None if see_past is None else see_past[:, None, None, :], see_fresh[:, None, None, :]


def gathered_last(index: int, layers, gather: Tensor | None) -> bool:
    """Whether layer `index` of `layers` runs at the gathered rows only: the last layer, given gather.
    Its query, key and value projections run at every row (the cache keeps the keys and values), its
    attention, output projection, MLP and residual stream at the gathered rows only: the rest of its
    output is never read."""
    return gather is not None and index == len(layers) - 1


def _modernbert_layers(model, input_ids: Tensor, rows: Tensor, past_keys: list, past_values: list,
                       attention_mask: Tensor, gather: Tensor | None = None) -> tuple[Tensor, list, list]:
    """ModernBERT's encoder over the Q rows: rotary at the rows' canvas positions, the local layers'
    sliding window measured in canvas positions. past_keys/past_values: N tensors (B, h, P, d), or N
    Nones (nothing kept). Returns hidden (B, Q, H) (with gather (B, K): (B, K, H), the last layer run
    at the gathered rows only, see `gathered_last`), and the rows' keys and values: N tensors (B, h, Q, d)."""
    from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

    base, config = model.model, model.config
    batch, count = input_ids.shape
    hidden = base.embeddings(input_ids=input_ids)  # (B, Q, H)
    kept = _kept(past_keys)
    see_past, see_fresh = visible(rows, attention_mask, kept)  # (B, P) or None, (B, Q)
    half = config.local_attention // 2
    near_fresh = (rows[:, :, None] - rows[:, None, :]).abs() <= half  # (B, Q, Q)
    everywhere = for_every_row(see_past, see_fresh)
    in_window = None, (see_fresh[:, None, :] & near_fresh)[:, None]  # (B, 1, Q, Q)
    if kept is not None:
        canvas = torch.arange(kept, device=rows.device)  # (P,)
        near_past = (rows[:, :, None] - canvas[None, None, :]).abs() <= half  # (B, Q, P)
        in_window = (see_past[:, None, :] & near_past)[:, None], in_window[1]  # (B, 1, Q, P), (B, 1, Q, Q)
    keys, values = [], []
    for i, layer in enumerate(base.layers):
        attn = layer.attn
        qkv = attn.Wqkv(layer.attn_norm(hidden)).view(batch, count, 3, attn.num_heads, attn.head_dim)
        cos, sin = attn.rotary_emb(qkv, position_ids=rows)
        query, key, value = qkv.transpose(3, 1).unbind(dim=2)  # (B, h, Q, d) each
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        allowed = everywhere if attn.local_attention == (-1, -1) else in_window
        if gathered_last(i, base.layers, gather):
            query, hidden = at_rows(query, gather, 2), at_rows(hidden, gather, 1)  # (B, h, K, d), (B, K, H)
            if allowed is in_window:  # one mask row per query row
                allowed = tuple(at_rows(m, gather, 2) for m in allowed)  # (B, 1, K, P|Q)
        context = attend(query, key, value, past_keys[i], past_values[i], *allowed, attn.head_dim ** -0.5)
        hidden = hidden + attn.Wo(context)
        hidden = hidden + layer.mlp(layer.mlp_norm(hidden))
        keys.append(key), values.append(value)
    return base.final_norm(hidden), keys, values


def _bert_layers(model, input_ids: Tensor, rows: Tensor, past_keys: list, past_values: list,
                 attention_mask: Tensor, gather: Tensor | None = None) -> tuple[Tensor, list, list]:
    """BERT's encoder over the Q rows, with absolute or relative_key positions read at the rows
    (arguments and returns as _modernbert_layers')."""
    bert = model.bert
    batch, count = input_ids.shape
    hidden = bert.embeddings(input_ids=input_ids, position_ids=rows)  # (B, Q, H)
    kept = _kept(past_keys)
    see_past, see_fresh = visible(rows, attention_mask, kept)  # (B, P) or None, (B, Q)
    allowed = for_every_row(see_past, see_fresh)
    to_fresh = rows[:, :, None] - rows[:, None, :]  # (B, Q, Q)
    if kept is None:
        distances = None, to_fresh
    else:
        canvas = torch.arange(kept, device=rows.device)  # (P,)
        distances = rows[:, :, None] - canvas[None, None, :], to_fresh  # (B, Q, P), (B, Q, Q)
    keys, values = [], []
    for i, layer in enumerate(bert.encoder.layer):
        self_attn = layer.attention.self
        heads, dim = self_attn.num_attention_heads, self_attn.attention_head_size

        def split(x: Tensor) -> Tensor:
            return x.view(batch, count, heads, dim).transpose(1, 2)  # (B, h, Q, d)

        query, key, value = (split(proj(hidden)) for proj in (self_attn.query, self_attn.key, self_attn.value))
        if gathered_last(i, bert.encoder.layer, gather):
            query, hidden = at_rows(query, gather, 2), at_rows(hidden, gather, 1)  # (B, h, K, d), (B, K, H)
            distances = tuple(at_rows(d, gather, 1) for d in distances)  # (B, K, P|Q)
        relative = ()
        if self_attn.position_embedding_type == "relative_key":
            offset = self_attn.max_position_embeddings - 1
            relative = tuple(None if d is None else torch.einsum(
                "bhqd,bqkd->bhqk", query, self_attn.distance_embedding(d + offset))
                for d in distances)  # (B, h, R, P) or None, (B, h, R, Q)
        context = attend(query, key, value, past_keys[i], past_values[i], *allowed, dim ** -0.5, *relative)
        attended = layer.attention.output(context, hidden)
        hidden = layer.output(layer.intermediate(attended), attended)
        keys.append(key), values.append(value)
    return hidden, keys, values


def _split_heads(x: Tensor, dim: int, norm=None) -> Tensor:
    """(B, Q, n*d) -> (B, n, Q, d), with `norm` (Qwen3's q_norm / k_norm, over each head's d) before."""
    heads = x.view(*x.shape[:2], -1, dim)  # (B, Q, n, d)
    return (heads if norm is None else norm(heads)).transpose(1, 2)


def _decoder_layers(model, input_ids: Tensor, rows: Tensor, past_keys: list, past_values: list,
                    attention_mask: Tensor, gather: Tensor | None = None) -> tuple[Tensor, list, list]:
    """A Llama-layout decoder (transformers' Qwen3, Qwen2 and Llama classes; Dream's code has their
    layout) run bidirectionally over the Q rows: rotary at the rows' canvas positions, computed by the
    model's own rotary module and applied by its own apply_rotary_pos_emb; Qwen3's q_norm / k_norm per
    head before it; keys and values with the key/value heads (grouped-query attention in `attend`).
    Sliding windows are not applied, as the plain graph's bidirectional 4D mask does not apply them.
    Arguments and returns as _modernbert_layers'."""
    base = model.model
    hidden = base.embed_tokens(input_ids)  # (B, Q, H)
    cos, sin = base.rotary_emb(hidden, position_ids=rows)  # (B, Q, d) each
    see_past, see_fresh = visible(rows, attention_mask, _kept(past_keys))  # (B, P) or None, (B, Q)
    allowed = for_every_row(see_past, see_fresh)
    rotary = sys.modules[type(base.layers[0].self_attn).__module__].apply_rotary_pos_emb  # the model's own
    keys, values = [], []
    for i, layer in enumerate(base.layers):
        attn = layer.self_attn
        normed = layer.input_layernorm(hidden)
        query = _split_heads(attn.q_proj(normed), attn.head_dim, getattr(attn, "q_norm", None))  # (B, h, Q, d)
        key = _split_heads(attn.k_proj(normed), attn.head_dim, getattr(attn, "k_norm", None))    # (B, g, Q, d)
        value = _split_heads(attn.v_proj(normed), attn.head_dim)                                  # (B, g, Q, d)
        query, key = rotary(query, key, cos, sin)
        if gathered_last(i, base.layers, gather):
            query, hidden = at_rows(query, gather, 2), at_rows(hidden, gather, 1)  # (B, h, K, d), (B, K, H)
        scale = getattr(attn, "scaling", attn.head_dim ** -0.5)
        context = attend(query, key, value, past_keys[i], past_values[i], *allowed, scale)
        hidden = hidden + attn.o_proj(context)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        keys.append(key), values.append(value)
    return base.norm(hidden), keys, values


def _llada_code_layers(model, input_ids: Tensor, rows: Tensor, past_keys: list, past_values: list,
                       attention_mask: Tensor, gather: Tensor | None = None) -> tuple[Tensor, list, list]:
    """LLaDA's own code (LLaDAModelLM; its LLaDALlamaBlock layout: attn_norm, q/k/v_proj, optional
    full-width q_norm / k_norm, attn_out, ff_norm, ff_proj * up_proj, ff_out) over the Q rows: rotary
    from each block's rotary_emb table read at the rows' canvas positions. Hidden states after ln_f;
    arguments and returns as _modernbert_layers'."""
    transformer, config = model.model.transformer, model.config
    hidden = transformer.wte(input_ids)  # (B, Q, H)
    if getattr(config, "input_emb_norm", False):
        hidden = hidden * config.d_model ** 0.5
    see_past, see_fresh = visible(rows, attention_mask, _kept(past_keys))  # (B, P) or None, (B, Q)
    allowed = for_every_row(see_past, see_fresh)
    dim = config.d_model // config.n_heads
    rotary = transformer.blocks[0].rotary_emb  # the blocks share one table (LLaDA's BufferCache)
    sin, cos = rotary.get_rotary_embedding(config.max_sequence_length, hidden.device)  # (1, 1, Lmax, d) each
    at_canvas = sin[0, 0][rows][:, None], cos[0, 0][rows][:, None]  # (B, 1, Q, d) each
    keys, values = [], []
    for i, block in enumerate(transformer.blocks):
        normed = block.attn_norm(hidden)
        query, key, value = block.q_proj(normed), block.k_proj(normed), block.v_proj(normed)
        if getattr(block, "q_norm", None) is not None:
            query, key = block.q_norm(query), block.k_norm(key)
        query, key, value = (_split_heads(x, dim) for x in (query, key, value))  # (B, h|g, Q, d)
        query, key = (block.rotary_emb.apply_rotary_pos_emb(*at_canvas, x) for x in (query, key))
        if gathered_last(i, transformer.blocks, gather):
            query, hidden = at_rows(query, gather, 2), at_rows(hidden, gather, 1)  # (B, h, K, d), (B, K, H)
        context = attend(query, key, value, past_keys[i], past_values[i], *allowed, dim ** -0.5)
        hidden = hidden + block.attn_out(context)
        normed = block.ff_norm(hidden)
        hidden = hidden + block.ff_out(block.act(block.ff_proj(normed)) * block.up_proj(normed))
        keys.append(key), values.append(value)
    return transformer.ln_f(hidden), keys, values


def _llada_layers(model, *args) -> tuple[Tensor, list, list]:
    """LLaDA's own code, or a Llama checkpoint exported with --family llada (transformers' classes)."""
    layers = _llada_code_layers if is_llada_code(model) else _decoder_layers
    return layers(model, *args)


CACHED_LAYERS = {"modernbert": _modernbert_layers, "bert": _bert_layers, "a2d-qwen": _decoder_layers,
                 "dream": _decoder_layers, "llada": _llada_layers}


def unsupported_reason(family, config) -> str | None:
    """Why `family` / `config` gets no cache graph, or None when it does."""
    if family.name not in CACHED_LAYERS:
        return (f"the K/V-cache graph is written for {', '.join(CACHED_LAYERS)} only, "
                f"not {family.name}")
    kind = getattr(config, "position_embedding_type", "absolute")
    if family.name == "bert" and kind not in ("absolute", "relative_key"):
        return f"the K/V-cache graph does not handle BERT position_embedding_type {kind!r}"
    if family.name == "llada" and getattr(config, "model_type", "") == "llada":
        kind = getattr(config, "block_type", "llama")
        if kind != "llama" or not getattr(config, "rope", True) or getattr(config, "block_group_size", 1) != 1:
            return ("the K/V-cache graph handles LLaDA's llama blocks with rotary positions, ungrouped, only "
                    f"(block_type {kind!r}, rope {getattr(config, 'rope', None)}, "
                    f"block_group_size {getattr(config, 'block_group_size', None)})")
    return None


def cache_shape(config) -> tuple[int, int, int]:
    """(layers N, key/value heads g, head dim d) of the kept keys and values; LLaDA names them
    n_layers, n_kv_heads (None: one per query head, or one in all with multi_query_attention), d_model."""
    layers = _field(config, "num_hidden_layers", "n_layers")
    heads = _field(config, "num_attention_heads", "n_heads")
    kv_heads = _field(config, "num_key_value_heads", "n_kv_heads")
    if kv_heads is None:
        kv_heads = 1 if getattr(config, "multi_query_attention", False) else heads
    dim = getattr(config, "head_dim", None) or _field(config, "hidden_size", "d_model") // heads
    return layers, kv_heads, dim


def _field(config, name: str, llada_name: str):
    """A config field under its transformers name, else under LLaDA's (None if neither is set)."""
    value = getattr(config, name, None)
    return value if value is not None else getattr(config, llada_name, None)


class CachedStep(torch.nn.Module):
    """The graph's computation in PyTorch: the rows' layers, the LM head at the gathered rows, statistics."""

    def __init__(self, model, family, is_suppressed: Tensor, top_k: int):
        super().__init__()
        self.model, self.family, self.top_k = model, family, top_k
        self.layers = CACHED_LAYERS[family.name]
        self.register_buffer("is_suppressed", is_suppressed, persistent=False)

    def forward(self, input_ids, rows, attention_mask, gather, *past):
        """past: N layers' keys then N layers' values, (B, g, P, d) each. Returns the statistics and
        logits at the gathered rows, then the rows' keys and values per layer (B, h, Q, d)."""
        layers = len(past) // 2
        hidden, keys, values = self.layers(self.model, input_ids, rows, list(past[:layers]), list(past[layers:]),
                                           attention_mask, with_spare_row(gather))  # (B, K + 1, H)
        logits = self.family.head(self.model, hidden[:, :-1])  # (B, K, Vg): the gathered rows'
        return (*confidence_statistics(logits, self.is_suppressed, self.top_k), *keys, *values)


def hidden_at(model, family, input_ids: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
    """model.onnx's encoder for the families written here: the final hidden states (B, K, H) at
    `positions` (B, K) of canvases input_ids (B, L), every layer over every row but the last, which
    runs at `positions` only (gathered_last); nothing kept, rows 0..L-1. The values of the model's
    own forward gathered at `positions` (up to float32 rounding), for most of one layer's matmuls less."""
    batch, length = input_ids.shape
    rows = torch.arange(length, device=input_ids.device)[None].expand(batch, -1)  # (B, L)
    nothing = [None] * cache_shape(model.config)[0]
    hidden, _, _ = CACHED_LAYERS[family.name](model, input_ids, rows, nothing, nothing, attention_mask,
                                              with_spare_row(positions))  # (B, K + 1, H)
    return hidden[:, :-1]


def with_spare_row(gather: Tensor) -> Tensor:
    """gather (B, K) and a copy of its first column: (B, K + 1). The last layer runs at one row more than
    is read, so its attention products never have a single query row: onnxruntime multiplies one row by
    another kernel (a matrix-vector product) than several, which rounds differently, and a canvas read
    at one position would get other bits in a call of its own than batched with canvases read at more
    (tie_lite's batching promises the same bits). One row of the last layer costs little; the LM head
    runs at the K rows read."""
    return torch.cat([gather, gather[:, :1]], dim=1)


def dummy_inputs(config, max_length: int, length: int = 24, count: int = 8) -> tuple[Tensor, ...]:
    """Tracing inputs: Q < L rows so the two axes stay distinct, L within the model's max_length positions."""
    length = min(length, max_length)
    count = min(count, length - 1)
    layers, heads, dim = cache_shape(config)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randperm(length, generator=generator)[:count].sort().values[None]  # (1, Q)
    input_ids = torch.randint(0, config.vocab_size, (1, count), generator=generator)
    past = torch.randn(2 * layers, 1, heads, length, dim, generator=generator).unbind()  # keys, then values
    gather = torch.arange(0, count, 2)[None]  # (1, K)
    return (input_ids, rows, torch.ones(1, length, dtype=torch.long), gather, *past)


def export_cache_graph(model, out_dir: Path, family, is_suppressed: Tensor, top_k: int,
                       opset: int | None) -> Path:
    """Write out_dir/cache.onnx for `model` (a loaded transformers masked LM); a graph over
    protobuf's 2 GB keeps its weights beside it in cache.onnx.data (one file)."""
    import tempfile

    import onnx

    path = out_dir / CACHE_GRAPH
    step = CachedStep(model, family, is_suppressed, top_k).eval()
    layers = cache_shape(model.config)[0]
    past, fresh = past_names(layers), fresh_names(layers)
    inputs = dummy_inputs(model.config, family.max_length(model.config))
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:  # over 2 GB the tracer writes a file per weight
        traced = Path(tmp) / CACHE_GRAPH
        with torch.no_grad(), _onnx_compatible_ops():
            torch.onnx.export(step, inputs, str(traced), input_names=[*CACHE_INPUTS, *past],
                              output_names=[*CACHE_OUTPUTS, *fresh], dynamic_axes=_dynamic_axes(past, fresh),
                              opset_version=opset or 17, dynamo=False, do_constant_folding=True)
        graph_model = onnx.load(str(traced))  # every weight in memory, wherever the tracer put it
    _tie_shared_weights(graph_model.graph)
    _save_graph(graph_model, path)
    return path


def _save_graph(graph_model, path: Path) -> None:
    """Save a loaded graph at `path`: whole, or with its weights in path.data when they leave too
    little room under protobuf's limit (export.too_large_for_one_file)."""
    import onnx

    from . import save_weights_beside, too_large_for_one_file

    path.with_name(path.name + ".data").unlink(missing_ok=True)  # an earlier export's
    if too_large_for_one_file(graph_model):
        save_weights_beside(graph_model, path)
    else:
        onnx.save(graph_model, str(path))


@contextlib.contextmanager
def _onnx_compatible_ops():
    """Trace with the torch ops optimum replaces while it traces model.onnx (torch.rms_norm, which
    nn.RMSNorm calls and opset 17 lacks, tril, ...) replaced as it replaces them."""
    from optimum.exporters.onnx.model_patcher import UNSUPPORTED_OPS_PATCHING_SPEC

    def wrapped(spec, op):
        return op if spec.op_wrapper is None else spec.op_wrapper(op)

    originals = [(spec, spec.orig_op or getattr(spec.o, spec.name)) for spec in UNSUPPORTED_OPS_PATCHING_SPEC]
    for spec, _ in originals:
        setattr(spec.o, spec.name, wrapped(spec, spec.custom_op))
    try:
        yield
    finally:
        for spec, original in originals:
            setattr(spec.o, spec.name, wrapped(spec, original))


def _dynamic_axes(past: list, fresh: list) -> dict:
    """cache.onnx's named axes: batch, rows (Q), length (L), kept (P), gathered (K). Named apart, as
    export/shapes.py's shape inference takes two axes of one name to be equal (a full pass has P = 0)."""
    input_ids, rows, attention_mask, gather = CACHE_INPUTS
    return {input_ids: {0: "batch", 1: "rows"}, rows: {0: "batch", 1: "rows"},
            attention_mask: {0: "batch", 1: "length"}, gather: {0: "batch", 1: "gathered"},
            **{name: {0: "batch", 1: "gathered"} for name in CACHE_OUTPUTS},
            **{name: {0: "batch", 2: "kept"} for name in past}, **{name: {0: "batch", 2: "rows"} for name in fresh}}


def _tie_shared_weights(graph) -> None:
    """Store a tied embedding / LM-head matrix once, as optimum does for model.onnx: the tracer
    writes it twice, the Gather's table and the head MatMul's transposed copy; the MatMul then
    reads Transpose(table) instead (the Gather keeps the table: quantization handles that better).
    `graph`: a loaded graph's GraphProto, its weights in memory; changed in place."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in graph.initializer}
    tables = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in initializers}
    for name in sorted(tables):
        table = numpy_helper.to_array(initializers[name])
        copies = [t for t in graph.initializer if table.ndim == 2 and tuple(t.dims) == table.shape[::-1]
                  and np.array_equal(numpy_helper.to_array(t), table.T)]
        for copy in copies:
            transposed = f"{name}_transposed"
            for node in graph.node:
                for i, value in enumerate(node.input):
                    if value == copy.name:
                        node.input[i] = transposed
            graph.node.insert(0, helper.make_node("Transpose", [name], [transposed], name=f"Transpose_{name}"))
            graph.initializer.remove(copy)
