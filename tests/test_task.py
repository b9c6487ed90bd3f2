"""The training task's variants (train/task.py): the short splits the shipped models were measured on
stay as they were, the long variant's reasoning is the chain it restates, held-out phrasings are new."""

from __future__ import annotations

import re
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "train"))
import task  # noqa: E402


def test_the_short_splits_are_the_ones_the_shipped_models_were_measured_on():
    first = task.make_split("validation", 2, seed=0)
    assert [p["prompt"] for p in first] == ["Compute 7 - 6 + 8.", "Work out (9 - 8) * 5."]
    assert first[0]["reasoning"] == "7-6=1. 1+8=9." and first[0]["answer"] == "9"


@pytest.mark.parametrize("variant", ["long", "hard", "chain", "chain80"])
def test_every_restated_expression_evaluates_to_the_answer(variant):
    limits = task.TASKS[variant]
    for problem in task.make_split("validation", 300, seed=0, variant=variant):
        steps = problem["reasoning"].split(". ")
        assert len(problem["reasoning"]) <= limits.R
        assert len(steps) == problem["key"].count("(") and min(limits.n_ops) <= len(steps) <= max(limits.n_ops)
        for step in steps:
            done, _, left = step.rstrip(".").partition(", ")
            operation, result = done.split("=")
            assert eval(operation) == int(result)  # noqa: S307 (digits and + - * only, checked below)
            assert re.fullmatch(r"[0-9+\-*()]+", operation + left)
            if left:  # what is left starts from this step's result and comes to the answer
                assert left.lstrip("(").startswith(result) and eval(left) == int(problem["answer"])  # noqa: S307


def test_hard_is_the_long_variants_four_to_six_operations():
    assert task.TASKS["hard"].n_ops == (4, 5, 6)
    assert {p["key"].count("(") for p in task.make_split("test", 200, variant="hard")} == {4, 5, 6}


def test_no_problem_changes_split_between_variants_and_phrasings():
    keys = {split: {p["key"] for v in ("short", "long") for p in task.make_split(split, 300, variant=v)}
            for split in ("train", "validation", "test")}
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_held_out_phrasings_are_none_of_the_trained_ones_and_never_train():
    prompts = [p["prompt"] for p in task.make_split("test", 200, phrasings="held-out")]
    trained = [re.escape(t).replace(re.escape("{e}"), ".+") for t in task.TEMPLATES]
    assert not any(re.fullmatch(t, p) for t in trained for p in prompts)
    with pytest.raises(ValueError, match="evaluation splits only"):
        task.make_split("train", 10, phrasings="held-out")


def test_unknown_variants_and_phrasings_are_named():
    with pytest.raises(ValueError, match="'longer'"):
        task.make_split("test", 1, variant="longer")
    with pytest.raises(ValueError, match="'novel'"):
        task.make_split("test", 1, phrasings="novel")


def test_ops_weighs_the_numbers_of_operations_and_keeps_the_split():
    counts = {}
    problems = task.make_split("train", 3000, seed=1, variant="chain80", ops=(2, 2, 3, 3, 4, 5, 6))
    for problem in problems:
        n = problem["key"].count("(")
        counts[n] = counts.get(n, 0) + 1
    assert set(counts) == {2, 3, 4, 5, 6}
    # 2 and 3 are drawn twice as often as each longer count, which also fails the value limits more often
    assert min(counts[2], counts[3]) > 1.5 * max(counts[4], counts[5], counts[6])
    assert {task._split_of(p["key"]) for p in problems} == {"train"}
    assert {p["key"].count("(") for p in task.make_split("validation", 100, variant="chain80", ops=(2,))} == {2}
    for bad in ((), (0, 2), (2, -1)):
        with pytest.raises(ValueError, match="ops must be positive"):
            task.make_split("train", 1, variant="chain80", ops=bad)
