"""Tiny random-weight masked LMs with their own tokenizers, saved as Hugging Face folders."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM,
                          PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM)

SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "[EOS]"]
WORDS = ("the a is of and to in what how many plus minus times equals answer yes no one two three four "
         "five six seven eight nine ten cat dog sun moon red blue big small ? . , :").split()


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over a small fixed vocabulary (ids 0-3 are specials)."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   mask_token="[MASK]", eos_token="[EOS]")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: a different vocabulary from word_tokenizer's."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789 ?.,:+-*=")
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   mask_token="[MASK]", eos_token="[EOS]")


def tiny_model(arch: str, vocab_size: int, seed: int, max_length: int = 128, extra_columns: int = 0,
               layers: int = 2, **config):
    """A random masked LM; extra_columns widens the LM head past the tokenizer (never sampled);
    config: more config fields (position_embedding_type, local_attention, ...)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size + extra_columns, hidden_size=32, num_hidden_layers=layers,
                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=max_length,
                  pad_token_id=0, initializer_range=0.3, **config)  # peakier than default: real confidence spread
    if arch == "bert":
        return BertForMaskedLM(BertConfig(**common)).eval()
    if arch == "modernbert":
        common.setdefault("global_attn_every_n_layers", 1)
        config = ModernBertConfig(**common, reference_compile=False, bos_token_id=3, eos_token_id=3,
                                  cls_token_id=3, sep_token_id=3)
        return ModernBertForMaskedLM(config).eval()
    if arch == "roberta":  # position ids start at pad_token_id + 1, so pad_token_id + 1 more embeddings
        return RobertaForMaskedLM(RobertaConfig(**{**common, "max_position_embeddings": max_length + 1})).eval()
    raise ValueError(f"unknown arch {arch!r}")


def qwen_tokenizer(with_mask_token: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Qwen's special tokens; the mask is <|mask|>, named or not."""
    specials = ["<|endoftext|>", "<|im_end|>", "<|mask|>", "[UNK]"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    named = {"mask_token": "<|mask|>"} if with_mask_token else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="[UNK]", additional_special_tokens=specials[:3], **named)


def save_qwen_family(folder: Path, family: str, seed: int = 0, extra_columns: int = 0, **config) -> Path:
    """A tiny Qwen checkpoint with a family's conventions: "a2d-qwen3" (model_type rewritten, as dllm
    saves it) or "dream" (plain Qwen2 weights, a graph vocabulary wider than the tokenizer);
    config: config fields that replace the defaults (num_hidden_layers, num_key_value_heads, ...)."""
    import json

    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tok = qwen_tokenizer(with_mask_token=family == "dream")
    common = dict(vocab_size=len(tok) + extra_columns, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128, initializer_range=0.3,
                  tie_word_embeddings=False)
    common.update(config)
    if family == "a2d-qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**{"head_dim": 16, **common}))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    if family == "a2d-qwen3":
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "a2d-qwen3"
        (folder / "config.json").write_text(json.dumps(config))
    return folder


LLADA_SPECIALS = ["<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>", "[UNK]"]


def llada_tokenizer() -> PreTrainedTokenizerFast:
    """LLaDA's special tokens on a word vocabulary: EOS <|endoftext|>, end of turn <|eot_id|>, and the mask
    <|mdm_mask|>, which (as in LLaDA's tokenizer) the tokenizer does not name as its mask token."""
    vocab = {tok: i for i, tok in enumerate(LLADA_SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="[UNK]", additional_special_tokens=LLADA_SPECIALS[:3])


def save_llada_like(folder: Path, seed: int = 0, **config) -> Path:
    """A tiny Llama checkpoint with LLaDA's conventions (exported with family="llada"); config: config
    fields that replace the defaults."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = llada_tokenizer()
    fields = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                  initializer_range=0.3, tie_word_embeddings=False)
    LlamaForCausalLM(LlamaConfig(**{**fields, **config})).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_llada_code(folder: Path, seed: int = 0, extra_columns: int = 8, **config) -> Path:
    """A tiny checkpoint in LLaDA's own format: model_type llada, custom code (tests/llada_standin, with
    LLaDA's module layout) named by config.json's auto_map, tied embedding, scaled logits, and an
    embedding wider than vocab_size as LLaDA pads it; config: more LLaDAConfig fields (n_layers,
    n_heads, n_kv_heads, ...)."""
    import json
    import shutil

    from llada_standin.configuration_llada import LLaDAConfig
    from llada_standin.modeling_llada import LLaDAModelLM

    torch.manual_seed(seed)
    tok = llada_tokenizer()
    fields = dict(vocab_size=len(tok), embedding_size=len(tok) + extra_columns, weight_tying=True,
                  scale_logits=True, mask_token_id=tok.convert_tokens_to_ids("<|mdm_mask|>"))
    LLaDAModelLM(LLaDAConfig(**{**fields, **config})).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    for name in ("configuration_llada.py", "modeling_llada.py"):
        shutil.copy(Path(__file__).parent / "llada_standin" / name, folder / name)
    saved = json.loads((folder / "config.json").read_text())
    saved["auto_map"] = {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"}
    (folder / "config.json").write_text(json.dumps(saved))
    return folder


def save_tiny(folder: Path, arch: str, tokenizer: str = "word", seed: int = 0, **kwargs) -> Path:
    """Write a Hugging Face folder (config, safetensors, tokenizer) for a tiny model."""
    tok = word_tokenizer() if tokenizer == "word" else char_tokenizer()
    model = tiny_model(arch, len(tok), seed, **kwargs)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
