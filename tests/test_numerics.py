"""Unit tests of the pure numeric functions and of DecodeConfig, on hand-built inputs."""

from __future__ import annotations

import numpy as np
import pytest

import tie_lite
from tie_lite import DecodeConfig


def _resolved(**options) -> DecodeConfig:
    """A DecodeConfig whose unset lengths take the fallbacks, as for a model that recommends none."""
    return DecodeConfig(**options).with_defaults()


@pytest.mark.parametrize("masks,steps,expected", [
    (16, 16, [1] * 16),
    (16, 4, [4, 4, 4, 4]),
    (10, 4, [3, 3, 2, 2]),        # remainder goes to the first steps (LLaDA)
    (8, 3, [3, 3, 2]),
    (5, 5, [1, 1, 1, 1, 1]),
])
def test_transfer_schedule_spreads_masks_with_remainder_first(masks, steps, expected):
    counts = tie_lite.transfer_schedule(masks, steps)
    assert counts.tolist() == expected
    assert counts.sum() == masks


def test_pick_by_confidence_orders_by_confidence_and_breaks_ties_to_lower_index():
    confidence = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    assert tie_lite.pick_by_confidence(confidence, 3).tolist() == [1, 3, 2]
    assert tie_lite.pick_by_confidence(np.array([0.5, 0.5, 0.5]), 2).tolist() == [0, 1]


def test_pick_above_threshold_commits_all_above_or_the_single_best():
    assert tie_lite.pick_above_threshold(np.array([0.95, 0.2, 0.91, 0.99]), 0.9).tolist() == [3, 0, 2]
    assert tie_lite.pick_above_threshold(np.array([0.3, 0.6, 0.6]), 0.9).tolist() == [1]
    assert tie_lite.pick_above_threshold(np.array([0.9]), 0.9).tolist() == [0]  # strictly above


def test_softmax_is_stable_for_large_logits():
    probs = tie_lite.softmax(np.array([[1000.0, 1000.0, -1000.0]]))
    assert np.allclose(probs, [[0.5, 0.5, 0.0]])


def test_gumbel_argmax_is_greedy_as_temperature_vanishes():
    rng = np.random.default_rng(0)
    logits = np.array([[0.0, 3.0, 1.0], [5.0, -1.0, 4.9]])
    assert tie_lite.gumbel_argmax(logits, 1e-9, rng).tolist() == [1, 0]


def test_gumbel_argmax_samples_the_softmax_distribution():
    rng = np.random.default_rng(1)
    logits = np.log(np.array([[0.6, 0.3, 0.1]]))
    draws = np.array([tie_lite.gumbel_argmax(logits, 1.0, rng)[0] for _ in range(6000)])
    freq = np.bincount(draws, minlength=3) / draws.size
    # a sampling tolerance, not a float32 one: a frequency over n = 6000 draws has standard deviation
    # sqrt(p (1 - p) / n) <= 0.0065, so atol 0.025 is >= 3.9 sigma for every p (seeded: no flakiness)
    assert np.allclose(freq, [0.6, 0.3, 0.1], atol=0.025)


def test_gumbel_argmax_temperature_flattens():
    rng = np.random.default_rng(2)
    logits = np.log(np.array([[0.9, 0.1]]))
    hot = np.mean([tie_lite.gumbel_argmax(logits, 4.0, rng)[0] for _ in range(4000)])
    assert hot > 0.25  # at T=4, p(1) = 0.1**0.25 / (0.9**0.25 + 0.1**0.25) ~ 0.37, sigma 0.0076 over 4000 draws


