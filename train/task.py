"""Seeded multi-step integer arithmetic task for training and evaluating tie-lite's default models.

A problem is a left-to-right chain of 2-3 operations (+, -, *) on small integers, written the
way a person would type it, e.g. "What is (7 + 5) * 3 - 9?". The reasoning is the chain of
intermediate results, "7+5=12. 12*3=36. 36-9=27.", and the answer is "27". The first operand
is 2-20, the others 2-9 (multipliers 2-5, applied to values <= 10), every result 0-30.

Splits are disjoint by construction: every expression is assigned to exactly one split by a hash
of its canonical form (5% test, 5% validation, 90% train), so two calls with any seeds never
share a problem across splits; within a split, problems are deduplicated by expression.

Two variants share the generator (`TASKS`): "short", the 2-3-operation problems above (the
layout the first shipped models were trained on), and "long", 2-6 operations whose reasoning
restates, after each operation, what is left of the expression:
"What is (7 + 5) * 3 - 9?" -> "7+5=12, 12*3-9. 12*3=36, 36-9. 36-9=27." -> "27", so that every
copy a step makes is from the step before it (a first try that labelled the steps instead,
"Step 1: 7+5=12. Step 2: ...", made the model find the k-th operand in the prompt and reached
7-16% after 1000 steps: train/README.md). 4-6-operation problems take 48-111 reasoning
positions: decodes long enough for several TIE relays at interval 16. "hard" is the long
variant's 4-6-operation problems alone, the evaluation set for that setting. "chain" is 2-6
operations in the short variant's layout (no restating, R = 60), the layout the first shipped models
knew, for fine-tuning them without changing what each step writes (train/README.md). "chain80" is
the same problems in 80 generated positions (R = 64, A = 16): blocks of 8 or 16 then end where the
answer starts (the runtime needs that), and one position a step makes 4 TIE relays at interval 16; the
shipped models are trained on it (stages F and H, train/README.md).
Every split is still assigned by the hash of the canonical expression, whatever the variant,
so a problem never changes split.

Length limits (in characters, which bound the token count of the project's tokenizers: character-level,
a byte-level BPE over ASCII, and one merging only letters) are checked at generation time;
problems that do not fit are rejected, never truncated.
"""

import hashlib
import random

from dataclasses import dataclass, replace

# Layout contract with the runtime (see train/README.md). Lengths are in tokens.
PROMPT_PREFIX = ""
PROMPT_SUFFIX = "\n"
MARKER = "\nAnswer: "


@dataclass(frozen=True)
class Task:
    """One variant of the task: which chains it draws and the layout its models are trained on."""
    name: str
    n_ops: tuple         # number of operations, drawn uniformly
    R: int               # reasoning positions (EOS-padded)
    A: int               # answer positions (EOS-padded); answers have at most 2 digits
    max_length: int      # max_position_embeddings of the models
    restate: bool        # each step restates what is left: "7+5=12, 12*3-9. 12*3=36, 36-9. 36-9=27."

    @property
    def max_prompt_chars(self) -> int:
        return self.max_length - self.R - self.A - len(MARKER) - len(PROMPT_PREFIX) - len(PROMPT_SUFFIX)


# short: the longest reasoning is 26 characters; long: 111 (six operations restated); chain, chain80: 54;
# R + A is a multiple of 16, the block of the training-time evaluation (quick_eval.py).
TASKS = {t.name: t for t in (
    Task("short", (2, 3), R=28, A=4, max_length=128, restate=False),
    Task("long", (2, 3, 4, 5, 6), R=124, A=4, max_length=192, restate=True),
    Task("hard", (4, 5, 6), R=124, A=4, max_length=192, restate=True),
    Task("chain", (2, 3, 4, 5, 6), R=60, A=4, max_length=128, restate=False),
    Task("chain80", (2, 3, 4, 5, 6), R=64, A=16, max_length=160, restate=False),
)}
SHORT = TASKS["short"]
R, A, MAX_LENGTH = SHORT.R, SHORT.A, SHORT.max_length  # the short layout, the default
MAX_PROMPT_CHARS = SHORT.max_prompt_chars

# Difficulty knobs.
N_OPS = SHORT.n_ops     # number of operations of the short variant
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

