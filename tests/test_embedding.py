"""What a desktop app embedding tie_lite relies on: threads, callbacks, cancellation, live views."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import tie_lite
from conftest import ROOT, run_cli

pytestmark = pytest.mark.torch  # every test decodes with the tiny exported models (conftest.py)

INFILL = tie_lite.DecodeConfig(gen_length=48, answer_length=16, block_size=16)
PROMPTS = ["what is two plus three ?", "the cat and the dog", "how many red sun ?", "is the moon big ?"]


@pytest.fixture(scope="module")
def pair(tiny_bert, tiny_modernbert):
    return [tie_lite.Model.load(tiny_bert[1], threads=1), tie_lite.Model.load(tiny_modernbert[1], threads=1)]


def test_concurrent_generate_calls_match_serial_calls(pair):
    config = tie_lite.DecodeConfig(gen_length=48, answer_length=16, block_size=16, temperature=0.7, seed=5)
    jobs = [(PROMPTS[i % 4], tie_lite.EnsembleConfig(interval=8, score=("tcc", "entropy")[i % 2]))
            for i in range(8)]
    serial = [tie_lite.generate(pair, p, config, e).tokens.tolist() for p, e in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda job: tie_lite.generate(pair, job[0], config, job[1]).tokens.tolist(),
                                   jobs))
    assert concurrent == serial


@pytest.mark.parametrize("ensemble", [False, True])
def test_a_raising_callback_propagates_and_stops_every_model(pair, ensemble):
    calls = []

    def on_step(event):
        calls.append(event)
        if len(calls) == 3:
            raise ValueError("host bug")

    with pytest.raises(ValueError, match="host bug"):
        tie_lite.generate(pair if ensemble else pair[0], PROMPTS[0], INFILL, on_step=on_step)
    time.sleep(0.2)
    assert len(calls) <= 4  # the other model finished at most the step it was in


def test_relays_reach_the_callback_and_can_stop(pair):
    events = []

    def on_step(event):
        events.append(event)
        return not isinstance(event, tie_lite.Relay)

    result = tie_lite.generate(pair, PROMPTS[1], INFILL, tie_lite.EnsembleConfig(interval=8), on_step=on_step)
    assert result.stopped and isinstance(events[-1], tie_lite.Relay) and len(result.relays) == 1
    assert sum(isinstance(e, tie_lite.StepEvent) for e in events) == 16


def test_stream_emits_a_json_line_per_step_and_relay(tiny_bert, tiny_modernbert):
    result = run_cli("--models", str(tiny_bert[1]), str(tiny_modernbert[1]), "--prompt", "the cat",
                     "--gen-length", "32", "--answer-length", "16", "--interval", "16", "--stream")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    records = [json.loads(line) for line in lines[:-1]]
    steps = [r for r in records if r["event"] == "step"]
    relays = [r for r in records if r["event"] == "relay"]
    assert len(steps) == 64 and len(relays) == 1
    assert {r["model"] for r in steps} == {"bert", "modernbert"}
    assert steps[0]["text"].count(tie_lite.MASK_GLYPH) == 31  # one of 32 positions decoded
    assert relays[0]["leader"] in ("bert", "modernbert") and set(relays[0]["scores"]) == {"bert", "modernbert"}
    assert all(r["leader"] == relays[0]["leader"] for r in steps[steps.index(steps[-1]) - 31:])
    assert not lines[-1].startswith("{")  # the final text


def test_show_draws_frames_as_the_final_text_reads(tiny_bert, tiny_modernbert):
    result = run_cli("--models", str(tiny_bert[1]), str(tiny_modernbert[1]), "--prompt", "the cat",
                     "--gen-length", "32", "--answer-length", "16", "--interval", "16", "--show", "--json")
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stderr  # stderr is not a terminal here: plain frames, no escapes
    frames = result.stderr.split("\n\n")[:-1]
    assert len(frames) == 64 and not frames[0].startswith("*")
    out = json.loads(result.stdout)
    leader = out["relays"][-1]["leader"]
    final = [f"{'*' if c['model'] == leader else ' '} {c['model']}: {c['text']}" for c in out["candidates"]]
    assert frames[-1] == "\n".join(final)  # marker and answer drawn as the final text reads


def test_show_redraws_in_place_on_a_terminal(tiny_bert, tiny_modernbert):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    models = [tie_lite.Model.load(tiny_bert[1]), tie_lite.Model.load(tiny_modernbert[1])]
    config = tie_lite.DecodeConfig(gen_length=32, answer_length=16)
    view = tie_lite.LiveView(models, "show", config.answer_length, Terminal())
    tie_lite.generate(models, "the cat", config, on_step=view)
    frames = view.out.getvalue().split("\x1b[H\x1b[2J")[1:]
    assert len(frames) == 64 and all(frame.count("bert: ") == 2 for frame in frames)


def _sigint_as_at_a_terminal() -> None:
    """The child takes Ctrl-C's default disposition: a background job (e.g. under CI) ignores SIGINT,
    and tie-lite leaves an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_cleanly_with_130(tiny_bert, tiny_modernbert):
    driver = textwrap.dedent(f"""
        import sys, time, tie_lite
        step = tie_lite.LiveView.__call__
        def slow(self, event):
            time.sleep(0.05)
            return step(self, event)
        tie_lite.LiveView.__call__ = slow
        sys.exit(tie_lite.main(["--models", {str(tiny_bert[1])!r}, {str(tiny_modernbert[1])!r},
                                "--prompt", "the cat", "--gen-length", "48", "--answer-length", "16",
                                "--stream"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_as_at_a_terminal)
    assert json.loads(proc.stdout.readline())["event"] == "step"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    assert len(out.strip().splitlines()) < 20  # stopped within a step or so of each model


def test_progress_line_only_when_stderr_is_a_terminal(tiny_bert):
    import os
    import pty

    args = [sys.executable, str(ROOT / "tie_lite.py"), "--model", str(tiny_bert[1]), "--prompt", "the cat",
            "--gen-length", "32"]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=follower, text=True)
    out, _ = proc.communicate(timeout=60)
    os.close(follower)
    progress = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        progress += chunk
    os.close(leader)
    assert proc.returncode == 0 and out.strip()
    assert b"32 steps, " in progress and b"steps/s" in progress
    piped = run_cli("--model", str(tiny_bert[1]), "--prompt", "the cat", "--gen-length", "32")
    assert piped.stderr == ""  # not a terminal: no progress
