"""Seeded multi-step integer arithmetic task for training and evaluating tie-lite's default models.

A problem is a left-to-right chain of 2-3 operations (+, -, *) on small integers, written the
way a person would type it, e.g. "What is (7 + 5) * 3 - 9?". The reasoning is the chain of
intermediate results, "7+5=12. 12*3=36. 36-9=27.", and the answer is "27". The first operand
is 2-20, the others 2-9 (multipliers 2-5, applied to values <= 10), every result 0-30.

Splits are disjoint by construction: every expression is assigned to exactly one split by a hash
of its canonical form (5% test, 5% validation, 90% train), so two calls with any seeds never
share a problem across splits; within a split, problems are deduplicated by expression.

Length limits (in characters, which bound the token count of both shipped tokenizers: one is
character-level and the other a byte-level BPE over ASCII) are checked at generation time;
problems that do not fit are rejected, never truncated.
"""

import hashlib
import random

# Layout contract with the runtime (see train/README.md). Lengths are in tokens.
PROMPT_PREFIX = ""
PROMPT_SUFFIX = "\n"
MARKER = "\nAnswer: "
R = 28            # reasoning positions (EOS-padded); the longest reasoning is 26 characters
A = 4             # answer positions (EOS-padded); answers have at most 2 digits
MAX_LENGTH = 128  # max_position_embeddings of the models
MAX_PROMPT_CHARS = MAX_LENGTH - R - A - len(MARKER) - len(PROMPT_PREFIX) - len(PROMPT_SUFFIX)

# Difficulty knobs.
N_OPS = (2, 3)          # number of operations, drawn uniformly
FIRST_RANGE = (2, 20)   # first operand
ADD_RANGE = (2, 9)      # operand range for + and -
MUL_RANGE = (2, 5)      # multiplier range for *
MAX_VALUE = 30          # every intermediate result must lie in [0, MAX_VALUE]
MUL_MAX_VALUE = 10      # only values up to this are multiplied

SPLIT_BUCKETS = {"test": range(0, 5), "validation": range(5, 10), "train": range(10, 100)}
SPLIT_SALT = {"train": 0, "validation": 1, "test": 2}

TEMPLATES = [
    "What is {e}?",
    "What is {e}?",
    "What's {e}?",
    "what is {e}",
    "Compute {e}.",
    "Calculate {e}.",
    "Evaluate {e}.",
    "Work out {e}.",
    "Can you work out {e}?",
    "Please calculate {e}",
    "Find the value of {e}.",
    "{e} = ?",
    "Solve: {e}",
    "How much is {e}?",
]

_SYM = {"+": "+", "-": "-", "*": "*"}
_APPLY = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def _split_of(key: str) -> str:
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    for name, bucket in SPLIT_BUCKETS.items():
        if h in bucket:
            return name
    raise AssertionError(h)


def _sample_chain(rng: random.Random):
    """Return (first operand, [(op, operand, result), ...]) or None if a constraint fails."""
    value = rng.randint(*FIRST_RANGE)
    first = value
    steps = []
    for _ in range(rng.choice(N_OPS)):
        op = rng.choice("+-*")
        if op == "*":
            if value > MUL_MAX_VALUE:  # keep products small
                op = rng.choice("+-")
        if op == "*":
            n = rng.randint(*MUL_RANGE)
        elif op == "-":
            hi = min(ADD_RANGE[1], value)
            if hi < ADD_RANGE[0]:
                op, n = "+", rng.randint(*ADD_RANGE)
            else:
                n = rng.randint(ADD_RANGE[0], hi)
        else:
            n = rng.randint(*ADD_RANGE)
        result = _APPLY[op](value, n)
        if not 0 <= result <= MAX_VALUE:
            return None
        steps.append((op, n, result))
        value = result
    return first, steps


def _canonical(first, steps) -> str:
    """Fully parenthesised chain: the dedup / split key (independent of phrasing and spacing)."""
    s = str(first)
    for op, n, _ in steps:
        s = f"({s}{op}{n})"
    return s


def _render(first, steps, spaced: bool) -> str:
    """Infix expression with only the parentheses precedence requires."""
    s, low = str(first), False  # low: top level of s contains + or -
    for op, n, _ in steps:
        if op == "*" and low:
            s = f"({s})"
        s = f"{s} {op} {n}" if spaced else f"{s}{op}{n}"
        low = op in "+-"
    return s


def _example(rng: random.Random):
    chain = _sample_chain(rng)
    if chain is None:
        return None
    first, steps = chain
    expr = _render(first, steps, spaced=rng.random() < 0.8)
    prompt = rng.choice(TEMPLATES).format(e=expr)
    parts, value = [], first
    for op, n, result in steps:
        parts.append(f"{value}{op}{n}={result}.")
        value = result
    reasoning = " ".join(parts)
    answer = str(value)
    if len(prompt) > MAX_PROMPT_CHARS or len(reasoning) > R or len(answer) > A:
        return None  # rejected, never truncated
    return {"prompt": prompt, "reasoning": reasoning, "answer": answer, "key": _canonical(first, steps)}


def make_split(name: str, n: int, seed: int = 0) -> list:
    """`n` distinct problems of split `name` ("train", "validation" or "test"), reproducible from `seed`.

    Each item is {"prompt", "reasoning", "answer", "key"}; "key" is the canonical expression.
    """
    if name not in SPLIT_BUCKETS:
        raise ValueError(f"unknown split {name!r}; expected one of {sorted(SPLIT_BUCKETS)}")
    rng = random.Random(f"tie-lite-arith/{name}/{seed}")
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10000:
            raise RuntimeError(f"could only generate {len(out)} of {n} distinct {name} problems")
        ex = _example(rng)
        if ex is None or ex["key"] in seen or _split_of(ex["key"]) != name:
            continue
        seen.add(ex["key"])
        out.append(ex)
    return out


def is_correct(answer_text: str, example: dict) -> bool:
    """Exact match after stripping surrounding whitespace."""
    return answer_text.strip() == example["answer"].strip()


if __name__ == "__main__":
    for split in ("train", "validation", "test"):
        for ex in make_split(split, 3, seed=0):
            print(split, repr(ex["prompt"]), "|", ex["reasoning"], "|", ex["answer"])
