"""Measures nothing: builds the random-weight masked LMs (any size, exported through export/) other benchmarks time.

    python bench/random_models.py OUT [--hidden 768 --layers 22 --vocab 50368 --max-length 512] [--kv-cache]

The default is the size bench/vs_pytorch.py builds (ModernBERT-base's hidden size, layers and
vocabulary; intermediate size 2 x hidden; every layer global attention).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def build_random(folder: Path, arch: str, hidden: int, layers: int, vocab: int, max_length: int,
                 seed: int = 0) -> Path:
    """Save a random `arch` (modernbert or bert) masked LM with a word-level tokenizer of `vocab` ids."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM,
                              PreTrainedTokenizerFast)

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=max(1, hidden // 64), intermediate_size=hidden * 2,
                  max_position_embeddings=max_length, pad_token_id=0)
    if arch == "modernbert":
        model = ModernBertForMaskedLM(ModernBertConfig(**common, reference_compile=False,
                                                       global_attn_every_n_layers=1, bos_token_id=3,
                                                       eos_token_id=3, cls_token_id=3, sep_token_id=3))
    else:
        model = BertForMaskedLM(BertConfig(**common))
    model.eval().save_pretrained(folder)
    specials = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "[EOS]": 3}
    words = {f"w{i}": i for i in range(len(specials), vocab)}
    backend = Tokenizer(models.WordLevel({**specials, **words}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                            eos_token="[EOS]").save_pretrained(folder)
    return folder


def export_random(folder: Path, arch: str, hidden: int, layers: int, vocab: int, max_length: int,
                  seed: int = 0, decode_defaults: dict | None = None, **export_options) -> Path:
    """build_random, then export it to folder/onnx (export_model's options); returns the onnx folder."""
    from export import export_model

    hf = build_random(folder / "hf", arch, hidden, layers, vocab, max_length, seed)
    export_model(hf, folder / "onnx", name=f"{arch}-{hidden}x{layers}", decode_defaults=decode_defaults,
                 log=lambda m: None, **export_options)
    return folder / "onnx"


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description="Write a random masked LM to OUT/hf and its export to OUT/onnx.")
    p.add_argument("out", type=Path)
    p.add_argument("--arch", choices=("modernbert", "bert"), default="modernbert")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--vocab", type=int, default=50368)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--kv-cache", action="store_true", help="also write cache.onnx")
    args = p.parse_args()
    onnx_dir = export_random(args.out, args.arch, args.hidden, args.layers, args.vocab, args.max_length,
                             kv_cache=args.kv_cache)
    print(onnx_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
