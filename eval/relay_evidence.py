"""Per-relay evidence for TIE: which models were on a correct trajectory before each relay and after it.

    python eval/relay_evidence.py --split validation --n 500 [--models a b] [--intervals 4 8 16]
                                  [--task short|chain80|hard|...] [--score tcc] [--select tcc] [--workers 2]

Decodes each problem with TIE over the given models at every interval given, watching the decode
through the public `on_step` callback only (its StepEvents and Relays), and once with no relay
(post-generation selection: evaluate.py's "post-generation" row, an interval longer than the
generation). Prints, per interval: accuracy, relays per decode, the leader change rate, the
hand-overs (a model's state replaced by the leader's) from a trajectory on track to one off it and
back, how the leader was chosen where the models disagreed, and per model its relay wins and final
picks with their correctness.

A trajectory is **on track** when its committed reasoning agrees with the problem's reference
reasoning: the reasoning region's clean prefix (its ids up to the first still-masked position, what
a text relay carries), cut at the first stop id and decoded to text, is a prefix of the reference
text; once the reasoning has ended (a stop id, or the region is full) it must equal the reference.
The comparison is in text, so models with different tokenizers compare alike. Committed ids after
the first mask are ignored; with one token per step and the interval a multiple of the block size
(the shipped models' block of 4 at intervals 4, 8, 16) a relay falls on a block boundary and there are none.

Before a relay, a model's standing is read from its last step's canvas. After it, from the model's
next step: that step's canvas with the positions it committed masked again is exactly the canvas the
relay handed it (the leader's ids, or for a model of another tokenizer the leader's text re-encoded).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "train"))

import task  # noqa: E402
import tie_lite  # noqa: E402

POST_GENERATION = 10_000  # an interval longer than any generation: no relay, the final pick alone


# ---------------------------------------------------------------------------
# on track
# ---------------------------------------------------------------------------

def reasoning_so_far(model: tie_lite.Model, tokens: np.ndarray, gen_idx: np.ndarray,
                     reasoning_length: int) -> tuple[str, bool]:
    """A canvas's (L,) committed reasoning as text, and whether it has ended (a stop id, or full)."""
    m = model.manifest
    ids = tokens[gen_idx[:reasoning_length]]  # (R,)
    prefix = ids[: tie_lite.first_index(ids, [m.mask_id])]
    kept = tie_lite.trim_at_stop(prefix, m.stop_ids)
    text = tie_lite.cut_at_stop_text(model.detokenize(kept), m.stop_texts)
    return text, kept.size < prefix.size or prefix.size == reasoning_length


def on_track(text: str, ended: bool, reference: str) -> bool:
    """Committed reasoning agrees with the reference: a prefix of it, or all of it once ended."""
    return text == reference if ended else reference.startswith(text)


# ---------------------------------------------------------------------------
# watching one decode
# ---------------------------------------------------------------------------

@dataclass
class RelayRecord:
    steps: int             # steps the leader had decoded
    scores: tuple          # (M,) trajectory scores
    leader: int
    before: list           # (M,) bool: each model on track before the relay
    after: list            # (M,) bool, None until the model's next step shows its relayed canvas


@dataclass
class Observer:
    """on_step for one TIE decode: each model's standing before and after every relay, and its own
    token change count per window (the windows reset at relays, as the runtime's do)."""

    models: list                       # (M,) tie_lite.Model, in ensemble order
    reference: str                     # the problem's reference reasoning
    reasoning_length: int              # R
    last: dict = field(default_factory=dict)      # model index -> (tokens, gen_idx) after its last step
    relays: list = field(default_factory=list)    # RelayRecord per relay
    windows: list = field(default_factory=list)   # (M,) lists of AnswerSignals of the open window
    tcc: list = field(default_factory=list)       # (M,) [summed count, step pairs] over closed windows
    top1: list = field(default_factory=list)      # (M,) lists of the mean top-1 probability over A(t), per step

    def __post_init__(self):
        self.index = {m.name: i for i, m in enumerate(self.models)}
        self.windows = [[] for _ in self.models]
        self.tcc = [[0.0, 0] for _ in self.models]
        self.top1 = [[] for _ in self.models]

    def __call__(self, event) -> None:
        if isinstance(event, tie_lite.Relay):
            self.relay(event)
            return
        m = self.index[event.model]
        if self.relays and self.relays[-1].after[m] is None:
            relayed = event.tokens.copy()
            relayed[event.committed_idx] = self.models[m].manifest.mask_id  # the canvas before this step
            self.relays[-1].after[m] = self.standing(m, relayed, event.gen_idx)
        self.last[m] = (event.tokens, event.gen_idx)
        self.windows[m].append(event.signals)
        mean = tie_lite.mean_over_tracked(event.signals, "top1")
        if not np.isnan(mean):
            self.top1[m].append(mean)

    def standing(self, m: int, tokens: np.ndarray, gen_idx: np.ndarray) -> bool:
        return on_track(*reasoning_so_far(self.models[m], tokens, gen_idx, self.reasoning_length), self.reference)

    def relay(self, event: tie_lite.Relay) -> None:
        before = [self.standing(m, *self.last[m]) for m in range(len(self.models))]
        after = [before[m] if m == event.leader else None for m in range(len(self.models))]
        self.relays.append(RelayRecord(event.steps, event.scores, event.leader, before, after))
        self.close_windows()

    def close_windows(self) -> None:
        for m, window in enumerate(self.windows):
            self.tcc[m][0] += tie_lite.token_change_count(window)
            self.tcc[m][1] += max(len(window) - 1, 0)
        self.windows = [[] for _ in self.models]

    def whole_tcc(self) -> list:
        """(M,) each model's token change count over the decode, per step pair (the final pick's)."""
        self.close_windows()
        return [total / pairs if pairs else 0.0 for total, pairs in self.tcc]


