"""Float32 error bounds for tests that compare two computations of one model's statistics.

Two graphs of one model (model.onnx and cache.onnx, ONNX and PyTorch, or one graph run at two query
shapes) do the same float32 arithmetic in another order: other SIMD widths, GEMM blockings, summation
orders. They agree only as far as float32 rounding lets them, and that depends on the model's numbers,
not on a constant one CPU happened to pass. The rule used here (pure numpy: no torch):

- A float32 dot product of length K, summed in any order, is off by ~sqrt(K) * EPS32 / 2 relative to the
  size of its result (K roundings of at most EPS32 / 2 each, adding like a random walk); sqrt(K) * EPS32
  is twice that.
- Each of the model's N layers adds such an error to the residual stream, which the next norm rescales,
  and so does the LM head (its dense layer and norm): N + 1 stages whose errors are added linearly (the
  worst case, which also covers the attention softmax and the activations passing them on). Two orders
  of the same arithmetic err independently: twice that. The hidden state h the logits are read from is
  thus off by a relative r <= 2 * (N + 1) * sqrt(K) * EPS32, K the longest dot product in the model
  (hidden width, MLP width, or the canvas length the attention sums over).
- The logits z_v = W_v . h are the last dot products: an error r * |h| in h moves z_v by at most
  r * |h| |W_v|, whose largest value over the vocabulary is about the largest |logit| Z (h along W_v).

So two computations of one model's logits differ by at most

    delta = 2 * (N + 1) * sqrt(K) * EPS32 * Z

and the statistics the runtime reads follow from it to first order (delta << 1):

- log p_i = z_i - logsumexp(z) moves by at most 2 * delta (z_i by delta, the log-sum by delta), so
  |dp_i| <= p_i * expm1(2 * delta);
- the top-1 id can change only where log(p1 / p2) <= 2 * delta: a near-tie, where either id is right;
- the entropy H = -sum_j p_j log p_j moves by -sum_j p_j (dz_j - E_p dz)(log p_j + H), at most
  2 * delta * E_p|log p + H| <= 2 * delta * 2H = 4 * delta * H.

Each graph's statistics tail (log_softmax over the V columns, exp, the entropy's sum) rounds once more:
log p to ~EPS32 * (2Z + log V) absolute, which `tail` adds (once per side); it is far below delta.

For the shipped models (N = 4 or 5, K = 384 to 512, Z ~ 14-21 on export's sample canvases) delta is
3.8-6.4e-4; for those shipped before them (N = 4, K = 384 or 512, Z ~ 15-22: 3.6-5.1e-4) their two graphs
and PyTorch differed by 1-5e-5 in the logits, 3-9% of it. Still far too tight to miss a bug: on the model c
shipped then, one weight tensor scaled or jittered by 1e-3 relative moved the logits by 1.2e-3 to 9e-2
(2.4x to 180x delta), keys and values swapped in one layer or a layer given another's weights by ~10.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)    # 1.19e-7, the float32 spacing at 1
TINY32 = float(np.finfo(np.float32).tiny)  # 1.18e-38: below it float32 is subnormal, its relative error unbounded
SUPPRESSED = 1e30  # graphs fill suppressed columns (the mask, a wider head's columns) with -FLT_MAX or -inf


def model_dims(folder, length: int) -> tuple[int, int]:
    """(layers N, longest dot product K) of the model whose config.json (Hugging Face or exported folder)
    is in folder, run on a canvas of `length` positions: K = max(hidden width, MLP width, length)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    layers = config.get("num_hidden_layers", config.get("n_layers"))
    hidden = config.get("hidden_size", config.get("d_model"))
    mlp = config.get("intermediate_size", config.get("mlp_hidden_size", 0)) or 0
    return int(layers), int(max(hidden, mlp, length))


def live_columns(logits: np.ndarray) -> np.ndarray:
    """(V,) bool: the columns a graph did not suppress (the same in every row)."""
    return np.abs(np.asarray(logits[0], np.float64)) < SUPPRESSED


@dataclass(frozen=True)
class Reach:
    """How far float32 rounding may move one model's statistics between two computations of them."""

    delta: float  # a logit, absolute: 2 * (N + 1) * sqrt(K) * EPS32 * Z
    tail: float   # log p, absolute, from one statistics tail's own rounding: EPS32 * (2Z + log V)

    @property
    def log_prob(self) -> float:
        """|d log p| for every probability, so also the log-ratio log(p1 / p2) within which top-1 may swap."""
        return 2 * (self.delta + self.tail)

    @property
    def prob_rel(self) -> float:
        """|dp| / p."""
        return math.expm1(self.log_prob)

    def entropy(self, h) -> np.ndarray:
        """|dH| allowed at entropy h (nats): 4 delta H, and each side's tail rounding of log p."""
        return 2 * self.log_prob * np.asarray(h, np.float64) + 2 * self.tail


