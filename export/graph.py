"""The exported graph: confidence statistics at gathered positions, through optimum.

The graph tie-lite runs is not the stock fill-mask graph (full logits over every
position). It takes

    input_ids       (B, L) int64
    attention_mask  (B, L) int64
    positions       (B, K) int64   positions whose predictions are wanted

runs the last transformer layer's attention and MLP, and the LM head, at
`positions` only (every other layer, and the last one's query, key and value
projections, at every position), and returns per gathered position

    top_ids    (B, K, k) int64    the k most probable token ids, most probable first
    top_probs  (B, K, k) float32  their softmax probabilities
    entropy    (B, K)    float32  entropy of the softmax, in nats
    logits     (B, K, V) float32  raw logits, for exact temperature sampling

Columns the tokenizer cannot decode (graph vocabulary wider than the
tokenizer's) and the mask token itself (an MDLM never predicts [MASK], as in
MDLM's SUBS parameterisation) are suppressed: their logits are set to the
float32 minimum before the softmax, so they get probability 0 everywhere.

The layers are those export/cache.py writes per family (ModernBERT, BERT, the
Llama-layout decoders, LLaDA); families it does not write (RoBERTa, some BERT
and LLaDA variants) run the model's own forward over every position and gather
the hidden states after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from optimum.exporters.onnx import onnx_export_from_model
from optimum.exporters.onnx.config import TextEncoderOnnxConfig
from optimum.exporters.onnx.model_patcher import ModelPatcher
from optimum.utils import DummyInputGenerator, DummyTextInputGenerator, NormalizedTextConfig

from tie_lite import GRAPH_INPUTS, GRAPH_OUTPUTS

from . import MODEL_GRAPH
from .families import Family

_TOKEN_AXES = {0: "batch_size", 1: "sequence_length"}   # of input_ids and attention_mask (B, L)
_GATHERED_AXES = {0: "batch_size", 1: "num_positions"}  # of positions (B, K) and of every output (B, K, ...)


def suppressed_columns(graph_vocab: int, vocab_size: int, suppressed_ids: list[int]) -> torch.Tensor:
    """Boolean (Vg,) selector of the logit columns that never get probability."""
    is_suppressed = torch.zeros(graph_vocab, dtype=torch.bool)
    is_suppressed[vocab_size:] = True
    is_suppressed[suppressed_ids] = True
    return is_suppressed


class Statistics(NamedTuple):
    """The graph's outputs, in tie_lite.GRAPH_OUTPUTS order (and cache.onnx's first ones)."""

    top_ids: torch.Tensor    # (B, K, k) int64, most probable first
    top_probs: torch.Tensor  # (B, K, k) float32
    entropy: torch.Tensor    # (B, K) float32, nats
    logits: torch.Tensor     # (B, K, Vg) float32, suppressed columns at the float32 minimum

    def named(self) -> dict:
        """{graph output name: tensor}."""
        return dict(zip(GRAPH_OUTPUTS, self))


def confidence_statistics(logits: torch.Tensor, is_suppressed: torch.Tensor, top_k: int) -> Statistics:
    """Statistics the runtime needs from logits (B, K, Vg); the graph's tail and the reference's."""
    logits = logits.float().masked_fill(is_suppressed, torch.finfo(torch.float32).min)
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, K, Vg)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(-1)  # (B, K)
    top_probs, top_ids = torch.topk(probs, top_k, dim=-1)  # (B, K, k)
    return Statistics(top_ids, top_probs, entropy, logits)


class _PositionsGenerator(DummyInputGenerator):
    """Dummy `positions` (B, K) for tracing; K differs from L so the two axes stay distinct."""

    SUPPORTED_INPUT_NAMES = GRAPH_INPUTS[2:]  # positions

    def __init__(self, task, normalized_config, batch_size=2, sequence_length=16, **kwargs):
        self.batch_size = batch_size
        self.sequence_length = sequence_length

    def generate(self, input_name, framework="pt", int_dtype="int64", float_dtype="fp32"):
        shape = [self.batch_size, max(1, self.sequence_length // 3)]
        return self.random_int_tensor(shape, max_value=self.sequence_length, framework=framework, dtype=int_dtype)


class _StatsPatcher(ModelPatcher):
    """Replaces the masked LM's forward by layers (the last at the gathered positions; or the model's own
    encoder, then a gather) -> LM head -> statistics."""

    def __init__(self, config: "StatsOnnxConfig", model, model_kwargs=None):
        from .cache import hidden_at, unsupported_reason  # cache.py imports this module

        super().__init__(config, model, model_kwargs)
        family, is_suppressed, top_k = config.family, config.is_suppressed, config.top_k
        written_out = unsupported_reason(family, model.config) is None  # its layers are in export/cache.py

        def patched_forward(input_ids, attention_mask, positions):  # called with GRAPH_INPUTS as keywords
            if written_out:  # the last layer at the gathered positions only
                gathered = hidden_at(model, family, input_ids, attention_mask, positions)  # (B, K, H)
            else:
                hidden = family.hidden(model, input_ids, attention_mask)  # (B, L, H)
                index = positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (B, K, H)
                gathered = torch.gather(hidden, 1, index)
            logits = family.head(model, gathered)  # (B, K, Vg)
            return confidence_statistics(logits, is_suppressed, top_k).named()

        self.patched_forward = patched_forward


class StatsOnnxConfig(TextEncoderOnnxConfig):
    """optimum OnnxConfig for the statistics graph; inputs and outputs as in the module docstring."""

    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyTextInputGenerator, _PositionsGenerator)
    _MODEL_PATCHER = _StatsPatcher
    DEFAULT_ONNX_OPSET = 14

    def __init__(self, config, family: Family, is_suppressed: torch.Tensor, top_k: int):
        super().__init__(config, task=family.optimum_task)
        self.family = family
        self.is_suppressed = is_suppressed
        self.top_k = top_k

    @property
    def inputs(self):
        input_ids, attention_mask, positions = GRAPH_INPUTS
        return {input_ids: dict(_TOKEN_AXES), attention_mask: dict(_TOKEN_AXES), positions: dict(_GATHERED_AXES)}

    @property
    def outputs(self):
        return {name: dict(_GATHERED_AXES) for name in GRAPH_OUTPUTS}

    def ordered_inputs(self, model):
        return self.inputs


def export_graph(model, out_dir: Path, family: Family, is_suppressed: torch.Tensor, top_k: int,
                 opset: int | None) -> Path:
    """Export `model` (a loaded transformers masked LM) to out_dir/model.onnx with optimum."""
    onnx_config = StatsOnnxConfig(model.config, family, is_suppressed, top_k)
    onnx_export_from_model(
        model,
        out_dir,
        opset=opset,
        task=family.optimum_task,
        custom_onnx_configs={Path(MODEL_GRAPH).stem: onnx_config},  # optimum writes NAME.onnx
        do_validation=False,  # export/validate.py checks top-1 ids and probabilities itself
    )
    return out_dir / MODEL_GRAPH