def test_gumbel_argmax_never_draws_a_suppressed_column():
    """A column at the graph's suppression value (the mask, padding) is never drawn, however hot T: at
    T = 1e39, T * gumbel would outweigh the float32 minimum."""
    rng = np.random.default_rng(4)
    logits = np.array([[2.0, tie_lite.SUPPRESSED_LOGIT, 0.5, tie_lite.SUPPRESSED_LOGIT]], np.float32)  # (1, 4)
    for temperature in (1.0, 1e30, 1e39, 1e300):
        draws = {int(tie_lite.gumbel_argmax(logits, temperature, rng)[0]) for _ in range(200)}
        assert draws <= {0, 2} and (temperature == 1.0 or draws == {0, 2})


def test_first_index():
    assert tie_lite.first_index(np.array([5, 6, 3, 3]), [3]) == 2
    assert tie_lite.first_index(np.array([5, 6]), [3, 9]) == 2


def test_decode_config_properties():
    config = _resolved(gen_length=64, block_size=16, steps=32)
    assert (config.num_blocks, config.steps_per_block, config.infill) == (4, 8, False)
    assert _resolved(gen_length=64, block_size=16).steps_per_block == 16
    assert _resolved(gen_length=64, answer_length=16).infill


@pytest.mark.parametrize("kwargs,named", [
    (dict(gen_length=0), "gen_length"),
    (dict(gen_length=60, block_size=16), "60"),
    (dict(block_size=0), "block_size"),
    (dict(steps=0), "steps"),
    (dict(steps=-4), "-4"),
    (dict(steps=128), "128"),
    (dict(steps=6), "6"),                      # 4 blocks do not divide 6 steps
    (dict(answer_length=8), "answer_length 8 does not start on a block boundary"),
    (dict(answer_length=64), "answer_length"),
    (dict(strategy="bogus"), "bogus"),
    (dict(strategy="threshold", steps=32), "steps"),
    (dict(threshold=1.5), "1.5"),
    (dict(tokens_per_step=0), "tokens_per_step"),
    (dict(temperature=-1.0), "-1.0"),
    (dict(temperature=float("nan")), "nan"),
    (dict(seed=-1), "seed"),
    (dict(gen_length=64.0), "gen_length must be an integer, got 64.0"),
    (dict(steps=True), "steps must be an integer"),
])
def test_decode_config_rejects_bad_values_naming_them(kwargs, named):
    with pytest.raises(tie_lite.ConfigError, match=named):
        _resolved(**kwargs)


# --- the seeds' other decoders --------------------------------------------------------------------

def test_med_commits_the_lowest_entropy_prefix_within_budget():
    entropy = np.array([0.5, 0.1, 2.0, 0.3])
    assert tie_lite.pick_within_entropy_budget(entropy, 0.5).tolist() == [1, 3]   # 0.1 + 0.3 <= 0.5 < 0.9
    assert tie_lite.pick_within_entropy_budget(entropy, 0.05).tolist() == [1]     # always at least one
    assert tie_lite.pick_within_entropy_budget(entropy, 10.0).tolist() == [1, 3, 0, 2]


DREAM_EPS = (1e-3, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75)


def _torch_with_fma_kernels():
    """torch, when its CPU kernels are the AVX2 / AVX512 builds (fused multiply-adds) that
    tie_lite follows; its build without them rounds linspace's products first."""
    import torch

    if getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")() == "DEFAULT":
        pytest.skip("torch runs its non-vectorized CPU kernels here (ATEN_CPU_CAPABILITY=default)")
    return torch


@pytest.mark.torch
def test_torch_linspace_f32_equals_torch_linspace_bit_for_bit():
    torch = _torch_with_fma_kernels()
    rng = np.random.default_rng(0)
    ends = [(1.0, e) for e in DREAM_EPS + (1 - 1e-7, 1e-9, 1e-30)] + [(1.0, float(e)) for e in rng.uniform(0, 1, 12)]
    ends += [tuple(float(v) for v in 10.0 ** rng.uniform(-6, 6, 2) * rng.choice([-1, 1], 2)) for _ in range(8)]
    for start, end in ends:
        for steps in list(range(1, 130)) + [257, 513, 1025]:
            ours = tie_lite.torch_linspace_f32(start, end, steps)
            theirs = torch.linspace(start, end, steps).numpy()
            assert ours.dtype == np.float32 and ours.view(np.int32).tolist() == theirs.view(np.int32).tolist(), \
                (start, end, steps)


