"""Check an exported statistics graph against the PyTorch model it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tie_lite import CACHE_INPUTS, GRAPH_INPUTS, GRAPH_OUTPUTS

from . import ExportError
from .graph import Statistics, confidence_statistics

PROB_ATOL = 1e-4      # |p_onnx - p_torch| allowed for every returned top-k probability
ENTROPY_ATOL = 1e-3   # nats
TIE_MARGIN = 2e-4     # a top-1 id may differ only where torch's top-1 and top-2 are this close
COMPARED = GRAPH_OUTPUTS[:3]  # top_ids, top_probs, entropy: the outputs compared (Statistics' first three)


class ExportValidationError(ExportError):
    """The ONNX graph disagrees with PyTorch beyond the stated tolerances."""


@dataclass(frozen=True)
class ValidationReport:
    cases: int               # sample canvases run through both
    positions: int           # gathered positions compared
    top1_agree: int          # positions whose top-1 id is equal
    near_ties: int           # disagreeing positions where torch's top-2 gap < TIE_MARGIN
    max_prob_diff: float
    max_entropy_diff: float
    prob_atol: float = PROB_ATOL
    entropy_atol: float = ENTROPY_ATOL

    def as_dict(self) -> dict:
        return asdict(self)


def sample_canvases(vocab_size: int, mask_id: int, max_length: int, seed: int = 0) -> list[np.ndarray]:
    """A few (L,) int64 canvases: random tokens with a masked tail, at two lengths."""
    rng = np.random.default_rng(seed)
    canvases = []
    for length in sorted({min(16, max_length), min(96, max_length)}):
        tokens = rng.integers(0, vocab_size, size=length)
        tokens[length // 2:] = mask_id
        canvases.append(tokens.astype(np.int64))
    return canvases


def torch_statistics(model, family, tokens: np.ndarray, positions: np.ndarray, is_suppressed,
                     top_k: int) -> Statistics:
    """The reference: the model's own full forward, then the same statistics as the graph (numpy, (K, ...))."""
    with torch.no_grad():
        ids = torch.from_numpy(tokens)[None]
        logits = family.full_logits(model, ids, torch.ones_like(ids))[0]  # (L, Vg)
        read_at = torch.from_numpy(np.maximum(positions - family.logits_shift, 0))
        stats = confidence_statistics(logits[read_at][None], is_suppressed, top_k)
    return Statistics(*(v[0].numpy() for v in stats))


def validate(onnx_path: Path, model, family, is_suppressed, top_k: int, vocab_size: int, mask_id: int,
             max_length: int) -> ValidationReport:
    """Run sample canvases through ONNX and PyTorch; raise ExportValidationError if they disagree."""
    report = measure(onnx_path, model, family, is_suppressed, top_k, vocab_size, mask_id, max_length)
    _check(report)
    return report


def validate_cache(cache_path: Path, model, family, is_suppressed, top_k: int, vocab_size: int, mask_id: int,
                   max_length: int) -> ValidationReport:
    """measure_cache, raising ExportValidationError beyond the tolerances `validate` holds the main graph to."""
    report = measure_cache(cache_path, model, family, is_suppressed, top_k, vocab_size, mask_id, max_length)
    _check(report)
    return report


def check_agreement(report: ValidationReport, min_agreement: float, scheme: str = "int8") -> None:
    """For a quantized graph (scheme: int8, int4): top-1 ids must agree with PyTorch at >= min_agreement
    of positions."""
    rate = report.top1_agree / report.positions
    if rate < min_agreement:
        raise ExportValidationError(f"the {scheme} graph's top-1 ids agree with PyTorch at {rate:.1%} of positions, "
                                    f"below the required {min_agreement:.1%}")