def decode_problem(models: list, problem: dict, config: tie_lite.DecodeConfig,
                   ensemble: tie_lite.EnsembleConfig) -> dict:
    """One TIE decode of `problem`, watched: its outcome and every relay's record, as plain data."""
    observer = Observer(models, problem["reasoning"], config.gen_length - config.answer_length)
    result = tie_lite.generate(models, problem["prompt"], config, ensemble, on_step=observer)
    changes, handovers = tie_lite.leader_changes(result.relays, result.chosen)
    return {"correct": task.is_correct(result.answer or "", problem), "chosen": result.chosen,
            "candidates": [task.is_correct(c.answer or "", problem) for c in result.candidates],
            "relays": [dataclasses.asdict(r) for r in observer.relays], "changes": changes,
            "handovers": handovers, "whole_tcc": observer.whole_tcc(),
            "mean_top1": [float(np.mean(t)) if t else 0.0 for t in observer.top1]}


# ---------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------

def task_config(model: tie_lite.Model, variant: str) -> tie_lite.DecodeConfig:
    """The task variant's layout (reasoning R + answer A), in the first model's block size."""
    layout = task.TASKS[variant]
    block = model.manifest.decode_defaults.get("block_size", tie_lite.FALLBACK_LENGTHS["block_size"])
    return tie_lite.DecodeConfig(gen_length=layout.R + layout.A, answer_length=layout.A, block_size=block)


def run_share(job: tuple) -> list:
    """One worker's share: (model folders, variant, ensemble, problems) -> decode_problem per problem."""
    folders, variant, ensemble, problems = job
    models = [tie_lite.Model.load(f, threads=1) for f in folders]
    config = task_config(models[0], variant)
    return [decode_problem(models, p, config, ensemble) for p in problems]