@pytest.mark.torch
def test_dream_count_equals_dreams_float32_count_over_a_grid():
    """Every (eps, steps <= 64, step, masked <= 256), as Dream's _sample computes it in torch."""
    torch = _torch_with_fma_kernels()
    masked = np.arange(257)
    num_mask_token = torch.from_numpy(masked) / 1  # float32: Dream's mask_index.sum() / batch size
    for eps in DREAM_EPS:
        for steps in range(1, 65):
            timesteps = torch.linspace(1, eps, steps + 1)
            for i in range(steps):
                t, s = timesteps[i], timesteps[i + 1]
                theirs = (num_mask_token * (1 - s / t)).long().numpy() if i < steps - 1 else masked
                ours = tie_lite.dream_count(masked, i, steps, eps)
                assert np.array_equal(ours, theirs), (eps, steps, i, np.nonzero(ours != theirs)[0][:5])


@pytest.mark.torch
@pytest.mark.parametrize("masked,steps,eps", [(16, 16, 1e-3), (32, 8, 1e-3), (7, 5, 0.05), (64, 64, 1e-3),
                                              (22, 18, 0.1), (32, 19, 0.05), (32, 14, 0.3)])
def test_dream_count_walks_dreams_float32_schedule(masked, steps, eps):
    """One decode's counts, each an int from tie_lite, written the way Dream's _sample writes them."""
    torch = _torch_with_fma_kernels()
    timesteps = torch.linspace(1, eps, steps + 1)
    remaining, ours, theirs = masked, [], []
    for i in range(steps):
        k = tie_lite.dream_count(remaining, i, steps, eps)
        t, s = timesteps[i], timesteps[i + 1]
        num_mask_token = torch.tensor(remaining) / 1
        expected = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        assert type(k) is int
        ours.append(k), theirs.append(expected)
        remaining -= k
    assert ours == theirs and remaining == 0


def test_dream_count_at_the_issue_case():
    """eps 0.1, 18 steps, 22 masks left at step 9: torch's timesteps give 22 * (1 - s / t) = 1.9999994."""
    assert tie_lite.dream_count(22, 9, 18, 0.1) == 1


def test_eoser_factor_follows_the_reference_formula():
    assert tie_lite.eoser_factor(0, 64, 0.4, 1.0) == pytest.approx(0.4)
    assert tie_lite.eoser_factor(31, 64, 0.4, 1.0) == pytest.approx(0.4 + 0.6 * 31 / 63)
    assert tie_lite.eoser_factor(63, 64, 0.4, 1.0) == pytest.approx(1.0)
    assert tie_lite.eoser_factor(500, 64, 0.4, 1.0) == pytest.approx(1.0)  # clamped at S - 1
    assert tie_lite.eoser_factor(0, 1, 0.4, 1.0) == 1.0


def test_eoser_demotes_an_eos_proposal():
    config = _resolved(gen_length=64, eos_gamma=(0.4, 1.0))
    state = tie_lite.DecodeState(canvas=None, rng=None, block_step=0)
    stats = tie_lite.Stats(np.array([[3, 5], [7, 5]]), np.array([[0.9, 0.05], [0.5, 0.3]]), np.array([0.4, 1.2]),
                           None)
    confidence = tie_lite.rank_proposals(state, config, stats, np.array([3, 7]), np.array([0.9, 0.5]), eos_id=3)
    assert confidence.tolist() == pytest.approx([0.36, 0.5])
    assert tie_lite.pick_by_confidence(confidence, 1).tolist() == [1]