def float32_reach(logits: list, layers: int, width: int) -> Reach:
    """The Reach (module docstring) of a model with `layers` layers whose longest dot product is `width`
    long (model_dims), from the largest live |logit| Z over the arrays of logits (K, V) compared."""
    live = [np.asarray(x, np.float64)[:, live_columns(x)] for x in logits]
    z = max(float(np.abs(x).max()) for x in live)
    return Reach(delta=2 * (layers + 1) * math.sqrt(width) * EPS32 * z,
                 tail=EPS32 * (2 * z + math.log(max(x.shape[1] for x in live))))


def near_ties(top_probs: np.ndarray, log_ratio: float) -> np.ndarray:
    """(K,) bool: positions whose top two probabilities are within log(p1 / p2) <= log_ratio."""
    p = np.maximum(np.asarray(top_probs, np.float64), TINY32)
    return np.log(p[:, 0]) - np.log(p[:, 1]) <= log_ratio


def _get(stats, name):
    return stats[name] if isinstance(stats, dict) else getattr(stats, name)


def assert_statistics_agree(a, b, layers: int, width: int, what: str = "") -> dict:
    """Assert that two computations a, b of one model's statistics (tie_lite.Stats, or dicts with
    top_ids, top_probs, entropy, logits at the same K positions) agree as float32 arithmetic allows
    (module docstring): logits within delta, top-1 ids equal except at near-ties (and then a near-tied
    id), top-k probabilities within p * expm1(2 delta), entropies within 4 delta H.

    layers, width: the model's N and longest dot product K (model_dims).
    Returns the numbers measured and their bounds, for messages and experiments."""
    za, zb = (np.asarray(_get(s, "logits"), np.float64) for s in (a, b))
    live = live_columns(za)
    assert np.array_equal(live, live_columns(zb)), f"{what}: the graphs suppress different columns"
    assert np.array_equal(np.broadcast_to(live, za.shape), np.abs(za) < SUPPRESSED), f"{what}: rows differ in columns"
    za, zb = za[:, live], zb[:, live]
    reach = float32_reach([za, zb], layers, width)
    delta = reach.delta
    got = dict(delta=delta, z_max=float(max(np.abs(za).max(), np.abs(zb).max())), layers=layers, width=width)

    got["logit_diff"] = float(np.abs(za - zb).max())
    assert got["logit_diff"] <= delta, (f"{what}: logits differ by {got['logit_diff']:.3g} > delta {delta:.3g} "
                                        f"= 2 * ({layers} + 1) * sqrt({width}) * EPS32 * max|z| {got['z_max']:.3g}")

    ids_a, ids_b = (np.asarray(_get(s, "top_ids")) for s in (a, b))
    pa, pb = (np.asarray(_get(s, "top_probs"), np.float64) for s in (a, b))
    tied = near_ties(pa, reach.log_prob) | near_ties(pb, reach.log_prob)
    differ = ids_a[:, 0] != ids_b[:, 0]
    got["near_ties"], got["top1_differ"] = int(tied.sum()), int(differ.sum())
    assert not (differ & ~tied).any(), (f"{what}: top-1 ids differ at positions {np.where(differ & ~tied)[0]} "
                                        f"whose top two are further apart than log-ratio {reach.log_prob:.3g}")
    for k in np.where(differ)[0]:  # a near-tie: b's top-1 must be one of a's ids that close to a's top-1
        close = np.log(pa[k, 0]) - np.log(np.maximum(pa[k], TINY32)) <= reach.log_prob
        assert ids_b[k, 0] in ids_a[k][close], f"{what}: position {k}: top-1 {ids_b[k, 0]} is no near-tie of {ids_a[k]}"
    # every rank: the r-th largest logit moves by <= delta, so b's r-th id has an a-logit within 2 delta
    # (and the tails' rounding of p, which orders the ids) of a's r-th; equal ids unless tied that close
    full_a = np.asarray(_get(a, "logits"), np.float64)
    rank_gap = np.abs(np.take_along_axis(full_a, ids_b, 1) - np.take_along_axis(full_a, ids_a, 1))
    assert (rank_gap <= reach.log_prob).all(), (f"{what}: top-k ids differ beyond near-ties at "
                                                f"{np.argwhere(rank_gap > reach.log_prob).tolist()} (position, rank)")

    allowed = np.maximum(pa, pb) * reach.prob_rel + TINY32
    got["prob_diff"], got["prob_rel"] = float(np.abs(pa - pb).max()), reach.prob_rel
    got["prob_ratio"] = float((np.abs(pa - pb) / allowed).max())
    assert got["prob_ratio"] <= 1, (f"{what}: top-k probabilities differ by {got['prob_diff']:.3g}, "
                                    f"{got['prob_ratio']:.3g}x the allowed p * {reach.prob_rel:.3g} (expm1(2 delta))")

    ha, hb = (np.asarray(_get(s, "entropy"), np.float64) for s in (a, b))
    got["entropy_diff"] = float(np.abs(ha - hb).max())
    got["entropy_ratio"] = float((np.abs(ha - hb) / reach.entropy(np.maximum(ha, hb))).max())
    assert got["entropy_ratio"] <= 1, (f"{what}: entropies differ by {got['entropy_diff']:.3g}, "
                                       f"{got['entropy_ratio']:.3g}x the allowed 4 delta H")
    return got