def measure(onnx_path: Path, model, family, is_suppressed, top_k: int, vocab_size: int, mask_id: int,
            max_length: int) -> ValidationReport:
    """Compare the ONNX graph's statistics with PyTorch's on sample canvases."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    totals = dict(cases=0, positions=0, top1_agree=0, near_ties=0, max_prob_diff=0.0, max_entropy_diff=0.0)
    for tokens in sample_canvases(vocab_size, mask_id, max_length):
        positions = np.arange(tokens.size, dtype=np.int64)
        ref = torch_statistics(model, family, tokens, positions, is_suppressed, top_k)
        feed = dict(zip(GRAPH_INPUTS, (tokens[None], np.ones((1, tokens.size), np.int64),
                                       np.maximum(positions - family.logits_shift, 0)[None])))
        _accumulate(totals, ref, _compared(session.run(list(COMPARED), feed)))
    return ValidationReport(**totals)


def measure_cache(cache_path: Path, model, family, is_suppressed, top_k: int, vocab_size: int, mask_id: int,
                  max_length: int) -> ValidationReport:
    """Compare the K/V-cache graph with PyTorch on sample canvases, twice per canvas: the full pass
    (every row recomputed), and a cached pass over the middle rows with nothing changed since, which
    must reproduce the full pass because every kept key and value is still current. The graph predicts
    from the rows it gathers, so each row is compared with PyTorch's logits at that row (with Dream's
    shift, those of the position after it)."""
    import onnxruntime as ort

    from .cache import cache_shape, fresh_names, past_names

    session = ort.InferenceSession(str(cache_path), providers=["CPUExecutionProvider"])
    layers, heads, dim = cache_shape(model.config)
    past, fresh = past_names(layers), fresh_names(layers)
    totals = dict(cases=0, positions=0, top1_agree=0, near_ties=0, max_prob_diff=0.0, max_entropy_diff=0.0)
    for tokens in sample_canvases(vocab_size, mask_id, max_length):
        length = tokens.size
        every = np.arange(length, dtype=np.int64)  # (L,)
        ref = torch_statistics(model, family, tokens, every + family.logits_shift, is_suppressed, top_k)  # at rows
        nothing = np.zeros((1, heads, 0, dim), np.float32)  # (1, h, P = 0, d): nothing kept, every layer
        canvas = np.ones((1, length), np.int64)
        feed = {**dict(zip(CACHE_INPUTS, (tokens[None], every[None], canvas, every[None]))),
                **dict.fromkeys(past, nothing)}
        outputs = session.run(list(COMPARED) + fresh, feed)
        _accumulate(totals, ref, _compared(outputs))
        block = np.arange(length // 4, length // 2, dtype=np.int64)  # (b,)
        feed.update(zip(CACHE_INPUTS, (tokens[block][None], block[None], canvas,
                                       np.arange(block.size, dtype=np.int64)[None])))
        feed.update(zip(past, outputs[len(COMPARED):]))  # every layer's keys and values (1, h, L, d), kept
        _accumulate(totals, Statistics(*(v[block] for v in ref)), _compared(session.run(list(COMPARED), feed)))
    return ValidationReport(**totals)


def _compared(outputs: list) -> Statistics:
    """The COMPARED outputs of one session.run, batch row 0, as Statistics (no logits)."""
    return Statistics(*(x[0] for x in outputs[:len(COMPARED)]), logits=None)


def _accumulate(totals: dict, ref: Statistics, got: Statistics) -> None:
    agree = got.top_ids[:, 0] == ref.top_ids[:, 0]
    gap = ref.top_probs[:, 0] - ref.top_probs[:, 1]
    totals["cases"] += 1
    totals["positions"] += agree.size
    totals["top1_agree"] += int(agree.sum())
    totals["near_ties"] += int((~agree & (gap < TIE_MARGIN)).sum())
    totals["max_prob_diff"] = max(totals["max_prob_diff"], float(np.abs(got.top_probs - ref.top_probs).max()))
    totals["max_entropy_diff"] = max(totals["max_entropy_diff"], float(np.abs(got.entropy - ref.entropy).max()))


def _check(report: ValidationReport) -> None:
    disagree = report.positions - report.top1_agree - report.near_ties
    if disagree:
        raise ExportValidationError(f"ONNX top-1 ids differ from PyTorch at {disagree} of {report.positions} "
                                    "positions (not near-ties)")
    if report.max_prob_diff > PROB_ATOL:
        raise ExportValidationError(f"ONNX probabilities differ from PyTorch by {report.max_prob_diff:.2e} "
                                    f"> {PROB_ATOL:.0e}")
    if report.max_entropy_diff > ENTROPY_ATOL:
        raise ExportValidationError(f"ONNX entropy differs from PyTorch by {report.max_entropy_diff:.2e} "
                                    f"> {ENTROPY_ATOL:.0e}")
