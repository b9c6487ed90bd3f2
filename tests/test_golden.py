"""The default command's exact output, pinned: `python tie_lite.py --prompt "Compute 7 - 6 + 8."` (the
README's first command line) decodes with the shipped pair a + b and prints exactly two lines. Needs no torch.

How near a tie it sits (tests/tolerances.py): every token either model writes has log(p1 / p2) >= 17,000
float32 reaches (2 (delta + tail): 7.4e-4 for a, 8.5e-4 for b), and the answer positions' top-1 ids that
the relay's token change counts are made of >= 28 reaches (model b, step 10). Within reach is only the
order in which a step commits positions that are all near-certain (p > 0.999; mostly the EOS padding):
with every probability jittered by up to a reach (x exp(+-8.5e-4)), 19 of 40 decodes committed in another
order and moved the relay's scores ({a: -0.5, b: -2.0} here; -0.5/-4.0, -1.5/-2.0, -1.5/-4.0 there), but
none changed a text, a token, the leader or the chosen model. So the scores are held to their order, the
rest of the output exactly.
"""

from __future__ import annotations

import json

import tie_lite
from conftest import run_cli

PROMPT = "Compute 7 - 6 + 8."
TEXT = "7-6=1. 1+8=9.\nAnswer: 9"
TOKENS = [11, 78, 10, 84, 5, 79, 98, 5, 76, 12, 84, 13, 79, 13]  # a's and b's tokenizer: the same one


def test_the_default_command_prints_exactly_the_reasoning_and_the_answer():
    result = run_cli("--prompt", PROMPT)
    assert (result.returncode, result.stdout, result.stderr) == (0, TEXT + "\n", "")


def test_the_default_commands_json_pins_the_models_tokens_and_relay():
    assert tie_lite.DEFAULT_MODELS == ("a", "b")
    result = run_cli("--prompt", PROMPT, "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    out = json.loads(result.stdout)
    relays = out.pop("relays")
    assert [{k: v for k, v in r.items() if k not in ("scores", "top1")} for r in relays] == [
        {"steps": 16, "leader": "a", "changed": False}]  # one relay, half-way through the 32 positions
    scores = relays[0]["scores"]
    assert list(scores) == ["a", "b"] and scores["a"] > scores["b"]  # a leads; the values: module docstring
    candidate = dict(text=TEXT, answer="9", tokens=TOKENS, steps=32, stopped=False)
    assert out == dict(candidate, model="a", model_calls=64, chosen=0,
                       candidates=[dict(candidate, model="a", model_calls=32),
                                   dict(candidate, model="b", model_calls=32)],
                       leader_change_rate=0.0)