def test_confidence_kinds():
    top_probs = np.array([[0.6, 0.3], [0.5, 0.1]])
    entropy = np.array([0.9, 1.1])
    proposed = np.array([0.6, 0.5])
    assert tie_lite.confidence_of("top1", proposed, top_probs, entropy).tolist() == [0.6, 0.5]
    assert tie_lite.confidence_of("margin", proposed, top_probs, entropy) == pytest.approx([0.3, 0.4])
    assert tie_lite.confidence_of("entropy", proposed, top_probs, entropy) == pytest.approx([-0.9, -1.1])


def test_sample_positions_draws_distinct_indices_by_confidence():
    rng = np.random.default_rng(0)
    confidence = np.array([0.9, 0.1, 0.5, 0.2])
    picks = tie_lite.sample_positions(confidence, 3, 1.0, rng)
    assert len(set(picks.tolist())) == 3
    cold = [tie_lite.sample_positions(confidence, 1, 0.01, rng)[0] for _ in range(50)]
    assert set(cold) == {0}  # a cold alg_temp is top-k
    for frozen in (1e-6, 1e-320):  # probabilities underflow to one-hot, 1 / alg_temp overflows: still top-k
        assert tie_lite.sample_positions(confidence, 3, frozen, rng).tolist() == [0, 2, 3]
    tied = np.array([0.9, 0.5, 0.5])
    second = [tie_lite.sample_positions(tied, 2, 1e-16, rng)[1] for _ in range(2000)]
    # equal confidences stay an even draw at the coldest T: sd 0.011 over 2000 draws, atol 0.05 > 4 sigma
    assert abs(np.mean(np.array(second) == 1) - 0.5) < 0.05


def test_sample_positions_draws_from_the_softmax_without_replacement():
    """The first index drawn follows softmax(confidence / alg_temp); the second, the rest renormalised."""
    rng = np.random.default_rng(3)
    confidence = np.log(np.array([0.6, 0.3, 0.1]))
    draws = np.array([tie_lite.sample_positions(confidence, 2, 1.0, rng) for _ in range(6000)])  # (6000, 2)
    first = np.bincount(draws[:, 0], minlength=3) / len(draws)
    second_after_0 = np.bincount(draws[draws[:, 0] == 0, 1], minlength=3) / np.sum(draws[:, 0] == 0)
    # sampling tolerances: sd sqrt(p (1 - p) / n) <= 0.0065 over 6000 draws and <= 0.0083 over the ~3600
    # that start with 0, so atol 0.035 is >= 4 sigma for each (seeded: no flakiness)
    assert np.allclose(first, [0.6, 0.3, 0.1], atol=0.035)
    assert np.allclose(second_after_0, [0.0, 0.75, 0.25], atol=0.035)


@pytest.mark.parametrize("kwargs,named", [
    (dict(confidence="vibes"), "vibes"),
    (dict(threshold="0.5"), "threshold must be a number, got '0.5'"),
    (dict(temperature=True), "temperature must be a number, got True"),
    (dict(temperature=10 ** 400), "temperature must be a number a float holds"),
    (dict(alg_temp=None), "alg_temp must be a number, got None"),
    (dict(exit_threshold="0.9", answer_length=16), "exit_threshold must be a number"),
    (dict(entropy_budget=0.0), "entropy_budget"),
    (dict(eps=1.0), "eps must be in"),
    (dict(alg_temp=-1.0), "alg_temp"),
    (dict(alg_temp=0.5, strategy="threshold"), "alg_temp applies"),
    (dict(eos_gamma=(0.9, 0.4)), "eos_gamma"),
    (dict(eos_gamma=(0.4,)), "eos_gamma"),
    (dict(eos_gamma=(0.4, 1.0), confidence="margin"), "EOSER"),
    (dict(steps=16, strategy="med"), "steps applies only"),
])
def test_decoder_options_reject_bad_values(kwargs, named):
    with pytest.raises(tie_lite.ConfigError, match=named):
        _resolved(**kwargs)