def run_parallel(folders: list, variant: str, ensemble: tie_lite.EnsembleConfig, problems: list,
                 workers: int) -> list:
    """run_share over `workers` processes; records in problem order."""
    shares = [problems[i::workers] for i in range(workers)]
    jobs = [(folders, variant, ensemble, share) for share in shares]
    if workers == 1:
        parts = [run_share(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(run_share, jobs)
    records = [None] * len(problems)
    for i, part in enumerate(parts):
        records[i::workers] = part
    return records


# ---------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------

def handover_counts(records: list) -> Counter:
    """Hand-overs (a model's state replaced by the leader's) by standing before -> after; relays with
    tied scores; relays where the models were split (some on track, some not), whether the leader was
    on track there and whether the scores tied; decodes where a relay discarded every on-track trajectory."""
    counts = Counter()
    for rec in records:
        for r in rec["relays"]:
            for m, (was, now) in enumerate(zip(r["before"], r["after"])):
                if m != r["leader"]:
                    counts["handovers"] += 1
                    counts[("correct" if was else "wrong") + "->" + ("correct" if now else "wrong")] += 1
            tied = tie_lite.best_indices(np.array(r["scores"], dtype=np.float64)).size > 1  # as leader_of ranks
            counts["tied"] += tied
            if any(r["before"]) and not all(r["before"]):
                counts["split"] += 1
                counts["split, leader on track"] += r["before"][r["leader"]]
                counts["split, tied"] += tied
        counts["lost"] += any(any(r["before"]) and not any(r["after"]) for r in rec["relays"])
    return counts


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else ""


def summary_row(label: str, records: list) -> str:
    n, c = len(records), handover_counts(records)
    relays = sum(len(rec["relays"]) for rec in records)
    changes, handovers = sum(rec["changes"] for rec in records), sum(rec["handovers"] for rec in records)
    accuracy = 100 * np.mean([rec["correct"] for rec in records])
    any_right = 100 * np.mean([any(rec["candidates"]) for rec in records])
    return (f"| {label} | {accuracy:.1f} | {any_right:.1f} | {relays / n:.2f} | {percent(changes, handovers)} "
            f"| {c['handovers']} | {c['correct->wrong']} | {c['wrong->correct']} | {c['wrong->wrong']} |")


SUMMARY_HEADER = ("| interval | accuracy | a candidate right | relays / decode | leader change rate | hand-overs "
                  "| correct->wrong | wrong->correct | wrong->wrong |\n|---|---|---|---|---|---|---|---|---|")


def decision_row(label: str, records: list) -> str:
    c = handover_counts(records)
    relays = sum(len(rec["relays"]) for rec in records)
    on_track, tied = percent(c["split, leader on track"], c["split"]), percent(c["split, tied"], c["split"])
    return f"| {label} | {percent(c['tied'], relays)} | {c['split']} | {on_track} | {tied} | {c['lost']} |"


DECISION_HEADER = ("| interval | relays with tied scores | relays with the models split | split: leader on track "
                   "| split: scores tied | decodes where a relay discarded every on-track trajectory |\n"
                   "|---|---|---|---|---|---|")


def model_rows(label: str, records: list, names: list) -> list:
    """Per model: relay wins (on track / off / off while another model was on), mean score on and off
    track, final picks (correct / wrong while another candidate was right)."""
    relays = [r for rec in records for r in rec["relays"]]
    def mean(xs):  # a trajectory with no committed reasoning scores NaN (its judges abstain): left out
        xs = [x for x in xs if not np.isnan(x)]
        return f"{np.mean(xs):+.3f}" if xs else ""

    rows = []
    for m, name in enumerate(names):
        won = [r for r in relays if r["leader"] == m]
        won_on = sum(r["before"][m] for r in won)
        won_off_vs_on = sum(not r["before"][m] and any(r["before"]) for r in won)
        on = [r["scores"][m] for r in relays if r["before"][m]]
        off = [r["scores"][m] for r in relays if not r["before"][m]]
        picks = [rec for rec in records if rec["chosen"] == m]
        bad = sum(not rec["correct"] and any(rec["candidates"]) for rec in picks)
        rows.append(f"| {label} | {name} | {len(won)} | {won_on} | {len(won) - won_on} | {won_off_vs_on} "
                    f"| {mean(on)} | {mean(off)} | {len(picks)} | {sum(rec['correct'] for rec in picks)} | {bad} |")
    return rows


MODEL_HEADER = ("| interval | model | relay wins | on track | off track | off track, another on | mean score "
                "on track | mean score off track | final picks | correct | wrong, another right |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|")


def alone_line(records: list, names: list) -> str:
    """From the no-relay run: each model alone (its candidate) and the oracle."""
    alone = [100 * np.mean([rec["candidates"][m] for rec in records]) for m in range(len(names))]
    oracle = 100 * np.mean([any(rec["candidates"]) for rec in records])
    return ", ".join(f"{n} alone {a:.1f}" for n, a in zip(names, alone)) + f"; a candidate right {oracle:.1f}"


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--n", type=int, default=500, help="problems")
    p.add_argument("--seed", type=int, default=0, help="split seed (the problems drawn)")
    p.add_argument("--task", choices=sorted(task.TASKS), default="short",
                   help="task variant (train/task.py): its problems and layout")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--models", nargs="+", default=["a", "b"], help="model folder names under --models-dir")
    p.add_argument("--intervals", nargs="+", type=int, default=[4, 8, 16])
    p.add_argument("--score", choices=tie_lite.SCORES, default=tie_lite.EnsembleConfig.score)
    p.add_argument("--select", default=tie_lite.EnsembleConfig.select, help="final pick (tie_lite --select)")
    p.add_argument("--workers", type=int, default=2, help="processes, each decoding a share of the problems")
    p.add_argument("--json", type=Path, help="also write every decode's record here")
    args = p.parse_args(argv)
    if len(args.models) < 2:
        p.error("--models needs two or more models")
    return args


def label(interval: int) -> str:
    return "post-generation" if interval == POST_GENERATION else str(interval)


def print_tables(runs: dict, names: list) -> None:
    """The three tables (per interval, the relays' decisions, per model) from {interval: records}."""
    print(SUMMARY_HEADER)
    print("\n".join(summary_row(label(i), recs) for i, recs in runs.items()))
    print("\n" + alone_line(runs[POST_GENERATION], names) + "\n")
    print(DECISION_HEADER)
    print("\n".join(decision_row(label(i), recs) for i, recs in runs.items() if i != POST_GENERATION) + "\n")
    print(MODEL_HEADER)
    print("\n".join(row for i, recs in runs.items() for row in model_rows(label(i), recs, names)))


def main(argv=None) -> int:
    args = parse_args(argv)
    folders = [args.models_dir / name / "onnx" for name in args.models]
    problems = task.make_split(args.split, args.n, seed=args.seed, variant=args.task)
    runs = {}
    try:
        for interval in [POST_GENERATION, *args.intervals]:
            ensemble = tie_lite.EnsembleConfig(interval=interval, score=args.score, select=args.select,
                                               parallel=False)  # one thread per worker; the same result
            runs[interval] = run_parallel(folders, args.task, ensemble, problems, args.workers)
            accuracy = 100 * np.mean([rec["correct"] for rec in runs[interval]])
            print(f"interval {label(interval)}: {accuracy:.1f}%", file=sys.stderr)
    except tie_lite.TieLiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"split {args.split}, {len(problems)} problems (seed {args.seed}), task {args.task}, models "
          f"{'+'.join(args.models)}, score {args.score}, select {args.select}\n")
    print_tables(runs, list(args.models))
    if args.json:
        args.json.write_text(json.dumps({label(i): recs for i, recs in runs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
