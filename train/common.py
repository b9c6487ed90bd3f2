"""Shared helpers for train_mdlm.py and quick_eval.py: tokenizers and the sequence layout."""

import json
import os
import string

import numpy as np

import task

SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "[EOS]"]  # ids 0..3 in the "char" and "bpe" tokenizers
# "bpe-words" takes the special tokens of the dLLM project's A2D (Qwen) checkpoints, so a model trained
# with it exports as those do (family a2d-qwen: mask "<|mask|>", end of turn "<|im_end|>").
QWEN_SPECIALS = ["<|endoftext|>", "<|mask|>", "<|im_end|>"]  # ids 0..2: EOS (= pad), mask, end of turn


def _bpe_texts(train_examples):
    texts = []
    for e in train_examples:
        texts += [task.PROMPT_PREFIX + e["prompt"] + task.PROMPT_SUFFIX, e["reasoning"], e["answer"]]
    return texts + [task.MARKER] * 1000


def build_tokenizer(kind: str, train_examples=None, bpe_vocab: int = 300):
    """T1 = "char": one token per character (printable ASCII + newline).
    T2 = "bpe": byte-level BPE (digits always split) trained on the train split.
    T3 = "bpe-words": byte-level BPE whose merges stay inside runs of letters: every digit, operator,
    space and newline is a token of its own, so an operator in the prompt is the same token as in the
    reasoning (under "bpe", " -" in the prompt is one token and "-" in the reasoning another).
    Qwen-style special tokens (QWEN_SPECIALS)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "char":
        chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
        vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
        tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tk.decoder = decoders.Fuse()
    elif kind == "bpe":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=bpe_vocab, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tk.train_from_iterator(_bpe_texts(train_examples), trainer)
    elif kind == "bpe-words":
        return _bpe_words_tokenizer(train_examples, bpe_vocab)
    else:
        raise ValueError(kind)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, mask_token="[MASK]", eos_token="[EOS]",
                                  pad_token="[PAD]", unk_token="[UNK]",
                                  clean_up_tokenization_spaces=False)
    for i, s in enumerate(SPECIALS):
        assert tok.convert_tokens_to_ids(s) == i, (s, tok.convert_tokens_to_ids(s))
    return tok


def _bpe_words_tokenizer(train_examples, bpe_vocab):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^A-Za-z]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=bpe_vocab, special_tokens=QWEN_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_bpe_texts(train_examples), trainer)
    eos, mask, end_of_turn = QWEN_SPECIALS
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, mask_token=mask, eos_token=eos, pad_token=eos,
                                  additional_special_tokens=[end_of_turn], clean_up_tokenization_spaces=False)
    for i, s in enumerate(QWEN_SPECIALS):
        assert tok.convert_tokens_to_ids(s) == i, (s, tok.convert_tokens_to_ids(s))
    return tok


def tokenizer_kind(tok) -> str:
    """The build_tokenizer kind a loaded tokenizer was built as."""
    if type(tok.backend_tokenizer.model).__name__ != "BPE":
        return "char"
    return "bpe-words" if tok.mask_token == QWEN_SPECIALS[1] else "bpe"


DECODER_TYPES = {"qwen3"}  # causal-LM classes run with a bidirectional mask (saved as a2d-qwen3)


def bidirectional_mask(attention_mask):
    """(B, L) 0/1 -> (B, 1, L, L) bool: every position attends to every unpadded one. transformers'
    decoder classes take a 4D mask as given, so a Qwen model runs as the bidirectional MDLM it is."""
    keep = attention_mask.bool()[:, None, None, :]
    return keep.expand(-1, 1, attention_mask.shape[1], -1)


def forward_logits(model, input_ids, attention_mask=None):
    """(B, L, V) logits of an encoder masked LM, or of a decoder run bidirectionally."""
    if model.config.model_type in DECODER_TYPES:
        import torch
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return model(input_ids=input_ids, attention_mask=bidirectional_mask(attention_mask)).logits
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def load_model(ckpt_dir):
    """A checkpoint written by train_mdlm.py: an encoder masked LM, or an A2D (model_type a2d-qwen3)."""
    with open(os.path.join(ckpt_dir, "config.json")) as f:
        config = json.load(f)
    if config["model_type"] == "a2d-qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM
        config.pop("model_type")
        return Qwen3ForCausalLM.from_pretrained(ckpt_dir, config=Qwen3Config(**config), attn_implementation="sdpa")
    from transformers import AutoModelForMaskedLM
    return AutoModelForMaskedLM.from_pretrained(ckpt_dir)


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


class Layout:
    """prompt_prefix + prompt + prompt_suffix | reasoning (R, EOS-padded) | marker | answer (A, EOS-padded)."""

    def __init__(self, tok, R=task.R, A=task.A, prefix=task.PROMPT_PREFIX, suffix=task.PROMPT_SUFFIX,
                 marker=task.MARKER, max_length=task.MAX_LENGTH):
        self.tok, self.R, self.A = tok, R, A
        self.prefix, self.suffix, self.marker, self.max_length = prefix, suffix, marker, max_length
        self.eos = tok.eos_token_id
        self.mask = tok.mask_token_id
        self.marker_ids = enc(tok, marker)

    def prompt_ids(self, prompt):
        return enc(self.tok, self.prefix + prompt + self.suffix)

    def encode(self, ex):
        """Full training sequence (list of ids) and prompt length; raises if anything does not fit."""
        p = self.prompt_ids(ex["prompt"])
        r = enc(self.tok, ex["reasoning"])
        a = enc(self.tok, ex["answer"])
        if len(r) > self.R or len(a) > self.A:
            raise ValueError(f"reasoning/answer too long: {ex}")
        ids = p + r + [self.eos] * (self.R - len(r)) + self.marker_ids + a + [self.eos] * (self.A - len(a))
        if len(ids) > self.max_length:
            raise ValueError(f"sequence of {len(ids)} tokens exceeds {self.max_length}: {ex}")
        return ids, len(p)

    def response_positions(self, P):
        """Canvas positions of reasoning then answer (marker excluded)."""
        m = len(self.marker_ids)
        return list(range(P, P + self.R)) + list(range(P + self.R + m, P + self.R + m + self.A))

    def decode_answer(self, answer_ids):
        ids = list(answer_ids)
        if self.eos in ids:
            ids = ids[:ids.index(self.eos)]
        return self.tok.decode(ids, skip_special_tokens=True)

    def to_dict(self):
        return {"prompt_prefix": self.prefix, "prompt_suffix": self.suffix, "marker": self.marker,
                "R": self.R, "A": self.A, "max_length": self.max_length,
                "marker_ids": self.marker_ids, "mask_token": self.tok.mask_token, "eos_token": self.tok.eos_token,
                "pad_token": self.tok.pad_token, "unk_token": self.tok.unk_token, "mask_id": self.mask, "eos_id": self.eos}


def bucket_by_prompt_length(layout, examples):
    """{prompt_length: int64 array (n, L)} of encoded training sequences."""
    bt = layout.tok.backend_tokenizer  # batch encoding; same ids as encode(..., add_special_tokens=False)
    texts = lambda key: [e[key] for e in examples]  # noqa: E731
    prompts = bt.encode_batch([layout.prefix + p + layout.suffix for p in texts("prompt")], add_special_tokens=False)
    reasons = bt.encode_batch(texts("reasoning"), add_special_tokens=False)
    answers = bt.encode_batch(texts("answer"), add_special_tokens=False)
    buckets, eos, m = {}, layout.eos, layout.marker_ids
    for ex, p, r, a in zip(examples, prompts, reasons, answers):
        p, r, a = p.ids, r.ids, a.ids
        if len(r) > layout.R or len(a) > layout.A:
            raise ValueError(f"reasoning/answer too long: {ex}")
        ids = p + r + [eos] * (layout.R - len(r)) + m + a + [eos] * (layout.A - len(a))
        if len(ids) > layout.max_length:
            raise ValueError(f"sequence of {len(ids)} tokens exceeds {layout.max_length}: {ex}")
        buckets.setdefault(len(p), []).append(ids)
    return {P: np.array(v, dtype=np.int64) for P, v in buckets.items()}


def load_args(ckpt_dir):
    with open(os.path.join(ckpt_dir, "training_args.json")) as f:
        return json.load(f)
