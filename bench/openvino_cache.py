"""OpenVINO's compile cache: load time, decode time and peak memory of a model loaded with and without it.

    python bench/openvino_cache.py ONNX_DIR [ONNX_DIR ...] [--length 96 --gen 64 --steps 32 --repeats 3 --threads 2]

For each folder (written by python -m export), three kinds of fresh process load the model with
--provider openvino and decode one prompt of random ids (greedy, blocks of G / S, S steps):
`openvino_cache=False` (compiled at load, kept nowhere: tie-lite before the cache), the first load
into an empty cache folder (compiled, written, then loaded from it), and a load from that folder
(what every later run does). The kinds alternate, a warm-up round first, then --repeats rounds; the
table gives the median load time (Model.load), decode time, whole process, peak RSS (VmHWM, read
every 10 ms) and whether the generated ids equal the uncached load's. The cache folder is a temporary
one, removed at the end. Needs pip install '.[openvino]' and a CPU OpenVINO offers a device on
(Intel's); no torch. Never run in CI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from vs_llama_cpp import measured  # noqa: E402  (a command's output, time and peak RSS)

KINDS = ("no cache", "first load (compiles)", "from the cache")

CHILD = """
import json, sys, time
import numpy as np
import tie_lite
job = json.load(sys.stdin)
t0 = time.perf_counter()
model = tie_lite.Model.load(job["onnx"], provider="openvino", threads=job["threads"],
                            openvino_cache=job["cache"] or False)
load = time.perf_counter() - t0
m = model.manifest
rng = np.random.default_rng(0)
prompt = rng.integers(0, m.vocab_size, job["length"] - job["gen"])  # (P,)
prompt[prompt == m.mask_id] = (m.mask_id + 1) % m.vocab_size
tokens = np.concatenate([prompt, np.full(job["gen"], m.mask_id)]).astype(np.int64)  # (L,)
gen_idx = np.arange(prompt.size, tokens.size)  # (G,)
canvas = tie_lite.Canvas(tokens, prompt.size, gen_idx, np.zeros(0, np.int64), 0)
config = tie_lite.DecodeConfig(gen_length=job["gen"], block_size=job["gen"] // job["steps"], steps=job["steps"])
state = tie_lite.DecodeState(canvas, rng)
t0 = time.perf_counter()
tie_lite.decode(model, state, config)
print(json.dumps({"load": load, "decode": time.perf_counter() - t0, "ids": state.tokens[gen_idx].tolist()}))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx_dirs", type=Path, nargs="+", help="folders written by python -m export")
    p.add_argument("--length", type=int, default=96, help="canvas length L (prompt + G)")
    p.add_argument("--gen", type=int, default=64, help="generated positions G")
    p.add_argument("--steps", type=int, default=32, help="steps S; G / S tokens a step")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (after a warm-up round)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if not 0 < args.gen < args.length or args.gen % args.steps:
        p.error(f"--gen must be below --length and a multiple of --steps, got {args.gen}")
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def load_and_decode(folder: Path, cache, args) -> dict:
    job = dict(onnx=str(folder), cache=cache and str(cache), threads=args.threads, length=args.length,
               gen=args.gen, steps=args.steps)
    text, seconds, peak = measured([sys.executable, "-c", CHILD], json.dumps(job), cwd=ROOT)
    return {**json.loads(text.strip().splitlines()[-1]), "process": seconds, "peak": peak}


def one_round(folder: Path, scratch: Path, args) -> dict:
    """Each kind once, in a fresh process: uncached, into an emptied cache folder, then from it."""
    shutil.rmtree(scratch, ignore_errors=True)
    return {KINDS[0]: load_and_decode(folder, None, args), KINDS[1]: load_and_decode(folder, scratch, args),
            KINDS[2]: load_and_decode(folder, scratch, args)}


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"L={args.length} G={args.gen} S={args.steps}, {args.threads} threads, repeats={args.repeats}")
    print("| graph | load | load time | decode time | whole process | peak RSS | ids equal to no cache's |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.onnx_dirs:
            one_round(folder, Path(tmp) / "kept", args)  # warm-up
            rounds = [one_round(folder, Path(tmp) / "kept", args) for _ in range(args.repeats)]
            for kind in KINDS:
                med = {k: statistics.median(r[kind][k] for r in rounds) for k in ("load", "decode", "process", "peak")}
                equal = all(r[kind]["ids"] == r[KINDS[0]]["ids"] for r in rounds)
                said = "" if kind == KINDS[0] else "yes" if equal else "no"
                print(f"| {folder.name} | {kind} | {med['load']:.2f} s | {med['decode']:.2f} s | "
                      f"{med['process']:.2f} s | {med['peak']:.0f} MB | {said} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
