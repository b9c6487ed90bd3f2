"""How near a tie the default command's pinned output sits (tests/test_golden.py's docstring), for the
shipped default pair: each model's float32 reach (tests/tolerances.py), the smallest log(p1 / p2) of a
committed token and of an answer position in reaches, the gap between the best and the next score at
every relay and at the final pick (and, where they tie exactly, between their tie-breaking mean top-1s),
and 40 decodes with every probability jittered by up to a reach: which of them change the scores, the
leaders, the final pick, a text or a token.

    python tests/golden_reach.py      # ~30 s
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import tie_lite  # noqa: E402
from tolerances import float32_reach, model_dims  # noqa: E402

PROMPT = "Compute 7 - 6 + 8."
names = list(tie_lite.DEFAULT_MODELS)
folders = [ROOT / "models" / n / "onnx" for n in names]
models = [tie_lite.Model.load(f) for f in folders]
orig = tie_lite.Model.stats
calls = {}
mode = {"jitter": None, "rng": None, "record": False, "zmax": {}}


def stats(self, tokens, positions, with_logits=False):
    s = orig(self, tokens, positions, True)
    name = self.manifest.name
    live = np.abs(s.logits) < 1e30
    mode["zmax"][name] = max(mode["zmax"].get(name, 0.0), float(np.abs(s.logits[live]).max()))
    if mode["record"] and not with_logits:  # a decode step's read (pll's scoring passes read logits)
        calls.setdefault(name, []).append((positions.copy(), s.top_ids.copy(), s.top_probs.astype(np.float64)))
    if mode["jitter"]:
        r = mode["jitter"][name]
        probs = (s.top_probs * np.exp(mode["rng"][name].uniform(-r, r, s.top_probs.shape))).astype(np.float32)
        s = tie_lite.Stats(s.top_ids, probs, s.entropy, s.logits)
    return s if with_logits else tie_lite.Stats(s.top_ids, s.top_probs, s.entropy, None)


picks = []
orig_leader_of = tie_lite.leader_of


def leader_of(scores, tiebreak=None):
    if mode["record"]:
        tiebreak = None if tiebreak is None else np.array(tiebreak, np.float64)
        picks.append((np.array(scores, np.float64), tiebreak))
    return orig_leader_of(scores, tiebreak)


tie_lite.Model.stats = stats
tie_lite.leader_of = leader_of
mode["record"] = True
base = tie_lite.generate(models, PROMPT, record_history=True)
mode["record"] = False
L = base.tokens.size
reach = {}
for n, f, m in zip(names, folders, models):
    N, K = model_dims(f, m.manifest.max_length)
    z = mode["zmax"][n]
    r = float32_reach([np.array([[z, -z]])], N, K)
    reach[n] = r.log_prob
print("reach (log p):", reach, "zmax", mode["zmax"])
# min log(p1/p2) at committed positions, and at answer positions read, in reaches
for cand in base.candidates:
    n = cand.model
    rec = calls[n]
    worst_commit, worst_answer = np.inf, np.inf
    answer_idx = None
    for (pos, ids, probs), ev in zip(rec, cand.history):
        lr = np.log(np.maximum(probs[:, 0], 1e-38)) - np.log(np.maximum(probs[:, 1], 1e-38))
        where = {int(p): i for i, p in enumerate(pos)}
        for p in ev.committed_idx:
            worst_commit = min(worst_commit, lr[where[int(p)]] / reach[n])
        gen = ev.gen_idx
        ans = gen[-models[0].manifest.decode_defaults["answer_length"]:]
        rows = [where[int(p)] for p in ans if int(p) in where]
        if rows:
            worst_answer = min(worst_answer, lr[rows].min() / reach[n])
    print(n, "steps", len(rec), "min log(p1/p2)/reach: committed", round(worst_commit, 1), "answer positions", round(worst_answer, 1))


# a score is a mean of log-probabilities, each within a reach of its judge's: a gap between two scores
# can move by at most twice the largest reach
worst = max(reach.values())
for i, (scores, tiebreak) in enumerate(picks):
    what = f"relay {i + 1}" if i < len(base.relays) else "final pick"
    top = np.sort(scores)[::-1]
    line = f"{what}: scores {np.round(scores, 5).tolist()}, gap {(top[0] - top[1]) / (2 * worst):.1f} x 2 reaches"
    if top[0] == top[1] and tiebreak is not None:
        t = np.sort(tiebreak)[::-1]
        line += f"; tied exactly, mean top-1s {np.round(tiebreak, 5).tolist()}, log ratio {np.log(t[0] / t[1]):.2e}"
    print(line)


def summary(r):
    return (r.text, r.tokens.tolist(), r.model, r.chosen, [(x["leader"], x["changed"]) for x in [tie_lite.relay_json(y, names) for y in r.relays]])
ref = summary(base)
print("base", json.dumps([tie_lite.relay_json(y, names) for y in base.relays]))
mode["jitter"] = reach
other_scores, other = {}, 0
for seed in range(40):
    mode["rng"] = {n: np.random.default_rng([seed, i]) for i, n in enumerate(names)}  # the models step in threads
    r = tie_lite.generate(models, PROMPT)
    rel = [tie_lite.relay_json(y, names) for y in r.relays]
    key = json.dumps([x["scores"] for x in rel])
    other_scores[key] = other_scores.get(key, 0) + 1
    if summary(r) != ref:
        other += 1
        print("DIFFERENT", seed, summary(r))
print("scores seen:", other_scores)
print("decodes differing in text/tokens/leaders/choice:", other, "of 40")
