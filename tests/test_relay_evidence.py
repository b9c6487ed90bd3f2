"""eval/relay_evidence.py: its "on track" rule on hand-built canvases, and its Observer, which sees a TIE
decode through on_step only, against the runtime's own relays and final pick on the shipped models."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import tie_lite
from conftest import ROOT

sys.path.insert(0, str(ROOT / "eval"))
sys.path.insert(0, str(ROOT / "train"))
import relay_evidence  # noqa: E402
import task  # noqa: E402

REFERENCE = "7-6=1. 1+8=9."


@pytest.fixture(scope="module")
def models():
    return {name: tie_lite.Model.load(ROOT / "models" / name / "onnx", threads=1) for name in "abd"}


def trained_task(model) -> str:
    """The task variant whose layout (reasoning + answer) the model's manifest recommends."""
    defaults = model.manifest.decode_defaults
    layout = (defaults["gen_length"] - defaults["answer_length"], defaults["answer_length"])
    names = [name for name, t in task.TASKS.items() if (t.R, t.A) == layout]
    assert len(names) == 1, f"{model.name}'s layout (reasoning, answer) {layout} is that of task variants {names}"
    return names[0]


def canvas_with(model, reasoning_ids):
    """A canvas of the model's layout whose reasoning starts with `reasoning_ids`, the rest masked."""
    config = relay_evidence.task_config(model, trained_task(model))
    canvas = tie_lite.build_canvas(model, "Compute 7 - 6 + 8.", config)
    canvas.tokens[canvas.gen_idx[: len(reasoning_ids)]] = reasoning_ids
    return canvas, config.gen_length - config.answer_length


@pytest.mark.parametrize("name", ["a", "d"])
@pytest.mark.parametrize("written, ended, expected", [
    ("", False, True),                   # nothing committed yet
    ("7-6=1. 1+", False, True),          # a prefix of the reference
    ("7-6=2", False, False),             # a wrong result
    ("7-6=1. 1+8=9.", True, True),       # the whole reference, then a stop id
    ("7-6=1.", True, False),             # ended early
])
def test_on_track_compares_the_committed_text_with_the_reference(models, name, written, ended, expected):
    model = models[name]
    ids = model.encode(written).tolist() + ([model.manifest.eos_id] if ended else [])
    canvas, reasoning = canvas_with(model, ids)
    text, done = relay_evidence.reasoning_so_far(model, canvas.tokens, canvas.gen_idx, reasoning)
    assert (text, done) == (written, ended)
    assert relay_evidence.on_track(text, done, REFERENCE) is expected


def test_ids_committed_after_the_first_mask_are_ignored(models):
    model = models["a"]
    canvas, reasoning = canvas_with(model, model.encode("7-6=1"))
    canvas.tokens[canvas.gen_idx[7]] = model.encode("5")[0]  # a wrong digit beyond a masked position
    assert relay_evidence.reasoning_so_far(model, canvas.tokens, canvas.gen_idx, reasoning) == ("7-6=1", False)


@pytest.mark.parametrize("select", ["pll", "tcc"])
@pytest.mark.parametrize("names", ["ab", "ad"])
def test_the_observer_sees_each_relay_hand_over_the_leaders_trajectory(models, names, select):
    """After a relay every model holds the leader's trajectory (ids, or text re-encoded), so its standing
    read from its next step equals the leader's before, and the observer sees the runtime's scores; under
    tcc its own token change counts give the runtime's final pick."""
    chosen = [models[n] for n in names]
    variant = trained_task(chosen[0])
    config = relay_evidence.task_config(chosen[0], variant)
    ensemble = tie_lite.EnsembleConfig(interval=8, score=select, select=select)
    relays = 0
    for problem in task.make_split("validation", 3, seed=3, variant=variant):
        record = relay_evidence.decode_problem(chosen, problem, config, ensemble)
        result = tie_lite.generate(chosen, problem["prompt"], config, ensemble)
        assert [r["leader"] for r in record["relays"]] == [r.leader for r in result.relays]
        for r, want in zip(record["relays"], result.relays):
            np.testing.assert_array_equal(r["scores"], want.scores)  # NaN (nothing to judge yet) equals NaN
            assert r["after"] == [r["before"][r["leader"]]] * len(chosen)
        if select == "tcc":  # the observer's own counts give the runtime's pick
            pick = min(range(len(chosen)), key=lambda m: (record["whole_tcc"][m], -record["mean_top1"][m], m))
            assert pick == record["chosen"] == result.chosen
        relays += len(record["relays"])
    assert relays >= 3


def test_the_observers_relayed_canvas_is_the_one_the_runtime_hands_over(models, monkeypatch):
    """The receiver's next step, its commits masked again, is exactly the canvas relayed_state built."""
    pair = [models["a"], models["b"]]
    variant = trained_task(pair[0])
    config = relay_evidence.task_config(pair[0], variant)
    handed = []
    original = tie_lite.relayed_state
    monkeypatch.setattr(tie_lite, "relayed_state",
                        lambda *a: handed.append(original(*a).tokens.copy()) or original(*a))
    seen = []

    class Watching(relay_evidence.Observer):
        def standing(self, m, tokens, gen_idx):
            if self.relays and self.relays[-1].after[m] is None:
                seen.append(tokens.copy())
            return super().standing(m, tokens, gen_idx)

    problem = task.make_split("validation", 1, seed=0, variant=variant)[0]
    observer = Watching(pair, problem["reasoning"], config.gen_length - config.answer_length)
    tie_lite.generate(pair, problem["prompt"], config, tie_lite.EnsembleConfig(interval=4), on_step=observer)
    assert len(seen) == len(handed) == config.gen_length // 4 - 1  # a relay every 4 positions, none at the end
    assert all(np.array_equal(s, h) for s, h in zip(seen, handed))
