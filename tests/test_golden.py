"""The default command's exact output, pinned: `python tie_lite.py --prompt "Compute 7 - 6 + 8."` (the
README's first command line) decodes with the shipped pair b + d and prints exactly two lines. Needs no torch.

b (a BERT, one token a character) and d (a Qwen3 decoder run bidirectionally, a byte-level BPE) share
no tokenizer, so TIE relays through text. Both decode 80 of their own positions (64 reasoning + 16
answer) in blocks of 16; the first relay comes after 16 committed positions. By then b has written its
whole reasoning and leads; d receives it as text, its reasoning region filled with end-of-sequence after
it, so d has only its answer left and completes it by its step 32. Relaying stops once any trajectory is
complete: this decode relays once, and b decodes to its own end (80 steps).

How near a tie it sits (tests/tolerances.py; `python tests/golden_reach.py` measures it again, for
whichever models are shipped; the numbers below are today's b and d): float32 reaches 2 (delta + tail) of
9.2e-4 for b and 1.6e-3 for d; every token either model commits has log(p1 / p2) >= 1,800 reaches, the
answer positions >= 19. The relay's pll scores (means of log-probabilities, each within a reach) differ
by 8 times the most two reaches can move them apart. At the final pick both trajectories hold the same
text, laid out alike by each judge, so each judge sees one canvas twice and the scores tie exactly on any
CPU; the tie goes to the higher mean top-1 over the decode, b's 0.985 against d's 0.803 (log ratio 0.2,
80 times b's and d's reaches together). With every probability the decode reads jittered by up to a
reach (x exp(+-reach), a pessimistic model of what another CPU may do), none of 40 decodes changed a
leader, the final pick, a text or a token (the jitter leaves pll's logits alone: the relay's scores rest
on the gap above). So all of them are pinned exactly.
"""

from __future__ import annotations

import json

import tie_lite
from conftest import run_cli

PROMPT = "Compute 7 - 6 + 8."
TEXT = "7-6=1. 1+8=9.\nAnswer: 9"
TOKENS = [11, 78, 10, 84, 5, 79, 98, 5, 76, 12, 84, 13, 79, 13]  # b's: one character a token
D_TOKENS = [25, 15, 24, 31, 19, 16, 223, 19, 13, 26, 31, 27, 16, 27]  # d's BPE merges letters only: 1 a character
GEN_LENGTH = 80  # the shipped models' decode defaults: 64 reasoning + 16 answer positions, blocks of 16
D_STEPS = 32  # 16 before the relay, then its 16 answer positions: the relay filled its reasoning


def test_the_default_command_prints_exactly_the_reasoning_and_the_answer():
    result = run_cli("--prompt", PROMPT)
    assert (result.returncode, result.stdout, result.stderr) == (0, TEXT + "\n", "")


def test_the_default_commands_json_pins_the_models_tokens_and_relay():
    assert tie_lite.DEFAULT_MODELS == ("b", "d")
    result = run_cli("--prompt", PROMPT, "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    out = json.loads(result.stdout)
    relays = out.pop("relays")
    assert [{k: v for k, v in r.items() if k not in ("scores", "top1")} for r in relays] == [
        {"steps": 16, "leader": "b", "changed": False}]  # then d is complete: module docstring
    scores = relays[0]["scores"]
    assert list(scores) == ["b", "d"] and scores["d"] < scores["b"] < 0  # by 8 x what float32 can move
    assert (out.pop("chosen"), out.pop("model")) == (0, "b")  # tied scores, b's higher mean top-1
    assert out.pop("leader_change_rate") == 0.0  # b led the relay and is the final pick
    # each scoring (the relay and the final pick) judges 2 trajectories by 2 models in 4 passes each
    scoring = 2 * 2 * tie_lite.EnsembleConfig.pll_groups
    b = dict(text=TEXT, answer="9", tokens=TOKENS, steps=GEN_LENGTH, stopped=False)
    d = dict(b, tokens=D_TOKENS, steps=D_STEPS)
    assert out == dict(b, model_calls=GEN_LENGTH + D_STEPS + 2 * scoring,
                       candidates=[dict(b, model="b", model_calls=GEN_LENGTH + scoring),
                                   dict(d, model="d", model_calls=D_STEPS + scoring)])
