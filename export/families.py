"""Model families: how to split a masked LM into encoder and LM head, and its conventions.

Each family says where the encoder and the LM head live inside the transformers
model, and whether token i is read from the logits at i (shift 0) or at i - 1
(shift 1, Dream-style). Adding a family means adding one `Family` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Family:
    name: str                    # written to the manifest as "family"
    model_types: tuple[str, ...]  # config.model_type values this family covers
    encoder: Callable[[torch.nn.Module], torch.nn.Module]  # model -> module giving last_hidden_state
    head: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]  # (model, hidden (B, K, H)) -> logits (B, K, Vg)
    logits_shift: int = 0        # 1: token i is predicted by the logits at position i - 1
    position_offset: int = 0     # position ids start past this many slots (RoBERTa: pad_token_id + 1)

    def max_length(self, config) -> int:
        """Longest canvas the model accepts."""
        offset = (config.pad_token_id + 1) if self.position_offset else 0
        return int(config.max_position_embeddings) - offset


def _modernbert_head(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.decoder(model.head(hidden))


FAMILIES = (
    Family("modernbert", ("modernbert",), lambda m: m.model, _modernbert_head),
    Family("bert", ("bert",), lambda m: m.bert, lambda m, h: m.cls(h)),
    Family("roberta", ("roberta", "xlm-roberta"), lambda m: m.roberta, lambda m, h: m.lm_head(h),
           position_offset=1),
)


def family_for(model_type: str) -> Family:
    """The family that exports `model_type`, or a ValueError listing the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise ValueError(f"model_type {model_type!r} is not supported for export (supported: {supported})")
