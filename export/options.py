"""ExportOptions: what an export is asked to do, one field per option, each also a CLI flag.

`export_model(source, out_dir, options)` reads them; `python -m export` builds them from its
flags, which `add_export_options` makes from the fields (--top-k for top_k), as tie_lite's CLI
makes its decoding flags from DecodeConfig. A field's help text, its flag when that is not
--field-name, and how --help shows a None default are in its option(). decode_defaults is the
one field given as several flags: one per length a manifest may recommend
(tie_lite.DECODE_OPTIONS: --gen-length, --answer-length, --block-size).
This module imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

import tie_lite
from tie_lite import ARG_TYPES, option  # a field that is also a CLI flag, as tie_lite's configs are

DEFAULT_TOP_K = 4                 # top ids/probs per position in the graph (>= 2 for margins)
DEFAULT_ANSWER_MARKER = "Answer:"  # reasoning-as-infilling marker (paper, section 1)
DEFAULT_INT8_MIN_AGREEMENT = 0.9  # int8 export: least share of positions whose top-1 id equals PyTorch's
DEFAULT_INT4_BLOCK_SIZE = 32      # int4 export: weights per float32 scale (and 4-bit zero point)
DEFAULT_INT4_ACCURACY_LEVEL = 4   # int4 export: MatMulNBits multiplies int8-quantized activations
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits' accuracy_level: 0 unset (float32), 1 float32, 2 float16,
                                        # 3 bfloat16, 4 int8 (where a kernel lacks one, it computes in float32)
# int4 export: least share of sample positions whose top-1 id equals PyTorch's. The shipped models agree at
# 93.8-100% with the default settings (a 99.1, b 100, d 93.8; at block 128 a 98.2, d 91.1); the short-layout models shipped before them at
# 87.5% at worst over block sizes 16-128 (d; export/README.md, int4 settings): 4 bits flip near-ties of a
# trained model, so int8's 0.9 would refuse d at some settings. The
# floor catches a graph that is wrong at most positions (a mismatched graph, a wrong family); it is a weak
# test of a merely degraded one: export's sample canvases are random tokens and a masked tail, easy to
# predict, and on model a a graph with every block's scales reversed still agrees at 93%. Random-weight
# models, whose distributions are flat, agree at 40-90% and need a lower --int4-min-agreement.
DEFAULT_INT4_MIN_AGREEMENT = 0.8
TORCH_OPSETS = (14, 20)  # ONNX opsets these graphs export in: optimum's minimum for them (torch's exporter fails
                        # on their slices at 7-9), to the last its TorchScript exporter (the one optimum drives) writes
EXTERNAL_DATA_MIN_BYTES = 64 * 2 ** 20  # graphs at least this big keep their weights in model.onnx.data:
                                        # onnxruntime then maps them instead of parsing a copy (peak RSS)


@dataclass(frozen=True)
class ExportOptions:
    """How `export_model` exports a source. Defaults are the CLI's defaults."""

    top_k: int = option(DEFAULT_TOP_K, "top ids/probabilities per position in the graph (>= 2)", metavar="K")
    prompt_format: Optional[str] = option(
        None, f"the prompt around the user's text, {tie_lite.PROMPT_SLOT} where it goes",
        shown=f"the tokenizer's chat template, rendered now, so the runtime needs no template engine; "
              f"else {tie_lite.PROMPT_SLOT}", metavar="TEXT")
    answer_marker: str = option(DEFAULT_ANSWER_MARKER, "the reasoning-as-infilling marker", metavar="TEXT")
    name: Optional[str] = option(None, "display name", shown="the source's last path part")
    opset: Optional[int] = option(None, "ONNX opset", shown="optimum's; cache.onnx: 17")
    # {length: value}, keys from tie_lite.DECODE_OPTIONS; written to the manifest's decode_defaults
    decode_defaults: Optional[dict] = option(
        None, "the {} the runtime uses when the user gives none (the layout the model was trained on)",
        keys=tie_lite.DECODE_OPTIONS, type=int, metavar="N", shown="none: the runtime's fallback")
    # any sequence of texts, kept as a tuple; the manifest's stop_texts
    stop_texts: tuple = option((), "an end marker that is text, not one token (ModernBERT-chat's [/Answer]); "
                                   "the runtime cuts its output at the first (repeatable)",
                               flag="--stop-text", action="append", type=str, metavar="TEXT", shown="none")
    family: Optional[str] = option(None, "the export family, when config.json's model_type does not say it "
                                         "(e.g. dream, llada; export/families.py)", shown="from model_type",
                                   metavar="NAME")
    int8: bool = option(False, "after the float32 graph validates, replace it by a dynamically quantized int8 "
                               "graph (onnxruntime quant_pre_process + quantize_dynamic)")
    # True: with int8, the first transformer layer's matmuls stay float32 (--int8-all-layers sets False)
    int8_first_layer_fp32: bool = option(
        True, "with --int8: quantize the first transformer layer's matmuls too (by default they stay float32: "
              "on the shipped model a that keeps more of float32's accuracy; bench/int8_variants.py)",
        flag="--int8-all-layers")
    int8_min_agreement: float = option(DEFAULT_INT8_MIN_AGREEMENT,
                                       "least share of sample positions whose int8 top-1 id equals PyTorch's",
                                       metavar="P")
    int4: bool = option(False, "after the float32 graph validates, replace it by one with 4-bit block-quantized "
                               "weights (onnxruntime MatMulNBits: every weight matmul, the LM head's included; "
                               "GatherBlockQuantized: the token embedding table); excludes --int8")
    int4_block_size: int = option(DEFAULT_INT4_BLOCK_SIZE, "with --int4: weights sharing one scale and zero point, "
                                                           "along the input dimension (a power of two >= 16)",
                                  metavar="N")
    int4_accuracy_level: int = option(DEFAULT_INT4_ACCURACY_LEVEL,
                                      "with --int4: MatMulNBits' accuracy_level, the type its products are computed in "
                                      "(0 unset: float32, 1 float32, 2 float16, 3 bfloat16, 4 int8 activations)",
                                      choices=INT4_ACCURACY_LEVELS, metavar="LEVEL")
    int4_min_agreement: float = option(DEFAULT_INT4_MIN_AGREEMENT,
                                       "least share of sample positions whose int4 top-1 id equals PyTorch's",
                                       metavar="P")
    external_data_min_bytes: int = option(
        EXTERNAL_DATA_MIN_BYTES, "a final graph at least this big keeps its weights beside it in GRAPH.data, "
                                 "which onnxruntime maps with a lower peak RSS (bench/ort_levers.py)",
        shown=f"{EXTERNAL_DATA_MIN_BYTES} ({EXTERNAL_DATA_MIN_BYTES >> 20} MiB)", metavar="BYTES")
    # True: sibling matmuls of a float32 graph run as one (--no-merge-matmuls sets False)
    merge_matmuls: bool = option(
        True, "keep a float32 graph's sibling matmuls (query, key, value; gate, up) apart (by default each group "
              "runs as one matmul by the weights side by side and a Split, which measured faster: export/merge.py)",
        flag="--no-merge-matmuls")
    kv_cache: bool = option(False, "also write cache.onnx, the block key/value-cache graph of the runtime's "
                                   "approximate --kv-cache decoding (export/cache.py: ModernBERT, BERT and the "
                                   "decoder families), "
                                   "validated and quantized like model.onnx")
    trust_remote_code: bool = option(False, "run the model repository's own Python code (only for sources you "
                                            "trust); export says which files first")

    def __post_init__(self):
        from . import ExportError

        if not (tie_lite.is_int(self.top_k) and self.top_k >= 2):
            raise ExportError(f"top_k must be an integer >= 2, got {self.top_k!r}")
        if self.opset is not None and not (tie_lite.is_int(self.opset) and TORCH_OPSETS[0] <= self.opset <= TORCH_OPSETS[1]):
            raise ExportError(f"opset must be an integer in [{TORCH_OPSETS[0]}, {TORCH_OPSETS[1]}] (the opsets torch's "
                              f"exporter writes for these models), got {self.opset!r}")
        self._check_types()
        if not isinstance(self.stop_texts, (list, tuple)):
            raise ExportError(f"stop_texts must be a list of texts, got {self.stop_texts!r}")
        object.__setattr__(self, "stop_texts", tuple(self.stop_texts))
        if not all(isinstance(text, str) and text for text in self.stop_texts):
            raise ExportError(f"stop_texts must be non-empty texts, got {self.stop_texts!r}")
        if self.prompt_format is not None and (not isinstance(self.prompt_format, str)
                                               or self.prompt_format.count(tie_lite.PROMPT_SLOT) != 1):
            raise ExportError(f"prompt_format must contain {tie_lite.PROMPT_SLOT} exactly once, got {self.prompt_format!r}")
        if not all(tie_lite.is_int(value) for value in (self.decode_defaults or {}).values()):
            raise ExportError(f"decode_defaults' lengths must be integers, got {self.decode_defaults!r}")
        unknown = sorted(set(self.decode_defaults or {}) - set(tie_lite.DECODE_OPTIONS))
        if unknown:
            raise ExportError(f"decode_defaults has unknown keys {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(tie_lite.DECODE_OPTIONS)}")
        try:  # the runtime's own rules, checked before anything is exported
            tie_lite.DecodeConfig().with_defaults(self.decode_defaults)
        except tie_lite.ConfigError as exc:
            raise ExportError(f"decode_defaults {self.decode_defaults!r} are invalid: {exc}") from None
        object.__setattr__(self, "decode_defaults", self.decode_defaults and {
            name: int(value) for name, value in self.decode_defaults.items()})  # numpy ints as JSON writes them
        for name in ("int8_min_agreement", "int4_min_agreement"):
            if not (tie_lite.is_real(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise ExportError(f"{name} must be a number in [0, 1], got {getattr(self, name)!r}")
        if not (tie_lite.is_int(self.external_data_min_bytes) and self.external_data_min_bytes >= 0):
            raise ExportError(f"external_data_min_bytes must be an integer >= 0, got {self.external_data_min_bytes!r}")
        self._check_int4()

    def _check_types(self) -> None:
        from . import ExportError

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, (bool, np.bool_)):
                raise ExportError(f"{f.name} must be True or False, got {value!r}")
            if f.type in ("str", "Optional[str]") and not (isinstance(value, str) or (value is None and f.type != "str")):
                raise ExportError(f"{f.name} must be a text{' or None' if f.type != 'str' else ''}, got {value!r}")

    def _check_int4(self) -> None:
        from . import ExportError

        if self.int4 and self.int8:
            raise ExportError("int4 and int8 exclude each other (--int4, --int8): choose one")
        size = self.int4_block_size
        if not (tie_lite.is_int(size) and size >= 16 and size & (size - 1) == 0):  # MatMulNBits' own rule
            raise ExportError(f"int4_block_size must be a power of two >= 16 (onnxruntime's MatMulNBits), got {size!r}")
        if not tie_lite.is_int(self.int4_accuracy_level) or self.int4_accuracy_level not in INT4_ACCURACY_LEVELS:
            raise ExportError(f"int4_accuracy_level must be one of {INT4_ACCURACY_LEVELS}, "
                              f"got {self.int4_accuracy_level!r}")


def resolve(options: Optional[ExportOptions], overrides: dict, caller: str = "export_model") -> ExportOptions:
    """`options` (default ExportOptions()) with the keyword overrides; TypeError naming unknown keywords."""
    known = [f.name for f in dataclasses.fields(ExportOptions)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise TypeError(f"{caller}() got unknown option(s) {', '.join(map(repr, unknown))}; "
                        f"ExportOptions has {', '.join(known)}")
    return dataclasses.replace(options or ExportOptions(), **overrides)


def add_export_options(parser: argparse.ArgumentParser) -> None:
    """One flag per ExportOptions field (one per key for a field with keys), from the field's option().
    Flags not given are left out of the parsed namespace (argparse.SUPPRESS): the field's default holds."""
    for f in dataclasses.fields(ExportOptions):
        meta = dict(f.metadata)
        help_text, flag, shown, keys = meta.pop("help"), meta.pop("flag"), meta.pop("shown"), meta.pop("keys", ())
        if isinstance(f.default, bool):
            parser.add_argument(flag or _flag(f.name), dest=f.name, action="store_false" if f.default else "store_true",
                                default=argparse.SUPPRESS, help=help_text)
        elif keys:
            for key in keys:
                parser.add_argument(_flag(key), dest=key, default=argparse.SUPPRESS,
                                    help=f"{help_text.format(key.replace('_', ' '))} (default: {shown})", **meta)
        else:
            kind = meta.pop("type", None) or ARG_TYPES[f.type.replace("Optional[", "").rstrip("]")]
            default = shown if shown is not None else f.default
            parser.add_argument(flag or _flag(f.name), dest=f.name, default=argparse.SUPPRESS, type=kind,
                                help=f"{help_text} (default: {default})", **meta)


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """The ExportOptions the parsed flags (add_export_options) set; the rest keep their defaults."""
    given = vars(args)
    values = {}
    for f in dataclasses.fields(ExportOptions):
        keys = f.metadata.get("keys", ())
        if keys and any(key in given for key in keys):
            values[f.name] = {key: given[key] for key in keys if key in given}
        elif f.name in given:
            values[f.name] = given[f.name]
    return ExportOptions(**values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
