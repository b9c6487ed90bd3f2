"""Unit tests of the pure numeric functions and of DecodeConfig, on hand-built inputs."""

from __future__ import annotations

import numpy as np
import pytest

import tie_lite
from tie_lite import DecodeConfig


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
    assert np.allclose(freq, [0.6, 0.3, 0.1], atol=0.025)


def test_gumbel_argmax_temperature_flattens():
    rng = np.random.default_rng(2)
    logits = np.log(np.array([[0.9, 0.1]]))
    hot = np.mean([tie_lite.gumbel_argmax(logits, 4.0, rng)[0] for _ in range(4000)])
    assert hot > 0.25  # at T=4, p(1) = 0.1**0.25 / (0.9**0.25 + 0.1**0.25) ~ 0.37


def test_first_index():
    assert tie_lite.first_index(np.array([5, 6, 3, 3]), [3]) == 2
    assert tie_lite.first_index(np.array([5, 6]), [3, 9]) == 2


def test_decode_config_properties():
    config = DecodeConfig(gen_length=64, block_size=16, steps=32)
    assert (config.num_blocks, config.steps_per_block, config.infill) == (4, 8, False)
    assert DecodeConfig(gen_length=64, block_size=16).steps_per_block == 16
    assert DecodeConfig(gen_length=64, answer_length=16).infill


@pytest.mark.parametrize("kwargs,named", [
    (dict(gen_length=0), "gen_length"),
    (dict(gen_length=60, block_size=16), "60"),
    (dict(block_size=0), "block_size"),
    (dict(steps=0), "steps"),
    (dict(steps=-4), "-4"),
    (dict(steps=128), "128"),
    (dict(steps=6), "6"),                      # 4 blocks do not divide 6 steps
    (dict(answer_length=8), "answer_length 8"),  # a block would hold reasoning and answer
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
        DecodeConfig(**kwargs)