@pytest.mark.parametrize("gen_length,blocks,sizes,steps,counts", [
    # the reference's own example: 128 = 15 + 16 + 32 + 65 in 7 steps over 4 blocks
    (128, 4, [15, 16, 32, 65], [[0, 1, 2, 3], [4], [5], [6]], [1, 2, 4, 8, 16, 32, 65]),
    (128, 1, [128], [[0, 1, 2, 3, 4, 5, 6]], [1, 2, 4, 8, 16, 32, 65]),
    (128, 2, [63, 65], [[0, 1, 2, 3, 4, 5], [6]], [1, 2, 4, 8, 16, 32, 65]),
    (16, 2, [7, 9], [[0, 1, 2], [3]], [1, 2, 4, 9]),
    (64, 3, [15, 16, 33], [[0, 1, 2, 3], [4], [5]], [1, 2, 4, 8, 16, 33]),
])
def test_ass_layout_and_counts_match_the_reference(gen_length, blocks, sizes, steps, counts):
    got_sizes, got_steps = tie_lite.ass_layout(gen_length, blocks)
    assert (got_sizes, got_steps) == (sizes, steps)
    assert tie_lite.ass_counts(gen_length, got_sizes).tolist() == counts
    assert sum(counts) == gen_length
    for size, block_steps in zip(sizes, steps):  # each block is exactly filled by its steps
        assert sum(counts[i] for i in block_steps) == size


def test_ass_config():
    config = _resolved(gen_length=64, block_size=64, strategy="ass", ass_blocks=3)
    assert config.block_bounds == (0, 15, 31, 64) and config.num_blocks == 3
    for kwargs, named in [(dict(gen_length=48, block_size=48), "power of two"),
                          (dict(ass_blocks=7), "ass_blocks must be in"),
                          (dict(block_size=16), "set block_size = gen_length"),
                          (dict(steps=4), "takes log2"),
                          (dict(answer_length=16), "block boundary")]:
        with pytest.raises(tie_lite.ConfigError, match=named):
            _resolved(**{**dict(gen_length=64, block_size=64, strategy="ass", ass_blocks=3), **kwargs})
    assert _resolved(gen_length=64, block_size=64, strategy="ass", ass_blocks=2, answer_length=33).infill


def test_answer_converged_rules():
    p = np.array([0.95, 0.5, 0.99])
    is_masked = np.array([True, False, True])
    assert tie_lite.answer_converged(p, is_masked, 0.9, 0, None)           # 0.5 is not masked: ignored
    assert not tie_lite.answer_converged(p, np.array([True, True, True]), 0.9, 0, None)
    assert tie_lite.answer_converged(p, np.array([True, True, True]), None, 3, 3)
    assert not tie_lite.answer_converged(p, np.array([True, True, True]), None, 2, 3)
    assert not tie_lite.answer_converged(p, np.zeros(3, bool), 0.1, 9, 1)  # nothing left to fill


def test_early_exit_needs_infilling():
    with pytest.raises(tie_lite.ConfigError, match="answer_length > 0"):
        _resolved(exit_threshold=0.9)
    with pytest.raises(tie_lite.ConfigError, match="exit_patience must be positive"):
        _resolved(answer_length=16, exit_patience=0)


def test_unset_lengths_come_from_the_model_by_one_rule():
    recommended = {"gen_length": 32, "answer_length": 4, "block_size": 4}
    assert not DecodeConfig().resolved
    assert DecodeConfig().with_defaults(recommended) == DecodeConfig(**recommended)
    assert DecodeConfig(gen_length=64).with_defaults(recommended) == DecodeConfig(gen_length=64, answer_length=4,
                                                                                  block_size=4)
    assert DecodeConfig().with_defaults() == DecodeConfig(**tie_lite.FALLBACK_LENGTHS)
    assert DecodeConfig(strategy="ass").with_defaults({"gen_length": 32}).block_size == 32
    with pytest.raises(tie_lite.ConfigError, match="unset lengths"):
        DecodeConfig().num_blocks
