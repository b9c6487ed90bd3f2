"""Decode time with onnxruntime's thread spinning on vs off (tie-lite runs with it off), one run.

    python bench/spinning.py ONNX_DIR [--kv-cache prefix] [--prompt-tokens 110] [--gen 16] [--repeats N] [--rounds 3]

Spinning keeps the intra-op threads busy-waiting between operators, which saves each
operator the wake-up of a sleeping thread and burns a core meanwhile. Sessions that
spin disturb others in the same process, so each variant runs in a fresh process of
its own (load, one warm-up decode, --repeats timed decodes, the median), the two
alternating for --rounds rounds; the script prints each round's times and the ratio
of the medians over the rounds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time, numpy as np, onnxruntime as ort
sys.path.insert(0, {root!r})
import tie_lite
add = ort.SessionOptions.add_session_config_entry
def spin_as_asked(options, key, value):  # the runtime's own sessions, with only spinning changed
    return add(options, key, {spin!r} if key == "session.intra_op.allow_spinning" else value)
ort.SessionOptions.add_session_config_entry = spin_as_asked
model = tie_lite.Model.load({onnx_dir!r}, threads={threads}, kv_cache={kv_cache!r})
ids = np.array([4 + i % (model.manifest.vocab_size - 4) for i in range({prompt_tokens})])  # past the specials
prompt, config = model.detokenize(ids), tie_lite.DecodeConfig(gen_length={gen}, block_size={gen})
tie_lite.generate(model, prompt, config)
times = []
for _ in range({repeats}):
    start = time.perf_counter()
    tie_lite.generate(model, prompt, config)
    times.append(time.perf_counter() - start)
print(float(np.median(times)))
"""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("onnx_dir", type=Path, help="a folder written by python -m export")
    p.add_argument("--kv-cache", choices=("prefix", "dual"), help="decode with the block K/V cache")
    p.add_argument("--prompt-tokens", type=int, default=110, help="prompt length in tokens")
    p.add_argument("--gen", type=int, default=16, help="generated positions (one block, one token per step)")
    p.add_argument("--repeats", type=int, default=30, help="timed decodes per process")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def decode_time(args, spin: str) -> float:
    code = CHILD.format(root=str(ROOT), spin=spin, onnx_dir=str(args.onnx_dir), threads=args.threads,
                        kv_cache=args.kv_cache, prompt_tokens=args.prompt_tokens, gen=args.gen,
                        repeats=args.repeats)
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> int:
    args = parse_args()
    if not (args.onnx_dir / "tie_lite.json").is_file():
        sys.exit(f"error: {args.onnx_dir} is not an export (no tie_lite.json)")
    off, on = [], []
    for round_ in range(args.rounds):
        off.append(decode_time(args, "0"))
        on.append(decode_time(args, "1"))
        print(f"round {round_ + 1}: spinning off {off[-1] * 1e3:.1f} ms, on {on[-1] * 1e3:.1f} ms per decode")
    print(f"{args.onnx_dir} (kv_cache={args.kv_cache}, {args.threads} threads): "
          f"spinning on / off = {np.median(on) / np.median(off):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
