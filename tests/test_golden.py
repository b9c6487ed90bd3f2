"""The default command's exact output, pinned: `python tie_lite.py --prompt "Compute 7 - 6 + 8."` (the
README's first command line) decodes with the shipped pair a + b and prints exactly two lines. Needs no torch.

The shipped models decode 80 positions (64 reasoning + 16 answer) in blocks of 16, so TIE relays at steps
16, 32, 48 and 64, at block boundaries. Both models write the same text, so at every relay the two
trajectories are the same canvas, judged by the same models in the same passes: their pll scores are equal
on any CPU, and each relay's leader is the trajectory with the higher mean top-1 (a at step 16, b from step
32 on). The final pick, tied too, goes by the mean top-1 over the whole decode: a (0.998 against b's 0.985).

How near a tie it sits (tests/tolerances.py; `python tests/golden_reach.py` measures it again, for
whichever models are shipped; the numbers below are today's a and b): every token either model writes
has log(p1 / p2) >= 5,000 float32 reaches (2 (delta + tail): 9.2e-4 for a and b), and the answer
positions >= 1,800 reaches. The mean top-1s that pick the leaders are near-certain (a 0.9995, b 0.99997
from step 32 on: log ratio 4.3e-4), and a probability p near 1 moves by at most 2 (1 - p) delta + tail in
log, far below that; the final pick's log ratio is 0.013, 14 reaches. Within reach is only the order in
which a step commits positions that are all near-certain (mostly the EOS padding), and a relay at a block
boundary sees every position of its blocks committed whatever the order: with every probability jittered
by up to a reach (x exp(+-9.2e-4), a pessimistic model of exactly that), none of 40 decodes changed a
leader, the final pick, a text or a token (the jitter leaves pll's logits alone: what keeps the scores
equal is that the two canvases are one, judged alike). So all of them are pinned exactly.
"""

from __future__ import annotations

import json

import tie_lite
from conftest import run_cli

PROMPT = "Compute 7 - 6 + 8."
TEXT = "7-6=1. 1+8=9.\nAnswer: 9"
TOKENS = [11, 78, 10, 84, 5, 79, 98, 5, 76, 12, 84, 13, 79, 13]  # a's and b's tokenizer: the same one
GEN_LENGTH = 80  # the shipped models' decode defaults: 64 reasoning + 16 answer positions, blocks of 16


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
        {"steps": 16, "leader": "a", "changed": False},  # a relay every 16 of the 80 positions
        {"steps": 32, "leader": "b", "changed": True},
        {"steps": 48, "leader": "b", "changed": False},
        {"steps": 64, "leader": "b", "changed": False}]
    for relay in relays:  # the values: module docstring
        scores, top1 = relay["scores"], relay["top1"]
        assert list(scores) == ["a", "b"] and scores["a"] == scores["b"] < 0  # one canvas, judged alike
        assert max(top1, key=top1.get) == relay["leader"]  # so the higher mean top-1 leads
    assert (out.pop("chosen"), out.pop("model")) == (0, "a")  # the final pick: module docstring
    # the leaders a, b, b, b, then the final pick a: two changes in 4 hand-overs
    assert out.pop("leader_change_rate") == 0.5
    # each scoring (4 relays and the final pick) judges 2 trajectories by 2 models in 4 passes each
    scoring = 5 * 2 * tie_lite.EnsembleConfig.pll_groups
    candidate = dict(text=TEXT, answer="9", tokens=TOKENS, steps=GEN_LENGTH, stopped=False)
    assert out == dict(candidate, model_calls=2 * (GEN_LENGTH + scoring),
                       candidates=[dict(candidate, model="a", model_calls=GEN_LENGTH + scoring),
                                   dict(candidate, model="b", model_calls=GEN_LENGTH + scoring)])