# Phrasings no model is trained on, to check that what lands holds beyond the templates above.
HELD_OUT_TEMPLATES = [
    "Determine {e}.",
    "Tell me the result of {e}.",
    "What do you get from {e}?",
    "Give the value of {e}",
    "Simplify {e}.",
    "{e} equals what?",
    "Quick question: what is {e}?",
    "Result of {e}?",
]
PHRASINGS = {"trained": TEMPLATES, "held-out": HELD_OUT_TEMPLATES}

_SYM = {"+": "+", "-": "-", "*": "*"}
_APPLY = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def _split_of(key: str) -> str:
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    for name, bucket in SPLIT_BUCKETS.items():
        if h in bucket:
            return name
    raise AssertionError(h)


def _sample_chain(rng: random.Random, n_ops: tuple):
    """Return (first operand, [(op, operand, result), ...]) or None if a constraint fails."""
    value = rng.randint(*FIRST_RANGE)
    first = value
    steps = []
    for _ in range(rng.choice(n_ops)):
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


def _example(rng: random.Random, variant: Task, templates: list):
    chain = _sample_chain(rng, variant.n_ops)
    if chain is None:
        return None
    first, steps = chain
    expr = _render(first, steps, spaced=rng.random() < 0.8)
    prompt = rng.choice(templates).format(e=expr)
    parts, value = [], first
    for k, (op, n, result) in enumerate(steps, 1):
        rest = steps[k:]
        left = f", {_render(result, rest, spaced=False)}" if variant.restate and rest else ""
        parts.append(f"{value}{op}{n}={result}{left}.")
        value = result
    reasoning = " ".join(parts)
    answer = str(value)
    if len(prompt) > variant.max_prompt_chars or len(reasoning) > variant.R or len(answer) > variant.A:
        return None  # rejected, never truncated
    return {"prompt": prompt, "reasoning": reasoning, "answer": answer, "key": _canonical(first, steps)}


def check_ops(ops: tuple) -> tuple:
    """`ops` as a tuple of numbers of operations; ValueError, naming it, unless each is a positive int."""
    if not ops or any(not isinstance(k, int) or k < 1 for k in ops):
        raise ValueError(f"ops must be positive numbers of operations, got {ops!r}")
    return tuple(ops)


def make_split(name: str, n: int, seed: int = 0, variant: str = "short", phrasings: str = "trained",
               ops: tuple = None) -> list:
    """`n` distinct problems of split `name` ("train", "validation" or "test") of task `variant`
    (a key of TASKS) in `phrasings` (a key of PHRASINGS), reproducible from `seed`. `ops`, if
    given, replaces the variant's numbers of operations (drawn uniformly, so a repeated number
    weighs more: (2, 2, 3, 3, 4, 5, 6) keeps the short chains in a training stream of long ones).

    Each item is {"prompt", "reasoning", "answer", "key"}; "key" is the canonical expression.
    """
    if name not in SPLIT_BUCKETS:
        raise ValueError(f"unknown split {name!r}; expected one of {sorted(SPLIT_BUCKETS)}")
    if variant not in TASKS:
        raise ValueError(f"unknown task variant {variant!r}; expected one of {sorted(TASKS)}")
    if phrasings not in PHRASINGS:
        raise ValueError(f"unknown phrasings {phrasings!r}; expected one of {sorted(PHRASINGS)}")
    if name == "train" and phrasings != "trained":
        raise ValueError("the held-out phrasings are for evaluation splits only")
    salt = "" if variant == "short" else f"/{variant}"  # the short splits stay as they were
    salt += "" if phrasings == "trained" else f"/{phrasings}"
    if ops is not None:
        ops = check_ops(ops)
        salt += "/ops" + "".join(map(str, ops))  # as stage F's runs were drawn
    kind = TASKS[variant] if ops is None else replace(TASKS[variant], n_ops=ops)
    rng = random.Random(f"tie-lite-arith/{name}/{seed}{salt}")
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10000:
            raise RuntimeError(f"could only generate {len(out)} of {n} distinct {name} problems")
        ex = _example(rng, kind, PHRASINGS[phrasings])
        if ex is None or ex["key"] in seen or _split_of(ex["key"]) != name:
            continue
        seen.add(ex["key"])
        out.append(ex)
    return out


def is_correct(answer_text: str, example: dict) -> bool:
    """Exact match after stripping surrounding whitespace."""
    return answer_text.strip() == example["answer"].strip()


if __name__ == "__main__":
    for variant in TASKS:
        for ex in make_split("validation", 2, seed=0, variant=variant):
            print(variant, repr(ex["prompt"]), "|", ex["reasoning"], "|", ex["answer"])
