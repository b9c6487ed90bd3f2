"""Where each shipped model goes wrong: copying the problem's numbers and operators, or the arithmetic.

    python eval/error_kinds.py --split validation --n 300 a b d

Decodes each problem with one model (runtime defaults) and classifies a wrong answer by the first
reasoning step that differs from the reference: a different operand or operator (copy), or the
same operands and operator with another result (arithmetic); anything else is other.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "train")]

import task  # noqa: E402
import tie_lite  # noqa: E402

STEP = re.compile(r"(\d+)([-+*])(\d+)=(\d+)\.")  # one reasoning step: a op b = result.


def error_kind(reasoning: str, reference: str) -> str:
    for got, want in zip(STEP.findall(reasoning), STEP.findall(reference)):
        if got[:3] != want[:3]:
            return "copy"
        if got[3] != want[3]:
            return "arithmetic"
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="names under models/")
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--n", type=int, default=300)
    args = p.parse_args()
    problems = task.make_split(args.split, args.n, seed=0)
    for name in args.models:
        model = tie_lite.Model.load(ROOT / "models" / name / "onnx", threads=1)
        counts = {"correct": 0, "copy": 0, "arithmetic": 0, "other": 0}
        for problem in problems:
            result = tie_lite.generate(model, problem["prompt"])
            if task.is_correct(result.answer or "", problem):
                counts["correct"] += 1
            else:
                reasoning = result.text.split(model.manifest.answer_marker)[0]
                counts[error_kind(reasoning, problem["reasoning"])] += 1
        print(name, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
