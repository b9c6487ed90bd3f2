"""Test stand-in for LLaDA's modeling code, with the module layout tie-lite's export relies on.

LLaDAModelLM.model is a LLaDAModel whose `transformer` holds wte, blocks, ln_f and (without
weight tying) ff_out; attention is bidirectional; output_hidden_states lists the final hidden
states after ln_f last; logits are scaled by 1/sqrt(d_model) when scale_logits. The blocks
are a small pre-norm RoPE / SwiGLU transformer written for these tests.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_llada import LLaDAConfig


@dataclass
class LLaDAOutput(ModelOutput):
    logits: torch.Tensor = None
    hidden_states: Optional[tuple] = None


def rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding over the last axis of x (B, heads, L, d)."""
    d, length = x.shape[-1], x.shape[-2]
    freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freqs  # (L, d/2)
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)  # (L, d)
    half = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    return x * cos + half * sin


class Block(nn.Module):
    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.heads, self.theta = config.n_heads, config.rope_theta
        self.attn_norm = nn.RMSNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.attn_out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.ff_norm = nn.RMSNorm(config.d_model)
        self.gate_up = nn.Linear(config.d_model, 2 * config.mlp_hidden_size, bias=False)
        self.down = nn.Linear(config.mlp_hidden_size, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, attention_bias: Optional[torch.Tensor]) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        att = F.scaled_dot_product_attention(rotate(q, self.theta), rotate(k, self.theta), v,
                                             attn_mask=attention_bias, is_causal=False)
        x = x + self.attn_out(att.transpose(1, 2).reshape(batch, length, width))
        gate, up = self.gate_up(self.ff_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class LLaDAModel(nn.Module):
    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        width = config.embedding_size or config.vocab_size
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(width, config.d_model),
            "blocks": nn.ModuleList(Block(config) for _ in range(config.n_layers)),
            "ln_f": nn.RMSNorm(config.d_model)})
        if not config.weight_tying:
            self.transformer["ff_out"] = nn.Linear(config.d_model, width, bias=False)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **unused):
        x = self.transformer.wte(input_ids)
        bias = None
        if attention_mask is not None:
            bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        hidden = []
        for block in self.transformer.blocks:
            hidden.append(x)
            x = block(x, bias)
        x = self.transformer.ln_f(x)
        hidden.append(x)
        if self.config.weight_tying:
            logits = F.linear(x, self.transformer.wte.weight)
        else:
            logits = self.transformer.ff_out(x)
        if self.config.scale_logits:
            logits = logits * (1 / math.sqrt(self.config.d_model))
        return LLaDAOutput(logits=logits, hidden_states=tuple(hidden) if output_hidden_states else None)


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        for p in self.parameters():
            nn.init.normal_(p, std=0.3)

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, **unused):
        return self.model(input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
