"""eval/text_relay.py: what it counts as lost by a text relay (ids after the first mask, text overflowing a
region), on hand-built canvases of the shipped models a and d (two tokenizers)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import tie_lite
from conftest import ROOT

sys.path.insert(0, str(ROOT / "eval"))
sys.path.insert(0, str(ROOT / "train"))
import text_relay  # noqa: E402

PROMPT = "Compute 7 - 6 + 8."


@pytest.fixture(scope="module")
def pair():
    return [tie_lite.Model.load(ROOT / "models" / name / "onnx", threads=1) for name in "ad"]


def run_holding(model, config, written: str, after_gap: str = "") -> tie_lite.Run:
    """A Run whose reasoning holds `written`, one masked position, then `after_gap`."""
    canvas = tie_lite.build_canvas(model, PROMPT, config)
    ids = np.concatenate([model.encode(written), [model.manifest.mask_id], model.encode(after_gap)])
    canvas.tokens[canvas.gen_idx[: ids.size]] = ids
    return tie_lite.Run(model, tie_lite.DecodeState(canvas, np.random.default_rng(0)))


def config_of(model, **changes) -> tie_lite.DecodeConfig:
    return tie_lite.DecodeConfig(**{**model.manifest.decode_defaults, **changes})


def test_ids_after_the_first_mask_are_counted_as_dropped(pair):
    a, d = pair
    config = config_of(a)
    source, receiver = run_holding(a, config, "7-6=1", ". 1+"), run_holding(d, config, "")
    assert text_relay.losses_of(source, receiver, config) == (a.encode(". 1+").size, False)
    assert text_relay.losses_of(run_holding(a, config, "7-6=1"), receiver, config) == (0, False)


def test_text_longer_than_the_receivers_region_is_counted_as_cut(pair):
    """d merges a word into few ids where a spends one a character: d's full region overflows a's."""
    a, d = pair
    config = config_of(a)
    reasoning = config.gen_length - config.answer_length
    words = d.encode("Compute " * reasoning)[:reasoning]  # (R,) fills d's reasoning region
    assert len(d.detokenize(words)) > reasoning          # more characters than a's region holds
    source = run_holding(d, config, "")
    source.state.tokens[source.state.canvas.gen_idx[:reasoning]] = words
    assert text_relay.losses_of(source, run_holding(a, config, ""), config) == (0, True)
    assert text_relay.losses_of(run_holding(d, config, "7-6=1. 1+8=9."), run_holding(a, config, ""), config) \
        == (0, False)


def test_stop_ids_after_an_ended_reasoning_come_back_and_are_not_dropped(pair):
    """A reasoning ended by a stop id is filled with EOS on the receiver's side: the leader's stop ids after
    its first mask are not lost, a digit there is."""
    a, d = pair
    config = config_of(a)
    eos = a.manifest.eos_id
    source = run_holding(a, config, "7-6=1.")
    ended_at = len("7-6=1.")
    gen = source.state.canvas.gen_idx
    source.state.tokens[gen[ended_at - 1]] = eos          # the reasoning ends: "7-6=1" then EOS
    source.state.tokens[gen[ended_at + 1:ended_at + 4]] = eos  # EOS committed after the first mask
    assert text_relay.losses_of(source, run_holding(d, config, ""), config) == (0, False)
    source.state.tokens[gen[ended_at + 4]] = a.encode("5")[0]
    assert text_relay.losses_of(source, run_holding(d, config, ""), config) == (1, False)
