"""Model families: how to run a masked diffusion LM up to its hidden states and LM head, and its conventions.

Each family says how to load a checkpoint, how to get the last hidden states with
bidirectional attention, how to apply the LM head to hidden states gathered at a
few positions, whether token i is read from the logits at i (shift 0) or at i - 1
(shift 1, Dream-style), and where its mask token comes from. Adding a family means
adding one `Family` here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

Tensor = torch.Tensor


def _encoder_hidden(base: str) -> Callable:
    """hidden() for encoder masked LMs: the base module's last_hidden_state."""
    def hidden(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return getattr(model, base)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden


def bidirectional_mask(attention_mask: Tensor) -> Tensor:
    """A (B, 1, L, L) boolean mask letting every position attend to every unpadded position.

    Handed to a causal-LM class (Qwen, Llama) in place of its causal mask: transformers
    uses a 4D mask as given, so the decoder runs as the bidirectional MDLM it was trained as.
    """
    keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    return keep.expand(-1, 1, attention_mask.shape[1], -1)


def _decoder_hidden(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    return model.model(input_ids=input_ids, attention_mask=bidirectional_mask(attention_mask)).last_hidden_state


def _full_logits(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def _decoder_full_logits(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    return model(input_ids=input_ids, attention_mask=bidirectional_mask(attention_mask)).logits


def _load_masked_lm(source: str, trust_remote_code: bool):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(source, trust_remote_code=trust_remote_code, dtype=torch.float32)


def _load_causal_lm(source: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, trust_remote_code=trust_remote_code, dtype=torch.float32,
                                                attn_implementation="sdpa")


def _load_a2d(source: str, trust_remote_code: bool):
    """A2D checkpoints (dllm): Qwen weights under model_type a2d-qwen2/3, a type only dllm registers.
    Loaded with transformers' own Qwen classes; the bidirectional mask comes from `hidden`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    config = read_config(source)
    classes = {"a2d-qwen2": (Qwen2Config, Qwen2ForCausalLM), "a2d-qwen3": (Qwen3Config, Qwen3ForCausalLM)}
    config_class, model_class = classes[config.pop("model_type")]
    return model_class.from_pretrained(source, config=config_class(**config), dtype=torch.float32,
                                       attn_implementation="sdpa")


def is_llada_code(model) -> bool:
    """True for LLaDA's own modeling code (LLaDAModelLM: model.model.transformer holds wte, blocks, ln_f)."""
    return hasattr(getattr(model, "model", None), "transformer")


def _llada_hidden(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """LLaDA's code attends bidirectionally by itself and lists the final, normed hidden states last;
    a Llama-class stand-in gets the bidirectional mask."""
    if not is_llada_code(model):
        return _decoder_hidden(model, input_ids, attention_mask)
    out = model.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.hidden_states[-1]


def _llada_head(model, hidden: Tensor) -> Tensor:
    """LLaDA's output layer: the tied embedding or ff_out, scaled by 1/sqrt(d_model) when scale_logits."""
    if not is_llada_code(model):
        return _lm_head(model, hidden)
    config, transformer = model.config, model.model.transformer
    if getattr(config, "weight_tying", False):
        logits = torch.nn.functional.linear(hidden, transformer.wte.weight)
    else:
        logits = transformer.ff_out(hidden)
    if getattr(config, "scale_logits", False):
        logits = logits * (1.0 / config.d_model ** 0.5)
    return logits


def _llada_full_logits(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    if not is_llada_code(model):
        return _decoder_full_logits(model, input_ids, attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def _load_llada(source: str, trust_remote_code: bool):
    """LLaDA's own code (model_type llada, needs trust_remote_code), or a Llama checkpoint given
    --family llada (transformers' Llama classes, run bidirectionally)."""
    if read_config(source).get("model_type") == "llada":
        from transformers import AutoModel

        return AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code, dtype=torch.float32)
    return _load_causal_lm(source, trust_remote_code)


@dataclass(frozen=True)
class Family:
    name: str                      # written to the manifest as "family"
    model_types: tuple[str, ...]   # config.json model_type values this family covers
    hidden: Callable               # (model, input_ids, attention_mask) -> last hidden states (B, L, H)
    head: Callable                 # (model, hidden (B, K, H)) -> logits (B, K, Vg)
    full_logits: Callable = _full_logits  # (model, input_ids, attention_mask) -> (B, L, Vg): the reference
    load: Callable = _load_masked_lm      # (source, trust_remote_code) -> model
    logits_shift: int = 0          # 1: token i is predicted by the logits at position i - 1
    position_offset: int = 0       # position ids start past this many slots (RoBERTa: pad_token_id + 1)
    mask_token: Optional[str] = None  # the mask token's text, when the tokenizer does not name one
    stop_tokens: tuple = ()        # texts of end-of-turn tokens that also end generation
    optimum_task: str = "fill-mask"  # the task optimum knows the architecture under (its config is replaced)
    also_takes: tuple = ()         # model_type values beyond model_types that --family NAME exports (same layout)

    def max_length(self, config) -> int:
        """Longest canvas the model accepts (LLaDA's config calls it max_sequence_length)."""
        offset = (config.pad_token_id + 1) if self.position_offset else 0
        longest = getattr(config, "max_position_embeddings", None) or config.max_sequence_length
        return int(longest) - offset

    @staticmethod
    def graph_vocab(config) -> int:
        """Columns of the LM head: LLaDA pads its embedding past vocab_size to embedding_size."""
        return int(getattr(config, "embedding_size", None) or config.vocab_size)


def _modernbert_head(model, hidden: Tensor) -> Tensor:
    return model.decoder(model.head(hidden))


def _lm_head(model, hidden: Tensor) -> Tensor:
    return model.lm_head(hidden)


FAMILIES = (
    Family("modernbert", ("modernbert",), _encoder_hidden("model"), _modernbert_head),
    Family("bert", ("bert",), _encoder_hidden("bert"), lambda m, h: m.cls(h)),
    Family("roberta", ("roberta", "xlm-roberta"), _encoder_hidden("roberta"), lambda m, h: m.lm_head(h),
           position_offset=1),
    Family("a2d-qwen", ("a2d-qwen2", "a2d-qwen3"), _decoder_hidden, _lm_head, _decoder_full_logits, _load_a2d,
           mask_token="<|mask|>", stop_tokens=("<|im_end|>",), optimum_task="feature-extraction"),
    Family("dream", ("Dream", "dream"), _decoder_hidden, _lm_head, _decoder_full_logits, _load_causal_lm,
           logits_shift=1, stop_tokens=("<|im_end|>",), optimum_task="feature-extraction",
           also_takes=("qwen2", "qwen3")),
    Family("llada", ("llada",), _llada_hidden, _llada_head, _llada_full_logits, _load_llada,
           mask_token="<|mdm_mask|>", stop_tokens=("<|eot_id|>", "<|endoftext|>"),
           optimum_task="feature-extraction", also_takes=("llama",)),
)
REFUSED = {  # model types export knows and refuses, with the reason
    "bd3lm": "BD3LM needs a block-causal attention mask between blocks; tie-lite's graph is fully "
             "bidirectional, so its predictions would not be the model's",
}


def _local_path(source: str) -> bool:
    """Whether a source that does not exist is meant as a local path, not a Hub id ("org/name": one "/",
    no backslash, not absolute, no leading "." or "~")."""
    return (Path(source).is_absolute() or source.startswith((".", "~")) or "\\" in source
            or source.count("/") > 1 or bool(Path(source).drive))


def read_config(source) -> dict:
    """config.json of a local folder, or of a Hub repository (through huggingface_hub)."""
    folder = Path(str(source))
    if folder.exists() or _local_path(str(source)):
        if not folder.is_dir():
            raise ValueError("not a folder" if folder.exists() else "no such folder")
        if not (folder / "config.json").is_file():
            raise ValueError("the folder holds no config.json: not a transformers checkpoint")
    path = folder / "config.json"
    if not path.is_file():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(str(source), "config.json"))
    return json.loads(path.read_text())


def family_for(model_type: str, name: Optional[str] = None) -> Family:
    """The family named `name`, else the one covering `model_type`; ValueError listing the supported ones."""
    if model_type in REFUSED:
        raise ValueError(f"model_type {model_type!r} is not supported: {REFUSED[model_type]}")
    for family in FAMILIES:
        if family.name == name and model_type not in (*family.model_types, *family.also_takes):
            taken = ", ".join((*family.model_types, *family.also_takes))
            raise ValueError(f"family {name!r} does not export model_type {model_type!r} (it takes {taken})")
        if family.name == name or (name is None and model_type in family.model_types):
            return family
    supported = ", ".join(t for f in FAMILIES for t in f.model_types)
    what = f"family {name!r}" if name else f"model_type {model_type!r}"
    raise ValueError(f"{what} is not supported for export (supported: {supported}; --family picks one of "
                     f"{', '.join(f.name for f in FAMILIES)})")
