"""TIE: signals, token change count, scores, relay and final selection."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import tie_lite
from tie_lite import AnswerSignals, DecodeConfig, EnsembleConfig
from tolerances import EPS32

EOS = 3
INFILL = DecodeConfig(gen_length=48, answer_length=16, block_size=16)


def signals(top1_id, tracked):
    n = len(top1_id)
    return AnswerSignals(np.array(tracked, bool), np.array(top1_id), np.full(n, 0.5), np.full(n, -1.0),
                         np.full(n, 0.1))


# --- signals and tracked positions -------------------------------------------------------------

def test_tracked_positions_drop_unmasked_and_eos_and_keep_first_k():
    is_masked = np.array([True, True, False, True, True, True])
    top1 = np.array([7, EOS, 7, 8, 9, 10])
    assert tie_lite.tracked_positions(is_masked, top1, [EOS]).tolist() == [1, 0, 0, 1, 1, 1]
    assert tie_lite.tracked_positions(is_masked, top1, [EOS], first_k=2).tolist() == [1, 0, 0, 1, 0, 0]


def test_answer_signals_hand_computed():
    top_ids = np.array([[4, 5], [6, 4]])
    top_probs = np.array([[0.7, 0.2], [0.4, 0.35]], np.float32)
    entropy = np.array([0.8, 1.2], np.float32)
    s = tie_lite.answer_signals(top_ids, top_probs, entropy, np.array([True, True]), [EOS])
    assert s.top1_id.tolist() == [4, 6]
    # the inputs are float32 roundings of the decimals, each off by <= EPS32 / 2 relative; the float64
    # arithmetic after adds nothing comparable: rtol EPS32, and for the margin p1 - p2 (a difference
    # of two such roundings) atol EPS32 / 2 * (p1 + p2) <= EPS32
    np.testing.assert_allclose(s.top1, [0.7, 0.4], rtol=EPS32, atol=0)
    np.testing.assert_allclose(s.margin, [0.5, 0.05], rtol=0, atol=EPS32)
    np.testing.assert_allclose(s.neg_entropy, [-0.8, -1.2], rtol=EPS32, atol=0)


@pytest.mark.parametrize("metric", ["top1", "entropy", "margin"])
def test_a_peaked_distribution_outranks_a_flat_one_for_every_signal(metric):
    def from_probs(p):
        p = np.array(p)
        order = np.argsort(-p)
        entropy = -(p * np.log(p)).sum()
        return tie_lite.answer_signals(order[None, :2], p[order][None, :2], np.array([entropy]),
                                       np.array([True]), [EOS])

    peaked, flat = from_probs([0.85, 0.05, 0.05, 0.05]), from_probs([0.25, 0.25, 0.25, 0.25])
    assert tie_lite.mean_over_tracked(peaked, metric) > tie_lite.mean_over_tracked(flat, metric)


def test_mean_over_tracked_is_nan_for_an_empty_set():
    assert np.isnan(tie_lite.mean_over_tracked(signals([1, 2], [False, False]), "top1"))


# --- pseudo-likelihood numerics ------------------------------------------------------------------

def test_interleaved_groups_deal_every_index_once():
    assert [g.tolist() for g in tie_lite.interleaved_groups(5, 2)] == [[0, 2, 4], [1, 3]]
    assert [g.tolist() for g in tie_lite.interleaved_groups(2, 4)] == [[0], [1]]  # no empty groups
    assert [g.tolist() for g in tie_lite.interleaved_groups(2, 10 ** 12)] == [[0], [1]]  # at once, not 10^12 turns
    assert tie_lite.interleaved_groups(0, 4) == []


def test_log_probs_at_hand_computed():
    logits = np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]], np.float32)  # (2, 2): p = (1/4, 3/4), (1/2, 1/2)
    got = tie_lite.log_probs_at(logits, np.array([1, 0]))
    # log(3) rounded to float32 moves p by its relative rounding (<= EPS32): log p by about as much
    assert got == pytest.approx([np.log(0.75), np.log(0.5)], abs=4 * EPS32)


# --- token change count -------------------------------------------------------------------------

def test_token_change_count_normalises_by_tracked_set_size():
    window = [signals([5, 6, 7, 8], [1, 1, 1, 0]),  # pair 1: of positions 0-2, only 1 changes -> 1/3
              signals([5, 9, 7, 8], [1, 1, 0, 0]),  # pair 2: of positions 0-1, only 0 changes -> 1/2
              signals([6, 9, 1, 1], [1, 1, 0, 0])]  # positions outside A(t) changing do not count
    assert tie_lite.token_change_count(window) == pytest.approx(1 / 3 + 1 / 2)


def test_token_change_count_empty_tracked_set_contributes_zero():
    window = [signals([5, 6], [0, 0]), signals([7, 8], [1, 1]), signals([7, 9], [0, 0])]
    assert tie_lite.token_change_count(window) == pytest.approx(0.5)
    assert tie_lite.token_change_count(window[:1]) == 0.0


# --- leader, change rate, configuration --------------------------------------------------------

def test_leader_ties_go_to_the_lower_index_and_nan_never_leads():
    assert tie_lite.leader_of(np.array([0.2, 0.5, 0.5])) == 1
    assert tie_lite.leader_of(np.array([np.nan, -3.0])) == 1
    assert tie_lite.leader_of(np.array([np.nan, np.nan])) == 0


def test_leader_ties_go_to_the_higher_tiebreak_then_the_lower_index():
    assert tie_lite.leader_of(np.array([0.0, 0.0, -1.0]), np.array([0.4, 0.6, 0.9])) == 1
    assert tie_lite.leader_of(np.array([0.0, 0.0]), np.array([np.nan, 0.1])) == 1
    assert tie_lite.leader_of(np.array([0.0, 0.0]), np.array([0.3, 0.3])) == 0
    assert tie_lite.leader_of(np.array([-0.5, 0.0]), np.array([0.9, 0.1])) == 1  # only ties look at it


def test_window_top1_averages_the_steps_with_tracked_positions():
    def step(top1, tracked):
        return AnswerSignals(np.array(tracked, bool), np.zeros(len(top1), np.int64), np.array(top1),
                             np.zeros(len(top1)), np.zeros(len(top1)))
    window = [step([0.2, 0.6], [1, 1]), step([0.9, 0.5], [0, 1]), step([0.7, 0.7], [0, 0])]
    assert tie_lite.window_top1(window) == pytest.approx((0.4 + 0.5) / 2)
    assert np.isnan(tie_lite.window_top1(window[2:])) and np.isnan(tie_lite.window_top1([]))


def test_trace_names_the_mean_top1_that_broke_a_tie():
    names = ["a", "b", "c"]
    tied = tie_lite.Relay(16, (-1.0, 0.0, 0.0), 2, True, top1=(0.95, 0.5, 0.75))
    assert tie_lite.relay_line(tied, names) == ("relay at step 16: a=-1.0000  b=0.0000  c=0.0000  "
                                                "tie, mean top-1: b=0.5000  c=0.7500  -> c (leader changed)")
    clear = tie_lite.Relay(32, (0.0, -2.0, float("nan")), 0, False, top1=(0.5, 0.9, 0.9))
    assert tie_lite.relay_line(clear, names) == "relay at step 32: a=0.0000  b=-2.0000  c=nan  -> a"
    assert tie_lite.relay_json(tied, names)["top1"] == {"a": 0.95, "b": 0.5, "c": 0.75}


def test_leader_change_rate():
    relays = [tie_lite.Relay(16, (0, 1), 1, False), tie_lite.Relay(32, (1, 0), 0, True),
              tie_lite.Relay(48, (1, 0), 0, False)]
    assert tie_lite.leader_change_rate(relays) == 0.5
    assert tie_lite.leader_change_rate(relays[:1]) is None
    assert tie_lite.leader_change_rate(relays[:1], chosen=0) == 1.0  # the final pick leads the last interval
    assert tie_lite.leader_changes(relays, chosen=0) == (1, 3)


@pytest.mark.parametrize("kwargs,named", [
    (dict(interval=0), "interval"),
    (dict(parallel="False"), "parallel must be True or False, got 'False'"),
    (dict(cross_model=None), "cross_model must be True or False, got None"),
    (dict(select=None), "select must be one of"),
    (dict(score="vibes"), "vibes"),
    (dict(select="best-model:"), "best-model:"),
    (dict(select="loudest"), "loudest"),
    (dict(first_k=0), "first_k"),
    (dict(pll_groups=0), "pll_groups"),
    (dict(pll_groups=1.5), "pll_groups"),
    (dict(score="tcc", select="tcc", cross_model=False), "cross_model"),
])
def test_ensemble_config_rejects_bad_values(kwargs, named):
    with pytest.raises(tie_lite.ConfigError, match=named):
        EnsembleConfig(**kwargs)


def test_source_only_applies_to_a_pll_final_pick():
    assert not EnsembleConfig(score="tcc", select="pll", cross_model=False).cross_model


def test_relay_json_writes_undefined_values_as_null():
    relay = tie_lite.Relay(steps=8, scores=(float("nan"), -0.5), leader=1, changed=False, top1=(float("nan"), 0.9))
    out = tie_lite.relay_json(relay, ["a", "b"])
    assert json.loads(json.dumps(out, allow_nan=False)) == {
        "steps": 8, "scores": {"a": None, "b": -0.5}, "leader": "b", "changed": False, "top1": {"a": None, "b": 0.9}}


# --- with models ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert(tiny_bert):
    return tie_lite.Model.load(tiny_bert[1], threads=1)


@pytest.fixture(scope="module")
def modernbert(tiny_modernbert):
    return tie_lite.Model.load(tiny_modernbert[1], threads=1)


@pytest.fixture(scope="module")
def char(tiny_char):
    return tie_lite.Model.load(tiny_char[1], threads=1)


PROMPT = "what is two plus three ?"


def make_run(model, prompt=PROMPT, config=INFILL, seed=0):
    canvas = tie_lite.build_canvas(model, prompt, config)
    state = tie_lite.DecodeState(canvas, np.random.default_rng(seed), track=True)
    return tie_lite.Run(model, state)


@pytest.mark.torch
def test_one_model_is_the_single_model_decode(bert):
    alone = tie_lite.generate(bert, PROMPT, INFILL)
    via_list = tie_lite.generate([bert], PROMPT, INFILL)
    assert via_list.tokens.tolist() == alone.tokens.tolist() and via_list.text == alone.text


@pytest.mark.torch
@pytest.mark.parametrize("score", ["tcc", "top1", "entropy", "margin", "pll"])
@pytest.mark.parametrize("select", ["tcc", "pll"])
def test_a_model_ensembled_with_itself_gives_its_single_output(bert, tiny_bert, score, select, tmp_path):
    # exact, not within float32's reach: the twin is the same graph at the same thread count, so its
    # statistics are bitwise bert's and the scores tie exactly (ties -> model 0). The tokens would survive
    # float32-sized differences (logits jittered by +-delta, tests/tolerances.py, in each model apart),
    # the exact score ties, and so the leaders, would not.
    shutil.copytree(tiny_bert[1], tmp_path / "twin")  # the same weights under another name
    manifest = json.loads((tmp_path / "twin" / "tie_lite.json").read_text())
    (tmp_path / "twin" / "tie_lite.json").write_text(json.dumps({**manifest, "name": "twin"}))
    twin = tie_lite.Model.load(tmp_path / "twin", threads=1)
    alone = tie_lite.generate(bert, PROMPT, INFILL)
    both = tie_lite.generate([bert, twin], PROMPT, INFILL, EnsembleConfig(interval=8, score=score, select=select))
    assert both.tokens.tolist() == alone.tokens.tolist()
    assert [c.tokens.tolist() for c in both.candidates] == [alone.tokens.tolist()] * 2
    assert len(both.relays) == 48 // 8 - 1 and all(r.leader == 0 for r in both.relays)  # ties -> model 0
    assert both.chosen == 0


def canvas_with(model, reasoning_ids, answer_ids=()):
    """INFILL's canvas of PROMPT with the reasoning region starting with reasoning_ids, the rest masked
    (or the given answer ids at the answer's start)."""
    canvas = tie_lite.build_canvas(model, PROMPT, INFILL)
    canvas.tokens[canvas.gen_idx[: len(reasoning_ids)]] = reasoning_ids
    canvas.tokens[canvas.answer_idx[: len(answer_ids)]] = answer_ids
    return canvas


@pytest.mark.torch
def test_scored_reasoning_is_the_clean_prefix_through_its_first_stop(bert):
    words = bert.encode("the cat is big").tolist()
    eos, mask = bert.manifest.eos_id, bert.manifest.mask_id
    canvas = canvas_with(bert, words + [mask] + words)  # after a mask: not committed yet
    assert tie_lite.scored_reasoning(bert, canvas).tolist() == canvas.gen_idx[: len(words)].tolist()
    canvas = canvas_with(bert, words + [eos, eos] + words)  # ended: its first stop id is scored too
    assert tie_lite.scored_reasoning(bert, canvas).tolist() == canvas.gen_idx[: len(words) + 1].tolist()
    assert tie_lite.scored_reasoning(bert, canvas_with(bert, [])).size == 0


@pytest.mark.torch
def test_reasoning_log_likelihood_masks_each_group_and_the_answer(bert):
    words = bert.encode("the cat is big .").tolist()  # 5 or more tokens: 2 groups both non-empty
    canvas = canvas_with(bert, words)
    scored = canvas.gen_idx[: len(words)]
    mask = bert.manifest.mask_id
    expected = []
    for i, position in enumerate(scored):  # one group per token: each token masked alone
        tokens = canvas.tokens.copy()
        tokens[position] = mask
        probs = tie_lite.softmax(bert.stats(tokens, np.array([position]), with_logits=True).logits)  # (1, V)
        expected.append(np.log(probs[0, words[i]]))
    value, calls = tie_lite.reasoning_log_likelihood(bert, canvas, groups=len(words))
    # float32 softmax then log against log_probs_at's float64 log-sum-exp: a few float32 roundings per token
    assert calls == len(words) and value == pytest.approx(np.mean(expected), abs=16 * EPS32)
    grouped, calls = tie_lite.reasoning_log_likelihood(bert, canvas, groups=2)
    assert calls == 2 and grouped != pytest.approx(value, abs=16 * EPS32)  # neighbours masked together
    # the answer is masked throughout: whatever it holds does not move the score
    answered = canvas_with(bert, words, answer_ids=words[:3])
    assert tie_lite.reasoning_log_likelihood(bert, answered, groups=2)[0] == grouped
    assert np.isnan(tie_lite.reasoning_log_likelihood(bert, canvas_with(bert, []), groups=2)[0])


@pytest.mark.torch
def test_pll_final_pick_is_the_reasoning_every_judge_finds_likeliest(bert, modernbert):
    runs = [make_run(bert), make_run(modernbert)]
    for run, text in zip(runs, ["the cat is big .", "is is the the ."]):
        words = bert.encode(text)  # the tiny models share one tokenizer
        run.state.tokens[run.state.canvas.gen_idx[: len(words)]] = words
    ensemble = EnsembleConfig(select="pll", pll_groups=2)
    mean = [np.mean([tie_lite.reasoning_log_likelihood(judge.model, run.state.canvas, 2)[0] for judge in runs])
            for run in runs]
    assert mean[0] != mean[1]
    for top1 in ((0.1, 0.9), (0.9, 0.1)):  # the mean top-1 only breaks ties
        for run, p in zip(runs, top1):
            run.top1_total, run.top1_steps = p, 1
        assert tie_lite.select_final(runs, PROMPT, INFILL, ensemble) == int(np.argmax(mean))


@pytest.mark.torch
def test_pll_relay_and_final_pick_count_their_forward_passes(bert, modernbert):
    words = bert.encode("the cat is big .").tolist()  # 5 or more tokens: every group non-empty below
    runs = [make_run(bert), make_run(modernbert)]
    for run in runs:
        run.state.tokens[run.state.canvas.gen_idx[: len(words)]] = words
    ensemble = EnsembleConfig(score="pll", select="pll", pll_groups=3)
    record = tie_lite.relay(runs, PROMPT, INFILL, ensemble, previous=None)
    assert record.scores[0] == record.scores[1]  # the same reasoning under the same judges: a tie
    assert [r.scoring_calls for r in runs] == [2 * 3, 2 * 3]  # each model judges both trajectories
    runs[1].top1_total, runs[1].top1_steps = 0.9, 1  # the tie goes to the higher mean top-1
    assert tie_lite.select_final(runs, PROMPT, INFILL, ensemble) == 1
    assert [r.scoring_calls for r in runs] == [4 * 3, 4 * 3]
    alone = EnsembleConfig(score="pll", cross_model=False, pll_groups=3)
    tie_lite.relay(runs, PROMPT, INFILL, alone, previous=None)
    assert [r.scoring_calls for r in runs] == [5 * 3, 5 * 3]  # source only: each judges its own


@pytest.mark.torch
def test_relay_replaces_states_and_resets_histories(bert, modernbert):
    runs = [make_run(bert), make_run(modernbert)]
    ensemble = EnsembleConfig(interval=5, score="top1")
    hook = tie_lite.step_hook(None, tie_lite.threading.Event())
    for run in runs:
        tie_lite.decode_interval(run, INFILL, ensemble, hook, tie_lite.threading.Event())
        assert len(run.window) == 5
    record = tie_lite.relay(runs, PROMPT, INFILL, ensemble, previous=None)
    winner = runs[record.leader]
    for run in runs:
        assert run.window == [] and run.pairs == 4
        assert run.state.tokens[run.state.canvas.gen_idx].tolist() == winner.state.tokens[winner.state.canvas.gen_idx].tolist()
        assert (run.state.block, run.state.block_step) == (0, 5)
    assert winner.wins == 1 and record.leader == tie_lite.leader_of(np.array(record.scores))
    assert runs[0].scoring_calls == 2 and runs[1].scoring_calls == 2  # cross-model: every model judges both


@pytest.mark.torch
def test_a_tied_relay_goes_to_the_more_confident_trajectory(bert, modernbert):
    runs = [make_run(bert), make_run(modernbert)]
    for run, top1 in zip(runs, (0.3, 0.8)):  # no answer top-1 changes in either window: tcc 0 and 0
        run.window = [AnswerSignals(np.ones(2, bool), np.array([5, 6]), np.full(2, top1), np.zeros(2),
                                    np.zeros(2)) for _ in range(3)]
    record = tie_lite.relay(runs, PROMPT, INFILL, EnsembleConfig(score="tcc"), previous=None)
    assert record.scores == (0.0, 0.0) and record.leader == 1 and runs[1].wins == 1


@pytest.mark.torch
def test_source_only_scoring_uses_only_the_source_model(bert, modernbert):
    runs = [make_run(bert), make_run(modernbert)]
    ensemble = EnsembleConfig(interval=3, score="margin", cross_model=False)
    hook = tie_lite.step_hook(None, tie_lite.threading.Event())
    for run in runs:
        tie_lite.decode_interval(run, INFILL, ensemble, hook, tie_lite.threading.Event())
    tie_lite.relay(runs, PROMPT, INFILL, ensemble, previous=None)
    assert [r.scoring_calls for r in runs] == [1, 1]


@pytest.mark.torch
def test_two_models_ensemble_runs_and_reports(bert, modernbert):
    result = tie_lite.generate([bert, modernbert], PROMPT, INFILL, EnsembleConfig(interval=16, score="tcc", select="tcc"))
    assert len(result.candidates) == 2 and result.candidates[result.chosen].text == result.text
    assert len(result.relays) == 2 and all(len(r.scores) == 2 for r in result.relays)
    assert result.model_calls == 2 * 48  # tcc scoring needs no extra forward passes
    assert not result.stopped


@pytest.mark.torch
def test_parallel_and_sequential_give_the_same_result(bert, modernbert):
    config = DecodeConfig(gen_length=48, answer_length=16, block_size=16, temperature=0.8, seed=3)
    runs = [tie_lite.generate([bert, modernbert], PROMPT, config, EnsembleConfig(interval=8, parallel=p))
            for p in (True, False, True)]
    assert runs[0].tokens.tolist() == runs[1].tokens.tolist() == runs[2].tokens.tolist()
    assert [r.leader for r in runs[0].relays] == [r.leader for r in runs[1].relays]


@pytest.mark.torch
def test_final_selection_rules(bert, modernbert):
    runs = [make_run(bert), make_run(modernbert), make_run(bert)]
    for run, (tcc, pairs, top1, wins) in zip(runs, [(2.0, 4, 0.5, 3), (1.0, 4, 0.4, 1), (1.0, 4, 0.6, 3)]):
        run.tcc_total, run.pairs, run.top1_total, run.top1_steps, run.wins = tcc, pairs, top1, 1, wins
    assert tie_lite.select_final(runs, "", None, EnsembleConfig(select="tcc")) == 2  # lowest TCC, tie -> higher mean top-1
    assert tie_lite.select_final(runs, "", None, EnsembleConfig(select="most-selected")) == 0  # tie -> lower index
    assert tie_lite.select_final(runs, "", None, EnsembleConfig(select=f"best-model:{modernbert.name}")) == 1


@pytest.mark.torch
def test_stop_from_callback_stops_every_model(bert, modernbert):
    seen = []
    result = tie_lite.generate([bert, modernbert], PROMPT, INFILL, EnsembleConfig(interval=16),
                               on_step=lambda e: seen.append(e.model) or len(seen) < 3)
    # the callback said stop on its third call; a model mid-step finishes that one step only
    assert result.stopped and 3 <= len(seen) <= 4
    assert sum(c.steps for c in result.candidates) == len(seen)


@pytest.mark.torch
def test_stop_in_sequential_ensembles_starts_no_other_step(bert, modernbert):
    seen = []
    result = tie_lite.generate([bert, modernbert], PROMPT, INFILL, EnsembleConfig(interval=16, parallel=False),
                               on_step=lambda e: seen.append(e.model) or len(seen) < 3)
    assert result.stopped and seen == [bert.name] * 3
    assert [c.steps for c in result.candidates] == [3, 0]


@pytest.mark.torch
def test_ensemble_needs_infilling_and_known_best_model(bert, modernbert):
    with pytest.raises(tie_lite.ConfigError, match="answer_length"):
        tie_lite.generate([bert, modernbert], PROMPT, DecodeConfig(gen_length=32))
    with pytest.raises(tie_lite.ConfigError, match="nobody"):
        tie_lite.generate([bert, modernbert], PROMPT, INFILL, EnsembleConfig(select="best-model:nobody"))


# --- relay across tokenizers ---------------------------------------------------------------------

@pytest.mark.torch
def test_text_relay_round_trips_the_clean_prefix(bert, char):
    source = make_run(bert)
    words = bert.encode("the cat is big .")
    gen_idx = source.state.canvas.gen_idx
    source.state.tokens[gen_idx[: words.size]] = words
    source.state.tokens[gen_idx[words.size + 2]] = words[0]  # after a mask: not part of the clean prefix
    receiver = make_run(char)
    canvas = tie_lite.view_for(source, receiver, PROMPT, INFILL)
    prefix = tie_lite.clean_prefix(char, tie_lite.DecodeState(canvas, np.random.default_rng(0)))
    assert char.detokenize(prefix) == bert.detokenize(words)
    assert canvas.tokens[: canvas.prompt_length].tolist() == receiver.state.tokens[: canvas.prompt_length].tolist()


@pytest.mark.torch
def test_text_relay_carries_an_ended_reasoning(bert, char):
    source = make_run(bert)
    gen_idx = source.state.canvas.gen_idx
    words = bert.encode("the cat")
    source.state.tokens[gen_idx[:32]] = np.concatenate([words, np.full(30, bert.manifest.eos_id)])
    canvas = tie_lite.view_for(source, make_run(char), PROMPT, INFILL)
    reasoning = canvas.tokens[canvas.gen_idx[:32]]
    assert char.detokenize(tie_lite.trim_at_stop(reasoning, char.manifest.stop_ids)) == "the cat"
    assert (reasoning[len("the cat"):] == char.manifest.eos_id).all()
    assert (canvas.tokens[canvas.answer_idx] == char.manifest.mask_id).all()


@pytest.mark.torch
@pytest.mark.parametrize("score", ["tcc", "entropy", "pll"])
def test_cross_tokenizer_ensemble_completes(bert, char, score):
    ensemble = EnsembleConfig(interval=16, score=score, select="pll" if score == "pll" else "tcc")
    result = tie_lite.generate([bert, char], PROMPT, INFILL, ensemble)
    # relays stop once a model has finished, and a text relay can hand a model a reasoning that has ended
    # (which pll's leader may do: which leader wins between random models is not pinned)
    assert len(result.candidates) == 2 and len(result.relays) in ((1, 2) if score == "pll" else (2,))
    assert all(c.steps >= 48 - 16 for c in result.candidates)
    assert all(isinstance(c.answer, str) for c in result.candidates)


@pytest.mark.torch
@pytest.mark.parametrize("extra", [dict(strategy="threshold", threshold=0.3), dict(strategy="topk"),
                                   dict(strategy="med", entropy_budget=5.0), dict(strategy="dream", steps=24),
                                   dict(eos_gamma=(0.4, 1.0))])
def test_tie_composes_with_every_decoder(bert, modernbert, extra):
    config = DecodeConfig(gen_length=48, answer_length=16, block_size=16, **extra)
    result = tie_lite.generate([bert, modernbert], PROMPT, config, EnsembleConfig(interval=4))
    assert not result.stopped and len(result.relays) >= 1
    for c in result.candidates:
        assert isinstance(c.answer, str)
    final = result.candidates[result.chosen]
    assert final.tokens.tolist() == result.tokens.tolist()


def test_models_finishing_apart_each_decode_to_their_end():
    """With early exit one model can finish while the other is still mid-block (here B exits
    after 2 steps, A needs 3): relaying stops, A decodes on, and no candidate is cut short
    with its answer still masked."""
    from conftest import ROOT

    models = [tie_lite.Model.load(ROOT / "models" / name / "onnx", threads=1) for name in ("a", "b")]
    config = DecodeConfig(**models[0].manifest.decode_defaults, strategy="threshold", threshold=0.5,
                          exit_threshold=0.9)
    result = tie_lite.generate(models, "Calculate 6 * 3 + 2.", config, EnsembleConfig(interval=2, score="tcc", select="tcc"),
                               record_history=True)
    assert [c.steps for c in result.candidates] == [3, 2]
    for candidate, model in zip(result.candidates, models):
        last = candidate.history[-1]
        answer_idx = last.gen_idx[-config.answer_length:]
        assert not np.any(last.tokens[answer_idx] == model.manifest.mask_id)
        assert candidate.answer
    assert result.model_calls == 3 + 2  # tcc scores from the histories: no extra forward passes


def test_text_relays_inside_blocks_stop_at_the_relay_budget():
    """a and d relay through text at interval 8, inside blocks of 16: each hand-over drops what the leader
    committed after its first masked position (here the EOS padding it fills first), and under pll the
    two once handed such trajectories back and forth for good. The budget, one relay per interval of the
    generation, ends that: then both decode to their own end."""
    from conftest import ROOT

    models = [tie_lite.Model.load(ROOT / "models" / name / "onnx", threads=1) for name in ("a", "d")]
    config = DecodeConfig(**models[0].manifest.decode_defaults)
    ensemble = EnsembleConfig(interval=8)
    assert tie_lite.relay_budget(config, ensemble) == config.gen_length // 8
    prompt = "Calculate 6 * 3 + 2 - 5 + 9 - 4."
    for result in (tie_lite.generate(models, prompt, config, ensemble),
                   tie_lite.generate(models, [prompt, prompt], config, ensemble)[1]):  # the batched path too
        assert 0 < len(result.relays) <= config.gen_length // 8 and not result.stopped
        assert all(c.answer is not None for c in result.candidates)
