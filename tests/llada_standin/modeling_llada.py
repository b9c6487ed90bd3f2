"""Test stand-in for LLaDA's modeling code, with the module layout tie-lite's export relies on.

LLaDAModelLM.model is a LLaDAModel whose `transformer` holds wte, blocks, ln_f and (without
weight tying) ff_out; attention is bidirectional; output_hidden_states lists the final hidden
states after ln_f last; logits are scaled by 1/sqrt(d_model) when scale_logits. The blocks
(LLaDALlamaBlock) have the submodule names, rotary methods and grouped-query attention of LLaDA's own,
which export/cache.py's K/V-cache graph reads; their code is written for these tests.
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


class RotaryEmbedding(nn.Module):
    """LLaDA's rotary table and its application, under LLaDA's method names: get_rotary_embedding gives
    (sin, cos) of positions 0..L-1, (1, 1, L, d) each; forward(q, k) rotates both at the key positions."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.dim, self.theta = config.d_model // config.n_heads, config.rope_theta

    def get_rotary_embedding(self, length: int, device: torch.device) -> tuple:
        inv_freq = 1.0 / self.theta ** (torch.arange(0, self.dim, 2, device=device, dtype=torch.float) / self.dim)
        freqs = torch.arange(length, device=device, dtype=torch.float)[:, None] * inv_freq  # (L, d/2)
        positions = torch.cat((freqs, freqs), dim=-1)  # (L, d)
        return positions.sin()[None, None], positions.cos()[None, None]

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.view(*x.shape[:-1], 2, x.shape[-1] // 2).unbind(dim=-2)
        return torch.cat((-x2, x1), dim=-1)

    def apply_rotary_pos_emb(self, pos_sin: torch.Tensor, pos_cos: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (t * pos_cos) + (self.rotate_half(t) * pos_sin)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple:
        sin, cos = self.get_rotary_embedding(k.shape[-2], k.device)
        return self.apply_rotary_pos_emb(sin, cos, q), self.apply_rotary_pos_emb(sin, cos, k)


class LLaDALlamaBlock(nn.Module):
    """LLaDA's llama block: its submodule names, grouped-query attention (n_kv_heads key/value heads,
    each repeated for n_heads / n_kv_heads query heads), SwiGLU as act(ff_proj(x)) * up_proj(x)."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        dim = config.d_model // config.n_heads
        kv_width = (config.n_kv_heads or config.n_heads) * dim
        self.attn_norm, self.ff_norm = nn.RMSNorm(config.d_model), nn.RMSNorm(config.d_model)
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.k_proj = nn.Linear(config.d_model, kv_width, bias=False)
        self.v_proj = nn.Linear(config.d_model, kv_width, bias=False)
        self.attn_out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.ff_proj = nn.Linear(config.d_model, config.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, config.d_model, bias=False)
        self.act = nn.SiLU()
        self.q_norm = self.k_norm = None
        self.rotary_emb = RotaryEmbedding(config)

    def attention(self, q, k, v, attention_bias: Optional[torch.Tensor]) -> torch.Tensor:
        batch, length, width = q.shape
        heads = self.config.n_heads
        q, k, v = (x.view(batch, length, -1, width // heads).transpose(1, 2) for x in (q, k, v))  # (B, n, L, d)
        q, k = self.rotary_emb(q, k)
        k, v = (x.repeat_interleave(heads // k.shape[1], dim=1) for x in (k, v))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_bias, is_causal=False)
        return self.attn_out(att.transpose(1, 2).reshape(batch, length, width))

    def forward(self, x: torch.Tensor, attention_bias: Optional[torch.Tensor]) -> torch.Tensor:
        x_normed = self.attn_norm(x)
        x = x + self.attention(self.q_proj(x_normed), self.k_proj(x_normed), self.v_proj(x_normed), attention_bias)
        x_normed = self.ff_norm(x)
        return x + self.ff_out(self.act(self.ff_proj(x_normed)) * self.up_proj(x_normed))


class LLaDAModel(nn.Module):
    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        width = config.embedding_size or config.vocab_size
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(width, config.d_model),
            "blocks": nn.ModuleList(LLaDALlamaBlock(config) for _ in range(config.n_layers)),
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
