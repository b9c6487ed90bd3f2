"""tie-lite: a small, PyTorch-free runtime for masked diffusion language models.

Loads models exported by `python -m export`, decodes them with semi-autoregressive
blocks and confidence-based unmasking, and (with two or more models) ensembles
them while they decode with TIE, Trajectory-based Iterative Ensembling
(arXiv 2606.16281).

    python tie_lite.py --prompt "Compute 7 - 6 + 8."            # the shipped default model(s)
    python tie_lite.py --model models/a/onnx --prompt "..." --json   # one exported model
    import tie_lite; tie_lite.generate(tie_lite.Model.load("models/a/onnx"), "Compute 7 - 6 + 8.")

Needs only numpy, onnxruntime and tokenizers.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence


def _quiet_interrupt(signum, frame) -> None:
    os.write(2, b"\ninterrupted\n")
    os._exit(130)


if ((__name__ == "__main__" or os.path.basename(sys.argv[0]) == "tie-lite")
        and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
    # Run as the CLI: a Ctrl-C during the imports below exits 130 with one line, as main() does later.
    signal.signal(signal.SIGINT, _quiet_interrupt)

import numpy as np  # noqa: E402

# What an embedding app uses. Every other name is internal: tests, benchmarks and training reach
# for it, and it may change between versions without notice.
__all__ = [
    "TieLiteError", "ConfigError", "ModelError",           # errors
    "DecodeConfig", "EnsembleConfig",                      # options
    "Model", "Manifest", "Policy",                         # loading
    "generate", "GenerateResult", "StepEvent", "Relay",    # decoding, its callback's events, its result
    "leader_change_rate", "KV_CACHE_MODES", "main",
]

__version__ = "0.1.0"

SCHEMA_VERSION = 1                 # tie_lite.json schema this runtime reads and export writes
MANIFEST_NAME = "tie_lite.json"    # the manifest's file name inside a model folder
PROMPT_SLOT = "{prompt}"           # where the user's text goes in a manifest's prompt format
POLICY_GRAPH = "policy.onnx"       # a learned unmasking policy's files inside its folder
POLICY_CARD = "policy.json"
CACHE_GRAPH = "cache.onnx"         # the block key/value-cache graph (python -m export --kv-cache)
CACHE_LAYOUT = "fresh-first"       # manifest's cache_layout: cache.onnx's softmax takes fresh keys, then kept ones


class TieLiteError(Exception):
    """Base of every error tie-lite raises on bad input, models or options."""


class ConfigError(TieLiteError, ValueError):
    """An option or combination of options is invalid; the message names the bad value."""


class ModelError(TieLiteError):
    """A model folder, manifest, tokenizer or ONNX graph is missing or inconsistent."""


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------

STRATEGIES = ("schedule", "threshold", "topk", "med", "dream", "ass", "policy")
CONFIDENCES = ("top1", "margin", "entropy")
STEPPED = ("schedule", "dream", "ass")     # strategies whose step count is set by `steps`
COUNTED = ("schedule", "topk", "dream", "ass")  # strategies that commit a number of positions a step
DECODE_OPTIONS = ("gen_length", "answer_length", "block_size")  # lengths a manifest may recommend
FALLBACK_LENGTHS = {"gen_length": 64, "answer_length": 0, "block_size": 16}  # when neither caller nor model sets one
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "openvino": "OpenVINOExecutionProvider"}  # openvino: a plugin (pip install 'tie-lite[openvino]')
OPENVINO_PLUGIN = "onnxruntime_ep_openvino"  # the Python package that carries OpenVINO's plugin library
OPENVINO_CACHE_ENV = "TIE_LITE_OPENVINO_CACHE"  # where OpenVINO's compiled graphs are kept (default: the user's cache)
COMPILED_GRAPH = "compiled.onnx"  # an OpenVINO cache entry's graph: one EPContext node, its blob beside it
COMPILED_SOURCE = "source.json"   # what an OpenVINO cache entry was compiled from (the entry's key hashes it)
KV_CACHE_MODES = ("prefix", "dual")  # rows a cached step recomputes: block and all after it / block only
SUPPRESSED_LOGIT = np.finfo(np.float32).min  # a column no token is drawn from (mask, padding) in the logits output


def option(default, help: str, flag: Optional[str] = None, shown: Optional[str] = None, **argparse_extras):
    """A config field that is also a CLI flag: its --help text, its flag (default: --field-name; a bool
    field's flag turns it to the opposite of its default), how --help shows a None default, and extras
    for argparse (choices, nargs, metavar)."""
    return field(default=default, metadata={"help": help, "flag": flag, "shown": shown, **argparse_extras})


@dataclass(frozen=True)
class DecodeConfig:
    """How one model decodes. Defaults are the CLI's defaults; unset lengths come from the model."""

    # Each field is also a CLI flag (--gen-length for gen_length): option() holds its help text.
    # The three lengths: None (unset) takes the model's recommendation (its manifest's decode_defaults),
    # else FALLBACK_LENGTHS, when generate() resolves the config for the (first) model: `for_model`.
    gen_length: Optional[int] = option(None, "masked positions generated after the prompt (reasoning + answer)",
                                       shown="the model's, else 64")
    answer_length: Optional[int] = option(None, "> 0: reasoning-as-infilling, the last N masks follow the answer "
                                                "marker", shown="the model's, else 0")
    block_size: Optional[int] = option(None, "semi-autoregressive block, in masked positions",
                                       shown="the model's, else 16; strategy ass: the gen length")
    steps: Optional[int] = option(None, "total steps of strategies schedule, dream and ass",
                                  shown="one position per step")
    strategy: Optional[str] = option(None, "which positions a step commits: schedule (LLaDA's low-confidence "
                                           "remasking), threshold, topk, med (entropy budget), dream (Dream's "
                                           "eps-linear schedule), ass (ascending step sizes), policy (learned)",
                                     choices=STRATEGIES, shown="policy with --policy, else schedule")
    threshold: float = option(0.9, "strategy threshold: commit every masked position whose confidence exceeds "
                                   "this (at least one a step)")
    tokens_per_step: int = option(2, "strategy topk: positions committed per step")
    entropy_budget: float = option(1.0, "strategy med: commit the lowest-entropy positions while their summed "
                                        "entropy (nats) stays within this (at least one a step)")
    eps: float = option(1e-3, "strategy dream: the schedule's last timestep, linspace(1, eps, steps + 1)")
    ass_blocks: int = option(1, "strategy ass: blocks of the ascending-step-size layout")
    policy: Optional[str] = option(None, "folder of a learned unmasking policy (policy.onnx); implies strategy "
                                         "policy", metavar="DIR", shown="none")
    confidence: str = option("top1", "how positions are ranked: top1 (LLaDA, Dream maskgit_plus), margin "
                                     "(p1 - p2, Dream topk_margin), entropy (-H, Dream entropy)",
                             choices=CONFIDENCES)
    alg_temp: float = option(0.0, "> 0: draw the positions to commit from softmax(confidence / alg_temp) (Dream)")
    eos_gamma: Optional[tuple] = option(None, "EOSER: scale EOS proposals' confidence from G_MIN at a block's first "
                                              "step up to G_MAX (the paper uses 0.4 1.0)",
                                        nargs=2, metavar=("G_MIN", "G_MAX"), shown="off")
    exit_threshold: Optional[float] = option(None, "early exit once every still-masked answer position's top-1 "
                                                   "probability reaches this (the answer is filled with them)",
                                             shown="off")
    exit_patience: Optional[int] = option(None, "early exit once the answer's top-1 ids are unchanged for this "
                                                "many consecutive steps", shown="off")
    temperature: float = option(0.0, "0 = greedy; > 0 samples exactly from softmax(logits / T) (Gumbel-max)")
    seed: int = option(0, "seeds the sampler (used when temperature or alg_temp > 0)")

    def __post_init__(self):
        """Checks each option alone now, and the rules that need the lengths once all three are known."""
        if self.strategy is None:  # unset: a policy folder's own strategy, else LLaDA's schedule
            object.__setattr__(self, "strategy", "policy" if self.policy is not None else "schedule")
        if isinstance(self.eos_gamma, list):
            object.__setattr__(self, "eos_gamma", tuple(self.eos_gamma))
        lengths = [name for name in DECODE_OPTIONS if getattr(self, name) is not None]
        _require_ints(self, (*lengths, "tokens_per_step", "seed"))
        _require_reals(self, ("threshold", "entropy_budget", "eps", "alg_temp", "temperature")
                       + (("exit_threshold",) if self.exit_threshold is not None else ()))
        _require(self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        _require((self.strategy == "policy") == (self.policy is not None),
                 f"strategy 'policy' and a policy folder go together, got strategy {self.strategy!r} "
                 f"with policy {self.policy!r}")
        _require(self.steps is None or self.strategy in STEPPED,
                 f"steps applies only to strategies {STEPPED}, not {self.strategy!r}")
        _require(0.0 < self.threshold < 1.0, f"threshold must be in (0, 1), got {self.threshold}")
        _require(self.tokens_per_step > 0, f"tokens_per_step must be positive, got {self.tokens_per_step}")
        _require(np.isfinite(self.temperature) and self.temperature >= 0,
                 f"temperature must be a finite number >= 0, got {self.temperature}")
        _require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        self._check_ranking()
        self._check_exit_values()
        if self.resolved:
            self._check_lengths()

    @property
    def resolved(self) -> bool:
        """Whether all three lengths are set (by the caller or by `for_model`)."""
        return all(getattr(self, name) is not None for name in DECODE_OPTIONS)

    def with_defaults(self, defaults: Optional[dict] = None) -> "DecodeConfig":
        """This config with every unset length taken from `defaults` (a manifest's decode_defaults),
        else from FALLBACK_LENGTHS; strategy ass's block is the whole generation."""
        if self.resolved:
            return self
        defaults = {**FALLBACK_LENGTHS, **(defaults or {})}
        lengths = {name: defaults[name] for name in DECODE_OPTIONS if getattr(self, name) is None}
        if self.strategy == "ass" and self.block_size is None:
            lengths["block_size"] = self.gen_length or defaults["gen_length"]
        return dataclasses.replace(self, **lengths)

    def for_model(self, model: "Model") -> "DecodeConfig":
        """This config resolved for `model`: unset lengths are the model's recommendation."""
        return self.with_defaults(model.manifest.decode_defaults)

    def _check_lengths(self):
        _require(self.gen_length > 0, f"gen_length must be positive, got {self.gen_length}")
        _require(self.block_size > 0, f"block_size must be positive, got {self.block_size}")
        _require(self.gen_length % self.block_size == 0,
                 f"gen_length {self.gen_length} is not divisible by block_size {self.block_size}")
        _require(0 <= self.answer_length < self.gen_length,
                 f"answer_length must be in [0, gen_length={self.gen_length}), got {self.answer_length}")
        if self.strategy == "ass":
            self._check_ass()
        _require(self.gen_length - self.answer_length in self.block_bounds,
                 f"answer_length {self.answer_length} does not start on a block boundary "
                 "(a block may not hold both reasoning and answer positions)")
        self._check_steps()
        _require(self.infill or not self.early_exit,
                 "early exit watches the answer positions: set answer_length > 0")

    def _check_exit_values(self):
        if self.exit_threshold is not None:
            _require(0 < self.exit_threshold < 1, f"exit_threshold must be in (0, 1), got {self.exit_threshold}")
        if self.exit_patience is not None:
            _require_ints(self, ("exit_patience",))
            _require(self.exit_patience > 0, f"exit_patience must be positive, got {self.exit_patience}")

    @property
    def early_exit(self) -> bool:
        return self.exit_threshold is not None or self.exit_patience is not None

    def _check_ranking(self):
        _require(self.confidence in CONFIDENCES,
                 f"confidence must be one of {CONFIDENCES}, got {self.confidence!r}")
        _require(np.isfinite(self.entropy_budget) and self.entropy_budget > 0,
                 f"entropy_budget must be a positive number, got {self.entropy_budget}")
        _require(0 < self.eps < 1, f"eps must be in (0, 1), got {self.eps}")
        _require(np.isfinite(self.alg_temp) and self.alg_temp >= 0,
                 f"alg_temp must be a finite number >= 0, got {self.alg_temp}")
        _require(self.alg_temp == 0 or self.strategy in COUNTED,
                 f"alg_temp applies to strategies {COUNTED}, not {self.strategy!r}")
        if self.eos_gamma is not None:
            ok = (isinstance(self.eos_gamma, (tuple, list)) and len(self.eos_gamma) == 2
                  and all(is_real(g) and 0 < g <= 1 for g in self.eos_gamma))
            _require(ok and self.eos_gamma[0] <= self.eos_gamma[1],
                     f"eos_gamma must be (g_min, g_max) with 0 < g_min <= g_max <= 1, got {self.eos_gamma!r}")
            _require(self.confidence == "top1", f"eos_gamma (EOSER) scales top1 confidence, not "
                                                f"{self.confidence!r}")
            _require(self.strategy != "policy", "eos_gamma (EOSER) scales confidences; strategy 'policy' "
                                                "ranks positions by its own logits")

    def _check_ass(self):
        _require(self.gen_length >= 2 and self.gen_length & (self.gen_length - 1) == 0,
                 f"strategy 'ass' needs gen_length a power of two, got {self.gen_length}")
        power = self.gen_length.bit_length() - 1
        _require_ints(self, ("ass_blocks",))
        _require(1 <= self.ass_blocks <= power, f"ass_blocks must be in [1, {power}], got {self.ass_blocks}")
        _require(self.block_size == self.gen_length, "strategy 'ass' lays out its own blocks (ass_blocks): "
                                                     f"set block_size = gen_length, got {self.block_size}")
        _require(self.steps in (None, power), f"strategy 'ass' takes log2(gen_length) = {power} steps, "
                                              f"got {self.steps}")

    @functools.cached_property
    def block_bounds(self) -> Sequence[int]:
        """Offsets into the generated masks where blocks start, and the end: (0, ..., gen_length); a range
        for equal blocks, so that checking a huge gen_length costs nothing before a canvas refuses it."""
        _require(self.resolved, "this DecodeConfig has unset lengths: resolve it with for_model(model)")
        if self.strategy == "ass":
            sizes, _ = ass_layout(self.gen_length, self.ass_blocks)
            return tuple(int(b) for b in np.concatenate([[0], np.cumsum(sizes)]))
        return range(0, self.gen_length + 1, self.block_size)

    def _check_steps(self):
        if self.steps is None or self.strategy == "ass":
            return
        _require_ints(self, ("steps",))
        _require(self.steps > 0, f"steps must be positive, got {self.steps}")
        _require(self.steps <= self.gen_length,
                 f"steps {self.steps} exceeds gen_length {self.gen_length} (a step commits at least one token)")
        _require(self.steps % self.num_blocks == 0,
                 f"steps {self.steps} is not divisible by the number of blocks {self.num_blocks}")

    @property
    def num_blocks(self) -> int:
        return len(self.block_bounds) - 1

    @property
    def steps_per_block(self) -> int:
        return (self.steps or self.gen_length) // self.num_blocks

    @property
    def infill(self) -> bool:
        _require(self.answer_length is not None, "this DecodeConfig has unset lengths: resolve it with "
                                                 "for_model(model)")
        return self.answer_length > 0


def is_int(value) -> bool:
    """An integer option's value: a Python or numpy int, never a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A number option's value: a Python or numpy int or float, never a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def says_stop(answer) -> bool:
    """Whether an on_step callback's return value stops the decode: False (numpy's too); None goes on."""
    return answer is False or (isinstance(answer, np.bool_) and not answer)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _require_reals(config, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(config, name)
        _require(is_real(value), f"{name} must be a number, got {value!r}")
        _require(abs(value) < 2 ** 1024, f"{name} must be a number a float holds, got {value!r:.40}")


def _require_bools(config, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(config, name)
        _require(isinstance(value, (bool, np.bool_)), f"{name} must be True or False, got {value!r}")


def _require_ints(config, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(config, name)
        _require(is_int(value),
                 f"{name} must be an integer, got {value!r}")


SCORES = ("tcc", "top1", "entropy", "margin", "pll")
INTERVAL_UNITS = ("positions", "steps")
SELECTIONS = ("tcc", "pll", "most-selected", "best-model:NAME")


@dataclass(frozen=True)
class EnsembleConfig:
    """How TIE ensembles M >= 2 models (docs/method.md)."""

    interval: int = option(16, "progress of each model between relays, in --interval-unit; more than the whole "
                               "generation is post-generation selection")
    interval_unit: str = option("positions", "what the interval counts: positions committed (the same as steps at "
                                             "one position per step, the paper's setting; relays keep happening "
                                             "under strategies that commit several a step), or steps",
                                choices=INTERVAL_UNITS)
    score: str = option("pll", "trajectory score: pll (pseudo-likelihood of the committed reasoning, averaged over "
                               "every model), tcc (token change count, free), or top1 / entropy / margin "
                               "(confidence over the answer, averaged over every model)", choices=SCORES)
    cross_model: bool = option(True, "confidence and pll scores from the source model only (off: averaged over "
                                     "every model)", flag="--source-only")
    select: str = option("pll", "final pick: pll (highest pseudo-likelihood of the reasoning over every model, "
                                "ties to mean top-1), tcc (lowest token change count, ties to mean top-1), "
                                "most-selected, or best-model:NAME")
    pll_groups: int = option(4, "pll: the committed reasoning is masked in this many interleaved groups, one forward "
                                "pass per group, judging model and trajectory")
    first_k: Optional[int] = option(None, "track only the first K answer positions (the paper: 8 for code)",
                                    shown="all")
    parallel: bool = option(True, "decode the models one after another (off: in parallel threads)",
                            flag="--sequential")

    def __post_init__(self):
        _require_ints(self, ("interval", "pll_groups") + (("first_k",) if self.first_k is not None else ()))
        _require_bools(self, ("cross_model", "parallel"))
        _require(isinstance(self.select, str), f"select must be one of {SELECTIONS}, got {self.select!r}")
        _require(self.pll_groups > 0, f"pll_groups must be positive, got {self.pll_groups}")
        _require(self.interval > 0, f"interval must be positive, got {self.interval}")
        _require(self.interval_unit in INTERVAL_UNITS,
                 f"interval_unit must be one of {INTERVAL_UNITS}, got {self.interval_unit!r}")
        _require(self.score in SCORES, f"score must be one of {SCORES}, got {self.score!r}")
        _require(self.select in ("tcc", "pll", "most-selected")
                 or (self.select.startswith("best-model:") and self.best_model),
                 f"select must be one of {SELECTIONS}, got {self.select!r}")
        _require(self.first_k is None or self.first_k > 0, f"first_k must be positive, got {self.first_k}")
        _require(self.cross_model or self.score != "tcc" or self.select == "pll",
                 "cross_model=False (source-only scoring) applies to top1/entropy/margin/pll scores and the "
                 "pll final pick, not tcc")

    @property
    def best_model(self) -> str:
        return self.select.split(":", 1)[1] if self.select.startswith("best-model:") else ""


# ---------------------------------------------------------------------------
# numerics (pure functions, no I/O)
# ---------------------------------------------------------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def transfer_schedule(mask_count: int, steps: int) -> np.ndarray:
    """Tokens to commit at each of `steps` steps for a block of `mask_count` masks (LLaDA).

    The masks are spread evenly; the remainder goes one each to the first steps.
    """
    counts = np.full(steps, mask_count // steps, dtype=np.int64)  # (steps,)
    counts[: mask_count % steps] += 1
    return counts


def pick_by_confidence(confidence: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest confidences; ties go to the lower index."""
    return np.argsort(-confidence, kind="stable")[:k]


def pick_within_entropy_budget(entropy: np.ndarray, budget: float) -> np.ndarray:
    """MED: the lowest-entropy indices whose summed entropy stays <= budget; at least the lowest one."""
    order = np.argsort(entropy, kind="stable")
    within = int(np.count_nonzero(np.cumsum(entropy[order]) <= budget))
    return order[: max(within, 1)]


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """Reproduces torch.linspace(start, end, steps)'s float32 points, bit for bit, in numpy.

    With step = (end - start) / (steps - 1) rounded to float32, point i is start + step * i
    for i < steps // 2 and end - step * (steps - 1 - i) for the rest (each half counted from
    its own end), each a fused multiply-add: rounded once, to float32. That is PyTorch's CPU
    kernel as built for AVX2 / AVX512 (checked bit for bit against torch 2.13); its build
    without them (ATEN_CPU_CAPABILITY=default) rounds the product first, one ulp off at places.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32])
    step = (end32 - start32) / np.float32(steps - 1)
    i = np.arange(steps)
    lower = i < steps // 2
    base = np.where(lower, start32, end32).astype(np.float64)
    product = np.float64(step) * np.where(lower, i, i - (steps - 1))  # exact in float64
    total = base + product
    back = total - product
    error = (base - back) + (product - (total - back))  # what rounding the sum to float64 lost
    # Round to odd (an inexact sum gets the neighbour with an odd last bit), so that rounding
    # to float32 below gives the exact sum rounded once.
    even = (total.view(np.int64) & 1) == 0
    total = np.where((error != 0) & even, np.nextafter(total, np.copysign(np.inf, error)), total)
    return total.astype(np.float32)


def dream_count(masked: int | np.ndarray, step: int, steps: int, eps: float) -> int | np.ndarray:
    """Dream's count at step `step` of `steps`: int(masked * (1 - s / t)), all the rest at the last step.

    t, s are consecutive points of linspace(1, eps, steps + 1), in float32 as Dream computes
    them (torch.linspace); the rest is float32 too, as in Dream's _sample. `masked` may be an
    int (an int is returned) or an integer array (an int64 array of counts is returned).
    """
    if step >= steps - 1:
        return masked
    timesteps = torch_linspace_f32(1, eps, steps + 1)
    t, s = timesteps[step], timesteps[step + 1]
    counts = np.asarray(masked, np.float32) * (np.float32(1) - s / t)
    return counts.astype(np.int64) if counts.ndim else int(counts)


def ass_layout(gen_length: int, blocks: int) -> tuple[list, list]:
    """Ascending step size (the EOSER paper): block sizes and each block's global step indices.

    As the reference code (yjyddq/EOSER-ASS-RL, `ass_generate`) lays them out for
    gen_length = 2^S: the last block holds 2^(S-1) + 1 positions decoded in step S-1,
    the blocks before it 2^(S-2), 2^(S-3), ... in one step each, and the first block the
    rest, decoded in steps 0, 1, ... (2^i positions at step i). One block: all S steps.
    """
    power = gen_length.bit_length() - 1
    if blocks == 1:
        return [gen_length], [list(range(power))]
    sizes, steps, top = [2 ** (power - 1) + 1 + gen_length - 2 ** power], [[power - 1]], power - 2
    for _ in range(blocks - 2):
        sizes.insert(0, 2 ** top)
        steps.insert(0, [top])
        top -= 1
    sizes.insert(0, gen_length - sum(sizes))
    steps.insert(0, list(range(top + 1)))
    return sizes, steps


def ass_counts(gen_length: int, sizes: Sequence[int]) -> np.ndarray:
    """Positions committed at each of the S steps: 2^i, the last step the remainder (reference code)."""
    power = gen_length.bit_length() - 1
    counts = 2 ** np.arange(power, dtype=np.int64)  # (S,)
    counts[-1] = sizes[-1] - (2 ** (power - 1) - 1) if len(sizes) == 1 else sizes[-1]
    return counts


def eoser_factor(step: int, total_steps: int, g_min: float, g_max: float) -> float:
    """EOSER's scale for EOS proposals: g_min + (g_max - g_min) * min(step, S - 1) / (S - 1).

    As the reference code (yjyddq/EOSER-ASS-RL, eval/generate.py) calls it, `step` is the
    step inside the current block and S the total steps.
    """
    if total_steps <= 1:
        return g_max
    return g_min + (g_max - g_min) * min(max(step, 0), total_steps - 1) / (total_steps - 1)


def sample_positions(confidence: np.ndarray, k: int, alg_temp: float, rng: np.random.Generator) -> np.ndarray:
    """k indices drawn without replacement from softmax(confidence / alg_temp) (Dream's alg_temp), by
    Gumbel-top-k: the same law as drawing them one at a time. Keys confidence + T * gumbel for T <= 1,
    confidence / T + gumbel above (the same order), so that no T > 0 overflows; keys that round equal
    (T * gumbel below a confidence's last bit) go by their noise, so equal confidences stay an even draw
    at the coldest T."""
    centred = confidence.astype(np.float64) - confidence.max()  # (c,) <= 0
    gumbel = gumbel_noise(confidence.shape, rng)  # (c,)
    keys = centred + alg_temp * gumbel if alg_temp <= 1 else centred / alg_temp + gumbel
    return np.lexsort((-gumbel, -keys))[:k]  # by key, then by noise


def confidence_of(kind: str, proposed_prob: np.ndarray, top_probs: np.ndarray, entropy: np.ndarray) -> np.ndarray:
    """Per-position confidence (c,) float64, higher = more confident: top1, margin or -entropy."""
    if kind == "top1":
        return proposed_prob.astype(np.float64)
    if kind == "margin":
        return (top_probs[:, 0] - top_probs[:, 1]).astype(np.float64)
    return -entropy.astype(np.float64)


def pick_above_threshold(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Indices with confidence > threshold, highest first; at least the single most confident."""
    order = np.argsort(-confidence, kind="stable")
    above = int(np.count_nonzero(confidence > threshold))
    return order[: max(above, 1)]


# What a learned unmasking policy sees at each position of the current block, in this order.
POLICY_FEATURES = ("top1", "margin", "entropy", "is_masked", "position", "block_done", "progress")


def policy_features(top_probs: np.ndarray, entropy: np.ndarray, is_masked: np.ndarray, block: int,
                    num_blocks: int) -> np.ndarray:
    """The policy's input (b, F) float32 over the b positions of the current block, from the graph's
    statistics (b, k) and (b,) there, committed positions included (the learned-policy paper's features).

    top1, margin (p1 - p2), entropy (nats); is_masked (1 or 0); position in the block, 0 to 1;
    block_done, the block's committed share; progress, the share of blocks before this one.
    """
    size = is_masked.size
    masked = is_masked.astype(np.float32)  # (b,)
    columns = [top_probs[:, 0], top_probs[:, 0] - top_probs[:, 1], entropy, masked,
               np.arange(size) / max(size - 1, 1), np.full(size, 1.0 - masked.mean()),
               np.full(size, block / num_blocks)]
    return np.stack(columns, axis=1).astype(np.float32)  # (b, F)


def gumbel_noise(shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Standard Gumbel draws of `shape`, float64."""
    noise = rng.random(shape)  # float64 in [0, 1)
    return -np.log(-np.log(np.clip(noise, 1e-300, None)))


def gumbel_argmax(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Sample one token per row of logits (K, V) from softmax(logits / T) by the Gumbel-max trick.

    Same distribution as LLaDA's `exp(logits) / (-log u) ** T` argmax, written in log space
    so large logits cannot overflow: logits + T * gumbel for T <= 1, logits / T + gumbel above
    (the same argmax). A suppressed column (SUPPRESSED_LOGIT) is never drawn, however hot T.
    """
    gumbel = gumbel_noise(logits.shape, rng)  # (K, V)
    wide = logits.astype(np.float64)
    scores = wide + temperature * gumbel if temperature <= 1 else wide / temperature + gumbel
    return np.argmax(np.where(logits <= SUPPRESSED_LOGIT, -np.inf, scores), axis=-1)


def first_index(tokens: np.ndarray, ids: Sequence[int]) -> int:
    """Index of the first token in `ids`, or len(tokens) if none."""
    hits = np.flatnonzero(np.isin(tokens, ids))
    return int(hits[0]) if hits.size else len(tokens)


@dataclass(frozen=True)
class AnswerSignals:
    """One model's predictions over the A answer positions at one step (docs/method.md, signals)."""

    tracked: np.ndarray      # (A,) bool, A(t): masked, top-1 not a stop id, within the first K
    top1_id: np.ndarray      # (A,) int64
    top1: np.ndarray         # (A,) float64, top-1 probability
    neg_entropy: np.ndarray  # (A,) float64, -entropy (higher = more confident)
    margin: np.ndarray       # (A,) float64, p(1st) - p(2nd)


def tracked_positions(is_masked: np.ndarray, top1_id: np.ndarray, stop_ids: Sequence[int],
                      first_k: Optional[int] = None) -> np.ndarray:
    """A(t) as a (A,) bool selector: masked answer positions whose top-1 is not a stop id, first K only."""
    keep = is_masked & ~np.isin(top1_id, stop_ids)
    if first_k is not None:
        keep &= np.cumsum(keep) <= first_k
    return keep


def answer_signals(top_ids: np.ndarray, top_probs: np.ndarray, entropy: np.ndarray, is_masked: np.ndarray,
                   stop_ids: Sequence[int], first_k: Optional[int] = None) -> AnswerSignals:
    """Signals from the graph's statistics (A, k), (A, k), (A,) at the answer positions."""
    top1_id = top_ids[:, 0].astype(np.int64)
    probs = top_probs.astype(np.float64)
    return AnswerSignals(tracked_positions(is_masked, top1_id, stop_ids, first_k), top1_id, probs[:, 0],
                         -entropy.astype(np.float64), probs[:, 0] - probs[:, 1])


def token_change_count(window: Sequence[AnswerSignals]) -> float:
    """C(n) over a window of n steps: per consecutive pair, the fraction of A(t) whose top-1 changed.

    An empty A(t) contributes 0.
    """
    total = 0.0
    for now, nxt in zip(window, window[1:]):
        if now.tracked.any():
            total += float(np.mean(now.top1_id[now.tracked] != nxt.top1_id[now.tracked]))
    return total


def interleaved_groups(n: int, groups: int) -> list:
    """Indices 0..n-1 dealt into `groups` interleaved groups (index i goes to group i % groups),
    empty groups left out: each a (n_g,) int64 array."""
    return [np.arange(start, n, groups) for start in range(min(groups, n))]  # the others would be empty


def log_probs_at(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log softmax(logits (K, V)) at ids (K,): (K,) float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return z[np.arange(ids.size), ids] - np.log(np.exp(z).sum(axis=1))


def mean_over_tracked(signals: AnswerSignals, metric: str) -> float:
    """Mean of a confidence metric (top1, entropy, margin) over A(t); NaN when A(t) is empty."""
    values = {"top1": signals.top1, "entropy": signals.neg_entropy, "margin": signals.margin}[metric]
    return float(values[signals.tracked].mean()) if signals.tracked.any() else float("nan")


def answer_converged(top1_prob: np.ndarray, is_masked: np.ndarray, threshold: Optional[float],
                     unchanged_steps: int, patience: Optional[int]) -> bool:
    """The early-exit rule over the answer positions (A,): every still-masked one has top-1
    probability >= threshold, or their top-1 ids have been unchanged for `patience` steps."""
    if not is_masked.any():
        return False
    confident = threshold is not None and bool(np.all(top1_prob[is_masked] >= threshold))
    settled = patience is not None and unchanged_steps >= patience
    return confident or settled


def best_indices(values: np.ndarray) -> np.ndarray:
    """Indices of the highest of values (M,), NaN lowest (all of them if every value is NaN)."""
    filled = np.where(np.isnan(values), -np.inf, values)
    return np.flatnonzero(filled == filled.max())


def leader_of(scores: np.ndarray, tiebreak: Optional[np.ndarray] = None) -> int:
    """Index of the highest score (M,); ties (and all-NaN) go to the highest `tiebreak` (M,) if given
    (NaN lowest), then to the lower index."""
    tied = best_indices(scores)
    if tiebreak is not None and tied.size > 1:
        tied = tied[best_indices(tiebreak[tied])]
    return int(tied[0])


def window_top1(window: Sequence[AnswerSignals]) -> float:
    """Mean over a window's steps of the mean top-1 probability over A(t) (steps with an empty A(t)
    skipped); NaN when every A(t) was empty."""
    means = [mean_over_tracked(signals, "top1") for signals in window]
    means = [m for m in means if not np.isnan(m)]
    return float(np.mean(means)) if means else float("nan")


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------

GRAPH_INPUTS = ("input_ids", "attention_mask", "positions")
GRAPH_OUTPUTS = ("top_ids", "top_probs", "entropy", "logits")
CACHE_INPUTS = ("input_ids", "rows", "attention_mask", "gather")  # then past_keys_i, past_values_i per layer
CACHE_OUTPUTS = GRAPH_OUTPUTS                                      # then keys_i, values_i per layer


def layer_names(prefix: str, layers: int) -> list:
    """prefix_0 .. prefix_{N-1}: cache.onnx's per-layer inputs (past_keys, past_values) or outputs."""
    return [f"{prefix}_{i}" for i in range(layers)]


@dataclass(frozen=True)
class Manifest:
    """The contents of a model folder's tie_lite.json (written by `python -m export`)."""

    family: str               # model family the export used (modernbert, bert, ...)
    mask_id: int              # the [MASK] token id
    eos_id: int               # end of sequence; generation pads with it
    pad_id: int               # padding id
    stop_ids: tuple           # output is cut at the first of these (EOS and any end-of-turn ids)
    logits_shift: int         # 1: token i is read from the logits at i - 1 (Dream-style)
    max_length: int           # longest canvas the model accepts (prompt + generation)
    vocab_size: int           # tokenizer columns; wider graph columns are never produced
    graph_vocab_size: int     # width of the graph's logits
    top_k: int                # top ids/probs the graph returns per position
    prompt_format: str        # chat prompt rendered at export, with {prompt} where the user text goes
    answer_marker: str        # text between reasoning and answer in reasoning-as-infilling
    tokenizer_sha256: str     # sha256 of tokenizer.json: equal hashes relay token ids exactly
    name: str = ""            # display name
    decode_defaults: dict = field(default_factory=dict)  # recommended gen_length / answer_length / block_size
    stop_texts: tuple = ()    # output text is also cut at the first of these (end markers that are not one token)
    extra: dict = field(default_factory=dict)  # everything else the manifest holds (source, validation)

    _INT_FIELDS = ("mask_id", "eos_id", "pad_id", "logits_shift", "max_length", "vocab_size",
                   "graph_vocab_size", "top_k")
    _STR_FIELDS = ("family", "prompt_format", "answer_marker", "tokenizer_sha256")

    @classmethod
    def from_dict(cls, data: dict, where: str = "manifest") -> "Manifest":
        """Validate a parsed manifest; ModelError names the bad field."""
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ModelError(f"{where}: schema_version {version!r} is not supported (this tie-lite reads "
                             f"{SCHEMA_VERSION}); re-export the model with this version's export")
        for name in cls._INT_FIELDS:
            _check_type(data, name, int, where)
        for name in cls._STR_FIELDS:
            _check_type(data, name, str, where)
        _check_type(data, "stop_ids", list, where)
        optional = cls._optional_fields(data, where)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "stop_ids", *optional}
        manifest = cls(stop_ids=tuple(data["stop_ids"]), **optional,
                       extra={k: v for k, v in data.items() if k not in known | {"stop_ids", *optional}},
                       **{k: data[k] for k in known})
        manifest._check_values(where)
        return manifest

    @staticmethod
    def _optional_fields(data: dict, where: str) -> dict:
        stop_texts = data.get("stop_texts", [])
        if not (isinstance(stop_texts, list) and all(isinstance(t, str) and t for t in stop_texts)):
            raise ModelError(f"{where}: stop_texts must be a list of non-empty strings, got {stop_texts!r}")
        return {"name": str(data.get("name", "")), "decode_defaults": data.get("decode_defaults", {}),
                "stop_texts": tuple(stop_texts)}

    def _check_values(self, where: str) -> None:
        named_ids = [("mask_id", self.mask_id), ("eos_id", self.eos_id), ("pad_id", self.pad_id)]
        named_ids += [(f"stop_ids[{i}]", v) for i, v in enumerate(self.stop_ids)]
        for name, value in named_ids:
            if not (isinstance(value, int) and 0 <= value < self.vocab_size):
                raise ModelError(f"{where}: {name} {value!r} is outside the vocabulary [0, {self.vocab_size})")
        if self.logits_shift not in (0, 1):
            raise ModelError(f"{where}: logits_shift must be 0 or 1, got {self.logits_shift}")
        if not 0 < self.vocab_size <= self.graph_vocab_size:
            raise ModelError(f"{where}: vocab_size {self.vocab_size} must be in (0, graph_vocab_size="
                             f"{self.graph_vocab_size}]")
        if self.top_k < 2 or self.max_length < 2:
            raise ModelError(f"{where}: top_k {self.top_k} and max_length {self.max_length} must be >= 2")
        self._check_decode_defaults(where)
        if self.prompt_format.count(PROMPT_SLOT) != 1:
            raise ModelError(f"{where}: prompt_format must contain {PROMPT_SLOT} exactly once, "
                             f"got {self.prompt_format!r}")

    def _check_decode_defaults(self, where: str) -> None:
        defaults = self.decode_defaults
        if (not isinstance(defaults, dict) or set(defaults) - set(DECODE_OPTIONS)
                or any(value is None for value in defaults.values())):
            raise ModelError(f"{where}: decode_defaults must be an object with integer values for keys from "
                             f"{DECODE_OPTIONS}, got {defaults!r}")
        try:
            DecodeConfig().with_defaults(defaults)
        except (ConfigError, TypeError) as exc:
            raise ModelError(f"{where}: decode_defaults {defaults!r} are invalid: {exc}") from None

    def to_dict(self) -> dict:
        data = {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}
        data.update(data.pop("extra"))
        data["stop_ids"] = list(self.stop_ids)
        data["stop_texts"] = list(self.stop_texts)
        return data


def _check_type(data: dict, name: str, kind: type, where: str) -> None:
    if name not in data:
        raise ModelError(f"{where}: required field {name!r} is missing")
    value = data[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelError(f"{where}: field {name!r} must be {kind.__name__}, got {value!r}")


@dataclass(frozen=True)
class Stats:
    """The graph's statistics at K gathered positions."""

    top_ids: np.ndarray          # (K, k) int64, most probable first
    top_probs: np.ndarray        # (K, k) float32
    entropy: np.ndarray          # (K,) float32, nats
    logits: Optional[np.ndarray]  # (K, V) float32, only when asked for (sampling)

    def take(self, rows) -> "Stats":
        """The rows a slice or index / boolean array selects."""
        logits = None if self.logits is None else self.logits[rows]
        return Stats(self.top_ids[rows], self.top_probs[rows], self.entropy[rows], logits)


@dataclass
class KVCache:
    """Per-layer keys and values kept from a full pass of cache.onnx over one canvas, for the
    decode of one block: which steps it may serve, and which rows those steps recompute."""

    keys: list          # N onnxruntime OrtValues (1, h, L, d) float32, one per layer, on the session's device
    values: list        # N OrtValues (1, h, L, d) float32
    tokens: np.ndarray  # (L,) int64 the canvas of that pass
    block: int          # the decode block it was kept for

    def serves(self, tokens: np.ndarray, block_idx: np.ndarray, block: int) -> bool:
        """Whether it may serve a step of `block` (positions block_idx) on the canvas `tokens` (L,):
        the same block, and no token outside it changed since the pass (a relay changes them)."""
        if block != self.block:
            return False
        outside = np.ones(tokens.size, bool)  # (L,)
        outside[block_idx] = False
        return np.array_equal(self.tokens[outside], tokens[outside])

    @staticmethod
    def rows(block_idx: np.ndarray, positions: np.ndarray, length: int, mode: str, window: Optional[int]) -> np.ndarray:
        """Canvas rows (Q,) sorted, a cached step recomputes: the block's, the rows read (`positions`,
        Model.read_rows), `window` rows before the block (None: the block's size) and, with mode
        "prefix", every row after it."""
        rows = np.union1d(block_idx, positions)
        window = block_idx.size if window is None else window
        rows = np.union1d(rows, np.arange(max(0, block_idx.min() - window), block_idx.min()))
        if mode == "prefix":
            rows = np.union1d(rows, np.arange(block_idx.max() + 1, length))
        return rows


class Model:
    """One exported model: an onnxruntime session, its tokenizer and its manifest.

    A model loaded with kv_cache ("prefix" or "dual") runs cache.onnx instead of model.onnx:
    `stats` is then a full pass of that graph, and decoding reuses kept keys and values
    within a block (`step_stats`), which is approximate.
    """

    def __init__(self, folder: Path, manifest: Manifest, tokenizer, session, kv_cache: Optional[str] = None,
                 kv_window: Optional[int] = None):
        self.folder = folder
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.session = session
        self.kv_cache = kv_cache
        self.kv_window = kv_window
        self.name = manifest.name or folder.name

    @classmethod
    def load(cls, folder, provider: str = "cpu", threads: Optional[int] = None,
             kv_cache: Optional[str] = None, kv_window: Optional[int] = None, openvino_cache=True) -> "Model":
        """Load an exported model folder.

        provider: "cpu", "cuda", "cuda:N" (GPU N) or "openvino" (Intel CPUs, float32; needs the
        openvino extra); a provider that onnxruntime cannot give the session is an error, never a
        silent fallback to onnxruntime's own CPU kernels.
        kv_cache: run the folder's cache.onnx (block key/value cache, approximate decoding):
        "prefix" keeps the keys/values before the current block and recomputes the block and
        everything after it each step (Fast-dLLM's prefix cache); "dual" keeps those after the
        block too and recomputes the block's rows only (its DualCache): less work, less exact.
        kv_window: with kv_cache, also recompute this many positions right before the block
        (None: as many as the block has; 0: none; at most the max length; a window longer than
        the positions before the block recomputes all of them), whose kept keys/values go stale first.
        openvino_cache: with provider "openvino", where the graph compiled for OpenVINO is kept, so that
        later loads skip compiling it (faster, and less memory than the graph's own weights): True for
        openvino_cache_dir()'s default folder, a folder, or False for none. An entry is used while the
        graph's files, onnxruntime, the plugin, the CPU and the settings (threads) are the ones it was
        compiled with; compiling a changed graph removes the entries of its earlier files.
        """
        if not isinstance(folder, (str, os.PathLike)):
            raise ConfigError(f"folder must be a path, got {type(folder).__name__} {folder!r:.60}")
        parse_provider(provider)
        _check_kv_options(kv_cache, kv_window)
        check_threads(threads)
        cache_dir = openvino_cache_dir(openvino_cache) if provider == "openvino" else None
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"model path is not a folder: {folder}" if folder.exists()
                             else f"model folder not found: {folder}")
        manifest = _read_manifest(folder)
        if kv_window is not None and kv_window > manifest.max_length:
            raise ConfigError(f"kv_window {kv_window} exceeds {folder}'s max length {manifest.max_length}")
        tokenizer = _load_tokenizer(folder, manifest)
        if not kv_cache:
            session = _open_session(folder / "model.onnx", provider, threads, cache_dir)
            _check_widths(session, manifest, folder / "model.onnx")
            return cls(folder, manifest, tokenizer, session)
        if not (folder / CACHE_GRAPH).is_file():
            raise ModelError(f"{folder} has no {CACHE_GRAPH} for --kv-cache: export it with "
                             "`python -m export SOURCE OUT_DIR --kv-cache`")
        session = _open_session(folder / CACHE_GRAPH, provider, threads, cache_dir, check=_check_cache_io)
        _check_widths(session, manifest, folder / CACHE_GRAPH)
        return cls(folder, manifest, tokenizer, session, kv_cache=kv_cache, kv_window=kv_window)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (n,) int64 of text, without special tokens added around it."""
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def detokenize(self, ids: np.ndarray) -> str:
        """Text of token ids (n,), special tokens left out."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    @functools.cached_property
    def longest_token(self) -> int:
        """Characters in the vocabulary's longest token (>= the text characters any one token covers)."""
        return max(len(token) for token in self.tokenizer.get_vocab(with_added_tokens=True))

    @property
    def batches_exactly(self) -> bool:
        """Whether canvases stepped together in one call get each canvas's own statistics, bit for bit. Not
        with int8 dynamic quantization: its activations' scale is one per call (the whole batch's range).
        With kv_cache, only a cache.onnx exported with fresh keys first (manifest cache_layout): one exported
        before sums a padded canvas's scores in another order. Not under OpenVINO: a canvas's statistics in a
        batch differ from its own call's in the last bits (~1e-6)."""
        if self.manifest.extra.get("quantization") == "int8-dynamic":
            return False
        if self.session.get_providers()[0] == PROVIDERS["openvino"]:
            return False
        return not self.kv_cache or self.manifest.extra.get("cache_layout") == CACHE_LAYOUT

    def read_rows(self, positions: np.ndarray) -> np.ndarray:
        """The canvas rows (K,) whose logits predict `positions` (K,): the positions themselves, or with
        the manifest's logits_shift the rows before them (Dream-style; position 0 reads itself)."""
        return np.maximum(positions - self.manifest.logits_shift, 0)

    def stats(self, tokens: np.ndarray, positions: np.ndarray, with_logits: bool = False) -> Stats:
        """Predictions at `positions` (K,) of the canvas `tokens` (L,); honours the manifest's shift."""
        read_at = self.read_rows(positions)  # (K,)
        if self.kv_cache:  # a full pass of cache.onnx, its keys and values not kept
            return self._run_cache(tokens, np.arange(tokens.size), self._empty_cache(), read_at,
                                   with_logits, keep=False)[0]
        feed = {
            "input_ids": tokens[None, :],                           # (1, L) int64
            "attention_mask": np.ones((1, tokens.size), np.int64),  # (1, L)
            "positions": read_at[None, :].astype(np.int64),         # (1, K)
        }
        wanted = list(GRAPH_OUTPUTS if with_logits else GRAPH_OUTPUTS[:3])
        outputs = self.session.run(wanted, feed)
        logits = outputs[3][0] if with_logits else None
        return Stats(outputs[0][0], outputs[1][0], outputs[2][0], logits)

    def batch_stats(self, canvases: Sequence[np.ndarray], positions: Sequence[np.ndarray],
                    with_logits: bool = False) -> list:
        """stats() of B canvases (L_b,) at their positions (K_b,), in one call of model.onnx: a list of B Stats,
        each equal bit for bit to the canvas's own stats() (tests/test_batch.py).

        Canvases are right-padded to the longest with pad_id, the padding masked out (attention_mask 0);
        positions are padded with position 0 up to batch_rows, so that each canvas's statistics start
        at the same memory alignment as in a call of its own. A model loaded with kv_cache, a single
        canvas, or a model that does not batch exactly (int8) makes one call per canvas.
        """
        if self.kv_cache or len(canvases) <= 1 or not self.batches_exactly:
            return [self.stats(t, p, with_logits) for t, p in zip(canvases, positions)]
        m = self.manifest
        longest = max(t.size for t in canvases)
        rows = batch_rows(max(p.size for p in positions), m.graph_vocab_size)
        input_ids = np.full((len(canvases), longest), m.pad_id, np.int64)  # (B, L)
        attention_mask = np.zeros((len(canvases), longest), np.int64)      # (B, L)
        read_at = np.zeros((len(canvases), rows), np.int64)                # (B, K)
        for b, (tokens, wanted) in enumerate(zip(canvases, positions)):
            input_ids[b, :tokens.size], attention_mask[b, :tokens.size] = tokens, 1
            read_at[b, :wanted.size] = self.read_rows(wanted)
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "positions": read_at}
        outputs = self.session.run(list(GRAPH_OUTPUTS if with_logits else GRAPH_OUTPUTS[:3]), feed)
        return [Stats(outputs[0][b, :p.size], outputs[1][b, :p.size], outputs[2][b, :p.size],
                      outputs[3][b, :p.size] if with_logits else None) for b, p in enumerate(positions)]

    def prime(self, tokens: np.ndarray, positions: np.ndarray, block: int, with_logits: bool = False) -> tuple:
        """(Stats at positions (K,), KVCache for `block`): a full pass of cache.onnx over the canvas (L,)."""
        every = np.arange(tokens.size, dtype=np.int64)  # (L,) every row recomputed
        stats, keys, values = self._run_cache(tokens, every, self._empty_cache(), self.read_rows(positions),
                                              with_logits)
        return stats, KVCache(keys, values, tokens.copy(), block)

    def _empty_cache(self) -> KVCache:
        """Nothing kept, for a pass that recomputes every row: keys/values of no position (P = 0)."""
        import onnxruntime as ort

        layers, heads, dim = self.cache_dims
        empty = np.zeros((1, heads, 0, dim), np.float32)  # (1, h, 0, d)
        on_device = ort.OrtValue.ortvalue_from_numpy(empty, *self.cache_device)
        return KVCache([on_device] * layers, [on_device] * layers, np.zeros(0, np.int64), block=-1)

    def cached_stats(self, tokens: np.ndarray, cache: KVCache, rows: np.ndarray, gather: np.ndarray,
                     with_logits: bool = False) -> Stats:
        """Predictions read from rows[gather] (K,) (read_rows), recomputing only the canvas `rows` (Q,)
        over the kept cache."""
        return self._run_cache(tokens, rows, cache, gather, with_logits, keep=False)[0]

    @functools.cached_property
    def cache_dims(self) -> tuple:
        """(layers N, heads h, head dim d) of cache.onnx's keys and values."""
        past = [i for i in self.session.get_inputs() if i.name.startswith("past_keys_")]
        return len(past), past[0].shape[1], past[0].shape[3]

    @functools.cached_property
    def cache_device(self) -> tuple:
        """("cpu", 0) or ("cuda", N): where the session keeps the keys and values it returns."""
        options = self.session.get_provider_options().get("CUDAExecutionProvider")
        return ("cuda", int(options["device_id"])) if options else ("cpu", 0)

    def _run_cache(self, tokens, rows, cache: KVCache, gather, with_logits: bool, keep: bool = True) -> tuple:
        """One cache.onnx call through IO binding: the kept keys and values go in, and the fresh ones
        come out, as onnxruntime values on the session's device (on CUDA they never cross to the
        host); the statistics come back to the host. Returns (Stats, keys, values), N layers each."""
        layers = len(cache.keys)
        binding = self.session.io_binding()
        small = {
            "input_ids": tokens[rows][None, :],                     # (1, Q) int64
            "rows": rows[None, :].astype(np.int64),                 # (1, Q)
            "attention_mask": np.ones((1, tokens.size), np.int64),  # (1, L)
            "gather": np.asarray(gather, np.int64)[None, :],        # (1, K)
        }
        for name, array in small.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        past = layer_names("past_keys", layers) + layer_names("past_values", layers)
        for name, value in zip(past, [*cache.keys, *cache.values]):  # (1, h, P, d) float32 each, P = L or 0
            binding.bind_ortvalue_input(name, value)
        stats = list(GRAPH_OUTPUTS if with_logits else GRAPH_OUTPUTS[:3])
        fresh = layer_names("keys", layers) + layer_names("values", layers) if keep else []
        for name in stats:
            binding.bind_output(name, "cpu")
        for name in fresh:  # (1, h, Q, d) float32 each
            binding.bind_output(name, *self.cache_device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        top_ids, top_probs, entropy, *rest = (o.numpy() for o in outputs[:len(stats)])
        logits = rest[0][0] if with_logits else None
        kept = outputs[len(stats):]
        return Stats(top_ids[0], top_probs[0], entropy[0], logits), kept[:layers], kept[layers:]

    def batch_prime(self, canvases: Sequence[np.ndarray], positions: Sequence[np.ndarray], blocks: Sequence[int],
                    with_logits: bool = False) -> list:
        """prime() of B canvases (L_b,) at their positions (K_b,) for their blocks, in one cache.onnx call:
        a list of B (Stats, KVCache). A single canvas, or a model that does not batch exactly (int8), makes a
        call per canvas (prime)."""
        if len(canvases) == 1 or not self.batches_exactly:
            return [self.prime(*args, with_logits) for args in zip(canvases, positions, blocks)]
        every = [np.arange(tokens.size, dtype=np.int64) for tokens in canvases]  # (L_b,) every row recomputed
        passes = self._run_cache_batch(canvases, every, None, [self.read_rows(p) for p in positions],
                                       with_logits, keep=True)
        return [(stats, KVCache(keys, values, tokens.copy(), block))
                for (stats, keys, values), tokens, block in zip(passes, canvases, blocks)]

    def batch_cached_stats(self, canvases: Sequence[np.ndarray], caches: Sequence[KVCache],
                           rows: Sequence[np.ndarray], gathers: Sequence[np.ndarray],
                           with_logits: bool = False) -> list:
        """cached_stats() of B canvases (L_b,) that recompute equally many rows (Q,), in one cache.onnx call:
        a list of B Stats. A single canvas, a single row each (the product of one row takes another kernel
        than that of several, so batching would change bits) or a model that does not batch exactly (int8)
        makes a call per canvas (cached_stats)."""
        if len(canvases) == 1 or rows[0].size == 1 or not self.batches_exactly:
            return [self.cached_stats(*args, with_logits) for args in zip(canvases, caches, rows, gathers)]
        passes = self._run_cache_batch(canvases, rows, caches, gathers, with_logits, keep=False)
        return [stats for stats, _, _ in passes]

    def _run_cache_batch(self, canvases: Sequence[np.ndarray], rows: Sequence[np.ndarray],
                         caches: Optional[Sequence[KVCache]], gathers: Sequence[np.ndarray], with_logits: bool,
                         keep: bool) -> list:
        """_run_cache() of B canvases in one call, through the host: [(Stats, keys, values)] per canvas.

        Padded as batch_stats pads: canvases right-padded to the longest L (masked), gathered rows to
        batch_rows. The kept keys and values (caches, or None: nothing kept, a full pass) are stacked to
        (B, h, L, d), zero past a canvas's end, where the mask hides them; cache.onnx puts them after the
        fresh rows in its softmax, so this padding comes after every canvas's own scores. Only a full pass
        pads rows (a shorter canvas recomputes fewer), with its position L - 1, masked for it: no row attends
        to a masked position, and the padding rows' outputs are dropped. Cached calls take equally many rows."""
        _require(caches is None or len({r.size for r in rows}) == 1,
                 f"a cached call's canvases recompute equally many rows, got {sorted({r.size for r in rows})}")
        feed = self._cache_batch_feed(canvases, rows, gathers)
        layers = self.cache_dims[0]
        feed.update(self._stacked_past(canvases, caches))
        stats = list(GRAPH_OUTPUTS if with_logits else GRAPH_OUTPUTS[:3])
        fresh = layer_names("keys", layers) + layer_names("values", layers) if keep else []
        top_ids, top_probs, entropy, *rest = self.session.run(stats + fresh, feed)
        logits = rest[0] if with_logits else None
        fresh_out = rest[1:] if with_logits else rest
        return [(Stats(top_ids[b, :g.size], top_probs[b, :g.size], entropy[b, :g.size],
                       None if logits is None else logits[b, :g.size]),
                 *self._own_rows(fresh_out, b, r.size, layers))
                for b, (r, g) in enumerate(zip(rows, gathers))]

    def _cache_batch_feed(self, canvases: Sequence[np.ndarray], rows: Sequence[np.ndarray],
                          gathers: Sequence[np.ndarray]) -> dict:
        """cache.onnx's input_ids, rows, attention_mask and gather for B canvases, padded (_run_cache_batch)."""
        m = self.manifest
        count, longest = len(canvases), max(tokens.size for tokens in canvases)
        width = max(r.size for r in rows)
        input_ids = np.full((count, width), m.pad_id, np.int64)            # (B, Q)
        row_idx = np.full((count, width), longest - 1, np.int64)           # (B, Q)
        attention_mask = np.zeros((count, longest), np.int64)              # (B, L)
        gather = np.zeros((count, batch_rows(max(g.size for g in gathers), m.graph_vocab_size)), np.int64)  # (B, K)
        for b, (tokens, own, wanted) in enumerate(zip(canvases, rows, gathers)):
            _require(own.size == width or tokens.size < longest,
                     f"a canvas as long as the longest ({longest}) recomputes {own.size} rows, not {width}")
            input_ids[b, :own.size], row_idx[b, :own.size] = tokens[own], own
            attention_mask[b, :tokens.size] = 1
            gather[b, :wanted.size] = wanted
        return {"input_ids": input_ids, "rows": row_idx, "attention_mask": attention_mask, "gather": gather}

    def _stacked_past(self, canvases: Sequence[np.ndarray], caches: Optional[Sequence[KVCache]]) -> dict:
        """past_keys_i / past_values_i (B, h, P, d) float32: each canvas's kept ones copied to the host and
        stacked, zero past its end; P = the longest canvas, or 0 when nothing is kept."""
        layers, heads, dim = self.cache_dims
        kept = max(tokens.size for tokens in canvases) if caches is not None else 0
        past = {}
        for i, name in enumerate(layer_names("past_keys", layers) + layer_names("past_values", layers)):
            stacked = np.zeros((len(canvases), heads, kept, dim), np.float32)  # (B, h, P, d)
            for b, cache in enumerate(caches or []):
                value = cache.keys[i] if i < layers else cache.values[i - layers]
                stacked[b, :, :canvases[b].size] = value.numpy()[0]
            past[name] = stacked
        return past

    def _own_rows(self, fresh: list, b: int, count: int, layers: int) -> tuple:
        """(keys, values) of canvas b's first `count` rows from a batched call's fresh outputs (B, h, Q, d),
        as onnxruntime values on the session's device, N layers each (none when `fresh` is empty)."""
        import onnxruntime as ort

        own = [ort.OrtValue.ortvalue_from_numpy(out[b:b + 1, :, :count].copy(), *self.cache_device)  # (1, h, Q_b, d)
               for out in fresh]  # copies: a view would keep the whole batch's output alive
        return own[:layers], own[layers:]


ROW_ALIGNMENT = 64  # bytes: where each canvas's gathered rows start in a batched call (Model.batch_stats)


def batch_rows(positions: int, vocab: int) -> int:
    """Gathered rows per canvas in a batched call: `positions` rounded up so that the rows of one canvas,
    `vocab` float32 logits each, span a multiple of ROW_ALIGNMENT bytes. Then every canvas's rows start
    64-byte aligned, as a call of its own does; the graph's entropy (a sum over the vocabulary) depends
    on that alignment in its last bit (measured: docs/decoding.md, batched prompts)."""
    per = ROW_ALIGNMENT // int(np.gcd(ROW_ALIGNMENT, 4 * vocab))
    return -(-positions // per) * per


THREADS_PER_CORE = 4  # thread counts above this many per core are refused (they only add overhead)


def check_threads(threads: Optional[int]) -> None:
    """ConfigError unless threads is None (every core) or an int in [1, THREADS_PER_CORE x cores]."""
    if threads is None:
        return
    most = THREADS_PER_CORE * (os.cpu_count() or 1)
    _require(is_int(threads) and 0 < threads <= most,
             f"threads must be an integer in [1, {most}] ({THREADS_PER_CORE} per core), got {threads!r}")


def _check_widths(session, manifest: Manifest, path: Path) -> None:
    """ModelError unless the graph's logits are as wide as the manifest's vocabulary and it returns
    the manifest's top_k ids (a graph from another model's export would decode garbage)."""
    shapes = {o.name: o.shape for o in session.get_outputs()}
    for name, want, what in (("logits", manifest.graph_vocab_size, "graph_vocab_size"),
                             ("top_ids", manifest.top_k, "top_k")):
        got = shapes[name][-1]
        if isinstance(got, int) and got != want:
            raise ModelError(f"{path}: its {name} are {got} wide but the manifest's {what} is {want}: "
                             "the graph and the manifest come from different exports")


def _check_kv_options(kv_cache: Optional[str], kv_window: Optional[int]) -> None:
    if kv_cache is not None and kv_cache not in KV_CACHE_MODES:
        raise ConfigError(f"kv_cache must be one of {', '.join(KV_CACHE_MODES)}, got {kv_cache!r}")
    if kv_window is not None:
        _require(kv_cache is not None, f"kv_window ({kv_window}) needs a kv_cache mode")
        _require(is_int(kv_window) and kv_window >= 0,
                 f"kv_window must be an int >= 0, got {kv_window!r}")


def _read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelError(f"{folder} has no {MANIFEST_NAME}: is it a folder written by `python -m export`?")
    return Manifest.from_dict(_read_json(path), where=str(path))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None


def _load_tokenizer(folder: Path, manifest: Manifest):
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{folder} has no tokenizer.json")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != manifest.tokenizer_sha256:
        raise ModelError(f"{path} does not match the manifest's tokenizer_sha256: re-export the model")
    try:
        tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:  # tokenizers raises bare Exception subclasses
        raise ModelError(f"cannot read {path}: {exc}") from None
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size < manifest.vocab_size:
        raise ModelError(f"{path} has {size} tokens but the manifest's vocab_size is {manifest.vocab_size}")
    return tokenizer


def parse_provider(provider: str) -> tuple[str, dict]:
    """("CPUExecutionProvider", {}), ("CUDAExecutionProvider", {"device_id": N}) or
    ("OpenVINOExecutionProvider", {}) from "cpu" / "cuda[:N]" / "openvino"."""
    if not isinstance(provider, str):
        raise ConfigError(f"provider must be cpu, cuda, cuda:N or openvino, got {provider!r}")
    name, _, device = provider.partition(":")
    if name not in PROVIDERS or (device and not (name == "cuda" and device.isdigit())):
        raise ConfigError(f"provider must be cpu, cuda, cuda:N or openvino, got {provider!r}")
    return PROVIDERS[name], ({"device_id": int(device)} if device else {})


def openvino_devices() -> list:
    """OpenVINO's CPU devices (onnxruntime OrtEpDevice) that its onnxruntime plugin offers on this machine,
    registering the plugin first; empty on a CPU it does not run on (e.g. AMD's)."""
    import onnxruntime as ort

    try:
        import onnxruntime_ep_openvino as plugin
        library = plugin.get_library_path()
    except (ImportError, OSError):  # not installed, or installed without its library
        raise ModelError(f"provider 'openvino' needs OpenVINO's onnxruntime plugin ({OPENVINO_PLUGIN}): "
                         "pip install 'tie-lite[openvino]'") from None
    if not hasattr(ort, "register_execution_provider_library"):
        raise ModelError(f"provider 'openvino' needs onnxruntime 1.32 or later (plugin providers); "
                         f"this is {ort.__version__}")
    _register_plugin(PROVIDERS["openvino"], library)
    return [d for d in ort.get_ep_devices()
            if d.ep_name == PROVIDERS["openvino"] and d.ep_metadata.get("ov_device") == "CPU"]


@functools.cache
def _register_plugin(name: str, library: str) -> None:
    """Register a provider plugin's library with this process's onnxruntime, once (a second registration
    fails); one that the embedding app registered already is left as it is."""
    import onnxruntime as ort

    try:
        ort.register_execution_provider_library(name, library)
    except Exception as exc:  # onnxruntime's own exception types
        if "already registered" not in str(exc):
            raise ModelError(f"cannot register the onnxruntime plugin {library}: {_first_line(exc)}") from None


def _add_openvino(options, threads: Optional[int]) -> dict:
    """Give the session options OpenVINO's CPU device, computing in float32 (on CPUs with bfloat16
    units OpenVINO's default is bfloat16, which changes tokens) with `threads` threads (None: its own
    choice, every core), not pinned to cores (pinned, TIE's two one-thread models ran slower). Returns
    what a graph compiled with these options depends on: the plugin's version, the CPU, the settings."""
    devices = openvino_devices()
    if not devices:
        raise ModelError("provider 'openvino': OpenVINO's plugin offers no CPU device on this machine "
                         "(it runs on Intel CPUs); use provider 'cpu'")
    cpu = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": "NO"}
    if threads:
        cpu["INFERENCE_NUM_THREADS"] = str(threads)
    load_config = json.dumps({"CPU": cpu}, sort_keys=True)
    options.add_provider_for_devices(devices[:1], {"load_config": load_config})
    meta = devices[0].ep_metadata
    return {"plugin": meta.get("version"), "cpu": meta.get("FULL_DEVICE_NAME"),
            "capabilities": meta.get("OPTIMIZATION_CAPABILITIES"), "load_config": load_config}


def openvino_cache_dir(openvino_cache=True) -> Optional[Path]:
    """The folder Model.load keeps graphs compiled for OpenVINO in (None: none kept). For True:
    $TIE_LITE_OPENVINO_CACHE, else the user's cache folder ($XDG_CACHE_HOME, ~/.cache, or on Windows
    %LOCALAPPDATA%) / tie-lite / openvino; for False, None; a folder (str or path) as given."""
    if openvino_cache is False:
        return None
    if openvino_cache is True:
        folder = os.environ.get(OPENVINO_CACHE_ENV) or _user_cache_dir()
        if folder is None:
            return None
    elif isinstance(openvino_cache, (str, os.PathLike)) and os.fspath(openvino_cache):
        folder = openvino_cache
    else:
        raise ConfigError(f"openvino_cache must be True, False or a folder, got {openvino_cache!r}")
    try:
        folder = Path(folder).expanduser()
        is_file = folder.exists() and not folder.is_dir()
    except (RuntimeError, OSError) as exc:  # ~user unknown, no home folder, a parent not searchable
        raise ConfigError(f"cannot use the OpenVINO cache {os.fspath(folder)!r}: {exc}") from None
    if is_file:
        raise ConfigError(f"the OpenVINO cache {folder} is a file, not a folder")
    return folder


def _user_cache_dir() -> Optional[Path]:
    """The user's cache folder / tie-lite / openvino; None where there is no home folder."""
    base = os.environ.get("LOCALAPPDATA") if os.name == "nt" else os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = Path.home() / ".cache"
        except RuntimeError:  # no home folder (e.g. a service without HOME)
            return None
    return Path(base) / "tie-lite" / "openvino"


def _compiled_session(path: Path, options, cache: Path, target: dict) -> tuple:
    """(session or None, problem or None): a session of `path` compiled for OpenVINO, from its entry in
    the `cache` folder, compiled into one first when none matches (_graph_files, onnxruntime's version,
    `target` from _add_openvino). None and why, when the entry can neither be read nor written."""
    import onnxruntime as ort

    try:
        source = {"graph": str(path.resolve()), "files": _graph_files(path), "onnxruntime": ort.__version__,
                  **target}
        key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
        entry = cache / f"{key}-{path.parent.parent.name}-{path.parent.name}-{path.stem}"  # never a dot first
        compiled = str(entry / COMPILED_GRAPH)
        if (entry / COMPILED_GRAPH).is_file():
            try:
                return ort.InferenceSession(compiled, sess_options=options), None
            except Exception:  # a damaged entry (onnxruntime's own exception types): compiled again below
                shutil.rmtree(entry, ignore_errors=True)
        _compile_entry(path, options, cache, entry, source)
        return ort.InferenceSession(compiled, sess_options=options), None
    except Exception as exc:  # OSError (unwritable, disk full, another user's entry), or onnxruntime's
        return None, (f"cannot keep OpenVINO's compiled {path} in {cache} ({_first_line(exc)}); "
                      "compiled it for this load only")


def _graph_files(path: Path) -> list:
    """[name, size, modification and change times, inode] of a graph file and its external data files
    beside it (named after it: model.onnx.data, model.onnx_data): what an OpenVINO cache entry is keyed
    by, so that a graph exported or copied anew, even with its old times kept, is compiled again."""
    stats = [(f.name, f.stat()) for f in sorted(path.parent.glob(path.name + "*"))]
    return [[name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] for name, st in stats]


STAGING_MAX_AGE = 24 * 3600  # seconds after which an OpenVINO cache's staging folder is a killed compile's


def _compile_entry(path: Path, options, cache: Path, entry: Path, source: dict) -> None:
    """Compile `path` for OpenVINO into `entry` (COMPILED_GRAPH, its blob beside it, the weights of any
    nodes left to onnxruntime in a data file, COMPILED_SOURCE): in a staging folder renamed at the end,
    so a process never sees half an entry. Removed on the way: the entries of the graph's earlier files
    (those of other settings stay: a model alone and in TIE has two), and staging folders older than
    STAGING_MAX_AGE. Compiled at onnxruntime's full optimization level, as a session of the graph itself
    is (a lower level changes the last bits)."""
    import onnxruntime as ort

    cache.mkdir(parents=True, exist_ok=True)
    _drop_stale(cache, source)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=cache))
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide the entry from other users of a shared cache
        compiler = ort.ModelCompiler(options, str(path), external_initializers_file_path=COMPILED_GRAPH + ".data",
                                     graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        compiler.compile_to_file(str(staging / COMPILED_GRAPH))
        (staging / COMPILED_SOURCE).write_text(json.dumps(source, indent=1) + "\n")
        try:
            os.rename(staging, entry)
        except OSError:
            if not (entry / COMPILED_GRAPH).is_file():  # else another process compiled it meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _drop_stale(cache: Path, source: dict) -> None:
    """Remove the cache's entries compiled from earlier files of source's graph, and staging folders left
    by compiles killed more than STAGING_MAX_AGE ago."""
    for folder in cache.iterdir():
        if folder.name.startswith("."):
            if folder.is_dir() and time.time() - folder.stat().st_mtime > STAGING_MAX_AGE:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        kept = _compiled_from(folder / COMPILED_SOURCE)
        if kept.get("graph") == source["graph"] and kept.get("files") != source["files"]:
            shutil.rmtree(folder, ignore_errors=True)


def _compiled_from(source_file: Path) -> dict:
    """What an OpenVINO cache entry was compiled from (its COMPILED_SOURCE); empty when unreadable."""
    try:
        source = json.loads(source_file.read_text())
    except (OSError, ValueError):
        return {}
    return source if isinstance(source, dict) else {}


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _open_session(path: Path, provider: str, threads: Optional[int], openvino_cache: Optional[Path] = None,
                  check: Optional[Callable] = None):
    """An onnxruntime session of the graph `path` on `provider`; under OpenVINO compiled once into the
    folder `openvino_cache` (None: compiled at every load)."""
    import onnxruntime as ort

    if not path.is_file():
        raise ModelError(f"ONNX graph not found: {path}")
    wanted, provider_options = parse_provider(provider)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # onnxruntime's CPU provider, also for nodes a plugin leaves it
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = target = None
    if wanted == PROVIDERS["openvino"]:
        target = _add_openvino(options, threads)
        providers = None  # the session options name the plugin's device
    elif wanted in ort.get_available_providers():
        providers = [(wanted, provider_options)]
    else:
        raise ModelError(f"provider {provider!r} is not available in this onnxruntime "
                         f"(available: {', '.join(ort.get_available_providers())})")
    problem = None
    if target is not None and openvino_cache is not None:
        session, problem = _compiled_session(path, options, openvino_cache, target)
    if session is None:
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
            raise ModelError(f"cannot load ONNX graph {path}: {_first_line(exc)}") from None
    if problem:  # the graph loads, only its compiled copy cannot be kept
        warnings.warn(problem, stacklevel=3)
    if session.get_providers()[0] != wanted:
        raise ModelError(f"onnxruntime did not give the session the {wanted} provider")
    (check or _check_graph_io)(session, path)
    return session


def _io_check(wanted_inputs: tuple, wanted_outputs: tuple, user: str, command: str) -> Callable:
    """A session check: the graph's input and output names must be these (in any order)."""
    def check(session, path: Path) -> None:
        inputs = tuple(i.name for i in session.get_inputs())
        outputs = tuple(o.name for o in session.get_outputs())
        if sorted(inputs) != sorted(wanted_inputs) or sorted(outputs) != sorted(wanted_outputs):
            raise ModelError(f"{path} has inputs {inputs} and outputs {outputs}; {user} needs "
                             f"{wanted_inputs} and {wanted_outputs}: export it with `{command}`")
    return check


_check_graph_io = _io_check(GRAPH_INPUTS, GRAPH_OUTPUTS, "tie-lite", "python -m export")


def _check_cache_io(session, path: Path) -> None:
    """cache.onnx's names: CACHE_INPUTS and CACHE_OUTPUTS, then one past/fresh key and value per layer."""
    layers = sum(i.name.startswith("past_keys_") for i in session.get_inputs())
    _io_check(CACHE_INPUTS + tuple(layer_names("past_keys", layers) + layer_names("past_values", layers)),
              CACHE_OUTPUTS + tuple(layer_names("keys", layers) + layer_names("values", layers)),
              "tie-lite's --kv-cache", "python -m export --kv-cache")(session, path)


class Policy:
    """A learned unmasking policy (docs/decoding.md): one ONNX graph mapping the current block's
    features (1, b, F) to unmask logits (1, b); a masked position is committed when its logit
    is > 0 (probability > 0.5), and at least the highest one each step."""

    def __init__(self, folder: Path, card: dict, session):
        self.folder, self.card, self.session = folder, card, session

    @classmethod
    def load(cls, folder) -> "Policy":
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"policy folder not found: {folder}")
        card_path = folder / POLICY_CARD
        card = _read_json(card_path)
        if not isinstance(card, dict) or card.get("schema_version") != SCHEMA_VERSION:
            raise ModelError(f"{card_path}: schema_version must be {SCHEMA_VERSION}")
        if tuple(card.get("features", ())) != POLICY_FEATURES:
            raise ModelError(f"{card_path}: features {card.get('features')!r} are not this runtime's "
                             f"{list(POLICY_FEATURES)}")
        session = _open_session(folder / POLICY_GRAPH, "cpu", threads=1, check=_check_policy_io)
        return cls(folder, card, session)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Unmask logits (b,) for the block's features (b, F)."""
        return self.session.run(["unmask_logits"], {"features": features[None]})[0][0]


@functools.lru_cache(maxsize=8)
def load_policy(folder: str) -> Policy:
    """The policy in `folder`, loaded once per process."""
    return Policy.load(folder)


def _check_policy_io(session, path: Path) -> None:
    inputs = [(i.name, i.shape[-1]) for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [("features", len(POLICY_FEATURES))] or outputs != ["unmask_logits"]:
        raise ModelError(f"{path} has inputs {inputs} and outputs {outputs}; a policy needs features "
                         f"(1, b, {len(POLICY_FEATURES)}) -> unmask_logits (1, b): train it with "
                         "train/train_policy.py")


# ---------------------------------------------------------------------------
# decoding (one model)
# ---------------------------------------------------------------------------

@dataclass
class Canvas:
    """A model's sequence being decoded, and where its regions lie."""

    tokens: np.ndarray       # (L,) int64, mask_id where not yet decoded
    prompt_length: int       # tokens before the generated region
    gen_idx: np.ndarray      # (G,) int64 canvas positions of the generated masks, in order
    answer_idx: np.ndarray   # (A,) int64 canvas positions of the answer masks (empty in plain mode)
    marker_length: int       # tokens of the answer marker between reasoning and answer


def build_canvas(model: Model, prompt: str, config: DecodeConfig) -> Canvas:
    """Lay out `prompt | [MASK] x G` or `prompt | [MASK] x R | marker | [MASK] x A`; unset lengths
    of `config` are the model's (DecodeConfig.for_model)."""
    config = config.for_model(model)
    check_prompt(model, prompt)
    m = model.manifest
    prompt_ids = model.encode(m.prompt_format.replace(PROMPT_SLOT, prompt))  # (P,)
    marker_ids = model.encode(m.answer_marker) if config.infill else np.zeros(0, np.int64)  # (Mk,)
    reasoning = config.gen_length - config.answer_length
    length = prompt_ids.size + config.gen_length + marker_ids.size
    if length > m.max_length:
        raise ConfigError(f"prompt ({prompt_ids.size} tokens) + gen_length {config.gen_length}"
                          + (f" + marker ({marker_ids.size})" if config.infill else "")
                          + f" = {length} tokens exceeds {model.name}'s max length {m.max_length}")
    masks = lambda n: np.full(n, m.mask_id, np.int64)  # noqa: E731
    tokens = np.concatenate([prompt_ids, masks(reasoning), marker_ids, masks(config.answer_length)])  # (L,)
    answer_start = prompt_ids.size + reasoning + marker_ids.size
    gen_idx = np.concatenate([np.arange(prompt_ids.size, prompt_ids.size + reasoning),
                              np.arange(answer_start, length)]).astype(np.int64)  # (G,)
    return Canvas(tokens, int(prompt_ids.size), gen_idx, gen_idx[reasoning:], int(marker_ids.size))


def check_text(text, what: str) -> None:
    """ConfigError unless `text` is a non-empty str of valid Unicode without NUL characters.
    NUL is refused: it is never text a model was trained on, and usually means a binary file."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a str, got {type(text).__name__} {text!r:.60}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{what} is not valid Unicode text: {exc.reason} at character {exc.start}") from None
    if "\0" in text:
        raise ConfigError(f"{what} contains a NUL character (U+0000) at character {text.index(chr(0))}")
    if not text.strip():
        raise ConfigError(f"{what} is empty")


def check_prompt(model: Model, prompt) -> None:
    """check_text, and a length bound applied before tokenizing: a prompt of more characters than
    the model's max_length times its longest token (in characters) cannot fit in its canvas."""
    check_text(prompt, "prompt")
    bound = model.manifest.max_length * model.longest_token
    if len(prompt) > bound:
        raise ConfigError(f"prompt has {len(prompt)} characters; more than {bound} ({model.name}'s max length "
                          f"{model.manifest.max_length} tokens x its longest token, {model.longest_token} "
                          "characters) cannot fit")


@dataclass(frozen=True)
class StepEvent:
    """What a step did; handed to `on_step` and kept in the history."""

    step: int                  # 1-based count of this model's forward passes so far
    block: int                 # block index the step decoded in
    committed_idx: np.ndarray  # (c,) int64 canvas positions committed this step
    committed_ids: np.ndarray  # (c,) int64 token ids written there
    confidence: np.ndarray     # (c,) float64 their probabilities
    tokens: np.ndarray         # (L,) int64 the canvas after the step (a copy)
    gen_idx: np.ndarray        # (G,) int64 canvas positions of the generated region (shared, read-only)
    model: str                 # name of the model that decoded
    signals: Optional[AnswerSignals] = None  # answer-position signals before the commit (when tracking)
    answer_confidence: Optional[float] = None  # given an answer: the model's confidence in it after the step
    prompt: int = 0            # a batched call: index of the prompt in its list


# Called after every step with its StepEvent and, in an ensemble, after every relay with the Relay;
# returning False stops decoding (None, the result of a plain function, continues).
OnStep = Callable[["StepEvent | Relay"], Optional[bool]]


@dataclass
class DecodeState:
    """Where one model's decode stands: canvas, current block and its step schedule, its sampler,
    and whether its steps report the answer positions' signals (TIE's tracking)."""

    canvas: Canvas
    rng: np.random.Generator       # draws tokens (temperature > 0) and positions (alg_temp > 0)
    track: bool = False            # read every answer position each step and report its AnswerSignals
    first_k: Optional[int] = None  # with track: only the first K answer positions count (paper: 8 for code)
    block: int = 0                 # current block
    block_step: int = 0            # steps taken in the current block
    steps: int = 0                 # forward passes taken so far
    schedule: Optional[np.ndarray] = None  # (steps_per_block,) commits per step of the current block
    exited: bool = False           # early exit filled the answer and ended the decode
    answer_top1: Optional[np.ndarray] = None  # (A,) the answer positions' top-1 ids at the last step
    unchanged_steps: int = 0       # consecutive steps those ids did not change (early exit)
    kv: Optional[KVCache] = None   # kept keys/values, for a model loaded with kv_cache

    @property
    def tokens(self) -> np.ndarray:
        return self.canvas.tokens


def current_block_idx(state: DecodeState, config: DecodeConfig) -> np.ndarray:
    """Canvas positions (b,) of the current block."""
    bounds = config.block_bounds
    return state.canvas.gen_idx[bounds[state.block]: bounds[state.block + 1]]


def block_masked_idx(state: DecodeState, config: DecodeConfig, mask_id: int) -> np.ndarray:
    """Still-masked canvas positions (c,) of the current block."""
    block_idx = current_block_idx(state, config)
    return block_idx[state.tokens[block_idx] == mask_id]


def advance_block(state: DecodeState, config: DecodeConfig, mask_id: int) -> np.ndarray:
    """Move past finished blocks; return the current block's masked positions (empty when done)."""
    while state.block < config.num_blocks and not state.exited:
        masked_idx = block_masked_idx(state, config, mask_id)
        if masked_idx.size:
            if state.schedule is None:
                state.schedule = block_schedule(config, state.block, masked_idx.size)
            return masked_idx
        state.block, state.block_step, state.schedule = state.block + 1, 0, None
    return np.zeros(0, np.int64)


def block_schedule(config: DecodeConfig, block: int, masked: int) -> np.ndarray:
    """Commits per step (n,) for a block entered with `masked` masks (strategies schedule and ass)."""
    if config.strategy == "ass":
        sizes, steps = ass_layout(config.gen_length, config.ass_blocks)
        return ass_counts(config.gen_length, sizes)[steps[block]]
    return transfer_schedule(masked, config.steps_per_block)


def is_finished(state: DecodeState, mask_id: int) -> bool:
    return state.exited or not bool(np.any(state.tokens[state.canvas.gen_idx] == mask_id))


def commit_count(state: DecodeState, config: DecodeConfig, masked: int) -> int:
    """How many of the block's `masked` positions a counted strategy commits this step."""
    if config.strategy in ("schedule", "ass"):
        return min(int(state.schedule[state.block_step]), masked)
    if config.strategy == "topk":
        return min(config.tokens_per_step, masked)
    return dream_count(masked, state.block_step, config.steps_per_block, config.eps)


def choose_positions(state: DecodeState, config: DecodeConfig, confidence: np.ndarray, entropy: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Stage 4, pick: indices (into the block's masked positions) to commit this step, by the strategy."""
    if config.strategy == "threshold":
        return pick_above_threshold(confidence, config.threshold)
    if config.strategy == "policy":  # confidence holds the policy's unmask logits
        return pick_above_threshold(confidence, 0.0)
    if config.strategy == "med":
        return pick_within_entropy_budget(entropy, config.entropy_budget)
    count = commit_count(state, config, confidence.size)
    if config.alg_temp > 0 and count > 0:
        return sample_positions(confidence, count, config.alg_temp, rng)
    return pick_by_confidence(confidence, count)


# A step in five stages: read statistics, propose, rank, pick, commit.

@dataclass(frozen=True)
class Reading:
    """Stage 1's output: the forward pass's statistics where the step looks."""

    is_masked: np.ndarray            # (r,) bool which of the r positions read are still masked (r: the block's
                                     # masks, or for the learned policy the whole block)
    stats: Stats                     # (r rows) at the positions read
    answer: Stats                    # (A rows) at the answer positions, when tracked or exiting early, else 0 rows
    signals: Optional[AnswerSignals]  # before this step's commit, when the state tracks the answer

    @property
    def masked(self) -> Stats:
        """The statistics at the still-masked positions (c rows), in order."""
        return self.stats if self.is_masked.all() else self.stats.take(self.is_masked)


@dataclass(frozen=True)
class Commit:
    """Positions a step writes, the ids written and their probabilities."""

    idx: np.ndarray    # (c,) int64 canvas positions
    ids: np.ndarray    # (c,) int64 token ids
    probs: np.ndarray  # (c,) float64

    def then(self, other: "Commit") -> "Commit":
        return Commit(np.concatenate([self.idx, other.idx]), np.concatenate([self.ids, other.ids]),
                      np.concatenate([self.probs, other.probs]))


NO_COMMIT = Commit(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))


def step_stats(model: Model, state: DecodeState, config: DecodeConfig, positions: np.ndarray,
               with_logits: bool) -> Stats:
    """This step's predictions at `positions` (K,).

    A model loaded with kv_cache makes a full pass when a block starts (or when anything
    outside the block changed, e.g. a relay) and keeps its keys and values (KVCache); the
    block's other steps recompute only the rows KVCache.rows names, over the kept ones.
    """
    if not model.kv_cache:
        return model.stats(state.tokens, positions, with_logits)
    if needs_prime(state, config):
        stats, state.kv = model.prime(state.tokens, positions, state.block, with_logits)
        return stats
    return model.cached_stats(state.tokens, state.kv, *cached_rows(model, state, config, positions), with_logits)


def needs_prime(state: DecodeState, config: DecodeConfig) -> bool:
    """Whether a kv_cache model's step needs a full pass: no kept keys and values serve this block."""
    return state.kv is None or not state.kv.serves(state.tokens, current_block_idx(state, config), state.block)


def cached_rows(model: Model, state: DecodeState, config: DecodeConfig, positions: np.ndarray) -> tuple:
    """(rows (Q,), gather (K,)): the canvas rows a cached step recomputes, and where among them `positions`
    (K,) are read."""
    read_at = model.read_rows(positions)  # (K,)
    rows = KVCache.rows(current_block_idx(state, config), read_at, state.tokens.size, model.kv_cache,
                        model.kv_window)  # (Q,)
    return rows, np.searchsorted(rows, read_at)


def batch_step_stats(model: Model, states: Sequence[DecodeState], config: DecodeConfig,
                     positions: Sequence[np.ndarray], with_logits: bool) -> list:
    """step_stats of B states of a kv_cache model at their positions (K_b,), each canvas's as its own call
    gives: one call for the canvases whose block needs a full pass, and one per row count Q for the
    others (canvases at the same block of equal decodes recompute equally many rows); steps of a
    single row, and models that do not batch exactly, make a call per canvas."""
    stats = [None] * len(states)
    priming = [b for b, state in enumerate(states) if needs_prime(state, config)]
    if priming:
        primed = model.batch_prime([states[b].tokens for b in priming], [positions[b] for b in priming],
                                   [states[b].block for b in priming], with_logits)
        for b, (read, cache) in zip(priming, primed):
            stats[b], states[b].kv = read, cache
    groups: dict = {}  # Q -> [(b, rows (Q,), gather (K_b,))]
    for b in sorted(set(range(len(states))) - set(priming)):
        rows, gather = cached_rows(model, states[b], config, positions[b])
        groups.setdefault(rows.size, []).append((b, rows, gather))
    for group in groups.values():
        index, rows, gathers = zip(*group)
        taken = model.batch_cached_stats([states[b].tokens for b in index], [states[b].kv for b in index],
                                         rows, gathers, with_logits)
        for b, read in zip(index, taken):
            stats[b] = read
    return stats


def track_answer(model: Model, tokens: np.ndarray, answer_idx: np.ndarray, stats: Stats,
                 first_k: Optional[int]) -> AnswerSignals:
    """AnswerSignals from the statistics gathered at answer_idx (A,)."""
    is_masked = tokens[answer_idx] == model.manifest.mask_id
    return answer_signals(stats.top_ids, stats.top_probs, stats.entropy, is_masked, model.manifest.stop_ids,
                          first_k)


def read_stats(model: Model, state: DecodeState, config: DecodeConfig, masked_idx: np.ndarray) -> Reading:
    """Stage 1, read: one forward pass, gathered at the positions to rank and at the answer."""
    read_idx, answer_idx = read_positions(state, config, masked_idx)
    stats = step_stats(model, state, config, np.concatenate([read_idx, answer_idx]), config.temperature > 0)
    return split_reading(model, state, read_idx, answer_idx, stats)


def read_positions(state: DecodeState, config: DecodeConfig, masked_idx: np.ndarray) -> tuple:
    """Where stage 1 reads: the positions to rank (r,) and the answer positions (A,), empty unless the
    state tracks the answer or exits early."""
    read_idx = current_block_idx(state, config) if config.strategy == "policy" else masked_idx
    answer_idx = state.canvas.answer_idx if state.track or config.early_exit else np.zeros(0, np.int64)
    return read_idx, answer_idx


def split_reading(model: Model, state: DecodeState, read_idx: np.ndarray, answer_idx: np.ndarray,
                  stats: Stats) -> Reading:
    """The Reading of statistics gathered at read_idx then answer_idx ((r + A) rows)."""
    answer = stats.take(slice(read_idx.size, None))
    signals = track_answer(model, state.tokens, answer_idx, answer, state.first_k) if state.track else None
    is_masked = state.tokens[read_idx] == model.manifest.mask_id  # (r,)
    return Reading(is_masked, stats.take(slice(0, read_idx.size)), answer, signals)


def propose(stats: Stats, config: DecodeConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2, propose: token ids (c,) and their probabilities (c,) under softmax(logits), at the masked
    positions: the top-1 (greedy) or a draw at the temperature."""
    if config.temperature == 0:
        return stats.top_ids[:, 0].astype(np.int64), stats.top_probs[:, 0].astype(np.float64)
    proposed = gumbel_argmax(stats.logits, config.temperature, rng)  # (c,)
    probs = softmax(stats.logits)  # (c, V) float64
    return proposed.astype(np.int64), probs[np.arange(proposed.size), proposed]


def rank(model: Model, state: DecodeState, config: DecodeConfig, reading: Reading, proposed: np.ndarray,
         proposed_prob: np.ndarray) -> np.ndarray:
    """Stage 3, rank: a score (c,) per masked position, higher = commit first. The learned policy is
    one ranker; the others score the proposals by the configured confidence."""
    if config.strategy == "policy":
        return policy_ranking(state, config, reading)
    return rank_proposals(state, config, reading.masked, proposed, proposed_prob, model.manifest.eos_id)


def rank_proposals(state: DecodeState, config: DecodeConfig, stats: Stats, proposed: np.ndarray,
                   proposed_prob: np.ndarray, eos_id: int) -> np.ndarray:
    """Confidence (c,) of each proposal, with EOSER's scaling of EOS proposals when asked for."""
    confidence = confidence_of(config.confidence, proposed_prob, stats.top_probs, stats.entropy)
    if config.eos_gamma is not None:
        factor = eoser_factor(state.block_step, config.steps or config.gen_length, *config.eos_gamma)
        confidence = np.where(proposed == eos_id, confidence * factor, confidence)
    return confidence


def policy_ranking(state: DecodeState, config: DecodeConfig, reading: Reading) -> np.ndarray:
    """The learned policy's unmask logits (c,) at the block's masked positions; it sees the whole block."""
    features = policy_features(reading.stats.top_probs, reading.stats.entropy, reading.is_masked, state.block,
                               config.num_blocks)
    logits = load_policy(str(config.policy)).logits(features).astype(np.float64)  # (r,)
    return logits[reading.is_masked]


def commit(model: Model, state: DecodeState, config: DecodeConfig, picked: Commit, answer: Stats) -> Commit:
    """Stage 5, commit: write the picked proposals, then let early exit fill the answer if it fires."""
    state.tokens[picked.idx] = picked.ids
    if config.early_exit:
        picked = picked.then(exit_early(state, config, answer, model.manifest.mask_id))
    state.block_step += 1
    state.steps += 1
    return picked


def exit_early(state: DecodeState, config: DecodeConfig, answer_stats: Stats, mask_id: int) -> Commit:
    """Apply the early-exit rule to this step's answer predictions; fill the answer if it fires.
    Returns what it filled (NO_COMMIT when it did not fire)."""
    answer_idx = state.canvas.answer_idx
    top1 = answer_stats.top_ids[:, 0].astype(np.int64)  # (A,)
    same = state.answer_top1 is not None and np.array_equal(top1, state.answer_top1)
    state.unchanged_steps = state.unchanged_steps + 1 if same else 0
    state.answer_top1 = top1
    is_masked = state.tokens[answer_idx] == mask_id
    top1_p = answer_stats.top_probs[:, 0].astype(np.float64)
    if not answer_converged(top1_p, is_masked, config.exit_threshold, state.unchanged_steps, config.exit_patience):
        return NO_COMMIT
    state.tokens[answer_idx[is_masked]] = top1[is_masked]
    state.exited = True
    return Commit(answer_idx[is_masked], top1[is_masked], top1_p[is_masked])


def decode_step(model: Model, state: DecodeState, config: DecodeConfig) -> Optional[StepEvent]:
    """One step: read statistics, propose, rank, pick, commit. None when every block is done."""
    masked_idx = advance_block(state, config, model.manifest.mask_id)
    if masked_idx.size == 0:
        return None
    return finish_step(model, state, config, masked_idx, read_stats(model, state, config, masked_idx))


def finish_step(model: Model, state: DecodeState, config: DecodeConfig, masked_idx: np.ndarray,
                reading: Reading) -> StepEvent:
    """Stages 2-5 of a step whose statistics are read: propose, rank, pick, commit."""
    masked = reading.masked
    proposed, proposed_prob = propose(masked, config, state.rng)
    score = rank(model, state, config, reading, proposed, proposed_prob)
    picked = choose_positions(state, config, score, masked.entropy.astype(np.float64), state.rng)
    done = commit(model, state, config, Commit(masked_idx[picked], proposed[picked], proposed_prob[picked]),
                  reading.answer)
    return StepEvent(state.steps, state.block, done.idx, done.ids, done.probs, state.tokens.copy(),
                     state.canvas.gen_idx, model.name, reading.signals)


def decode(model: Model, state: DecodeState, config: DecodeConfig, max_steps: Optional[int] = None,
           on_step: Optional[OnStep] = None) -> bool:
    """Decode up to max_steps steps (all, if None). Returns False if on_step asked to stop."""
    config = config.for_model(model)
    taken = 0
    while max_steps is None or taken < max_steps:
        event = decode_step(model, state, config)
        if event is None:
            break
        taken += 1
        if on_step is not None and says_stop(on_step(event)):
            return False
    return True


def decode_steps(model: Model, states: Sequence[DecodeState], config: DecodeConfig) -> list:
    """decode_step of each state, with one forward pass over every canvas that needs a step
    (Model.batch_stats; with kv_cache, batch_step_stats): a list of StepEvents, None where a state
    had no block left."""
    masked = [advance_block(state, config, model.manifest.mask_id) for state in states]
    live = [i for i, masked_idx in enumerate(masked) if masked_idx.size]
    where = [read_positions(states[i], config, masked[i]) for i in live]  # ((r,), (A,)) per canvas
    if model.kv_cache:
        stats = batch_step_stats(model, [states[i] for i in live], config, [np.concatenate(w) for w in where],
                                 config.temperature > 0)
    else:
        stats = model.batch_stats([states[i].tokens for i in live], [np.concatenate(w) for w in where],
                                  config.temperature > 0)
    events = [None] * len(states)
    for i, (read_idx, answer_idx), read in zip(live, where, stats):
        reading = split_reading(model, states[i], read_idx, answer_idx, read)
        events[i] = finish_step(model, states[i], config, masked[i], reading)
    return events


def recording(on_step: Optional[OnStep], history: Optional[list]) -> Optional[OnStep]:
    """on_step that first appends every StepEvent to `history` (when it is a list)."""
    if history is None:
        return on_step

    def hook(event) -> Optional[bool]:
        if isinstance(event, StepEvent):
            history.append(event)
        return on_step(event) if on_step is not None else None

    return hook


@dataclass(frozen=True)
class GenerateResult:
    """A finished (or stopped) generation; for an ensemble, the chosen model's, with the others'."""

    text: str                   # the generated text: reasoning + marker + answer in infilling mode
    tokens: np.ndarray          # (n,) int64 generated ids, cut at the first stop id (per region)
    answer: Optional[str]       # the answer region's text (infilling mode), else None
    steps: int                  # forward passes taken by this model (decode steps; TIE scoring excluded)
    stopped: bool               # True if on_step stopped the decode early
    model: str                  # name of the model whose output this is
    history: Optional[list] = None  # StepEvents, when asked for
    candidates: tuple = ()      # ensemble: every model's own final result, in model order
    chosen: int = 0             # ensemble: index in candidates of this result
    relays: tuple = ()          # ensemble: the Relay records, in order
    model_calls: int = 0        # forward passes of every model, scoring included
    answer_confidence: tuple = ()  # given an answer: p(answer | prompt, reasoning so far) after each step


def trim_at_stop(tokens: np.ndarray, stop_ids: Sequence[int]) -> np.ndarray:
    """tokens up to (not including) the first stop id."""
    return tokens[: first_index(tokens, stop_ids)]


def cut_at_stop_text(text: str, stop_texts: Sequence[str]) -> str:
    """text up to (not including) the first occurrence of any stop text."""
    return text[: min([text.find(s) for s in stop_texts if s in text], default=len(text))]


def finish(model: Model, canvas: Canvas, config: DecodeConfig) -> tuple[str, np.ndarray, Optional[str]]:
    """Text, kept token ids and answer text of a decoded canvas."""
    config, m = config.for_model(model), model.manifest
    reasoning_idx = canvas.gen_idx[: config.gen_length - config.answer_length]
    reasoning = trim_at_stop(canvas.tokens[reasoning_idx], m.stop_ids)
    reasoning = reasoning[reasoning != m.mask_id]  # left by an early exit
    reasoning_text = cut_at_stop_text(model.detokenize(reasoning), m.stop_texts)
    if not config.infill:
        return reasoning_text, reasoning, None
    answer_ids = trim_at_stop(canvas.tokens[canvas.answer_idx], m.stop_ids)
    answer = cut_at_stop_text(model.detokenize(answer_ids), m.stop_texts)
    return reasoning_text + m.answer_marker + answer, np.concatenate([reasoning, answer_ids]), answer


def generate_one(model: Model, prompt: str, config: DecodeConfig = DecodeConfig(),
                 on_step: Optional[OnStep] = None, record_history: bool = False) -> GenerateResult:
    """Decode `prompt` with one model."""
    state = DecodeState(build_canvas(model, prompt, config), np.random.default_rng(config.seed))
    history = [] if record_history else None
    completed = decode(model, state, config, on_step=recording(on_step, history))
    text, tokens, answer = finish(model, state.canvas, config)
    return GenerateResult(text, tokens, answer, state.steps, not completed, model.name, history,
                          model_calls=state.steps)


def answer_slot(model: Model, answer: str, config: DecodeConfig) -> np.ndarray:
    """The answer region (A,) holding `answer`'s ids, then EOS."""
    ids = model.encode(answer)
    if ids.size >= config.answer_length:
        raise ConfigError(f"the given answer is {ids.size} tokens; answer_length {config.answer_length} must "
                          "leave room for at least one EOS after it")
    return np.concatenate([ids, np.full(config.answer_length - ids.size, model.manifest.eos_id, np.int64)])


def answer_likelihood(model: Model, tokens: np.ndarray, answer_idx: np.ndarray, slot: np.ndarray) -> float:
    """p(answer | the canvas's prompt and reasoning): the answer re-masked, the geometric mean of the
    probabilities of its tokens and of the EOS that ends it (one forward pass)."""
    scored = first_index(slot, model.manifest.stop_ids) + 1  # the answer's tokens and its first EOS
    masked = tokens.copy()
    masked[answer_idx] = model.manifest.mask_id
    stats = model.stats(masked, answer_idx[:scored], with_logits=True)
    probs = softmax(stats.logits)  # (scored, V)
    log_p = np.log(np.maximum(probs[np.arange(scored), slot[:scored]], 1e-300))
    return float(np.exp(log_p.mean()))


def infill_reasoning(model: Model, prompt: str, answer: str, config: DecodeConfig,
                     on_step: Optional[OnStep] = None, record_history: bool = False) -> GenerateResult:
    """Decode the reasoning for a given answer (reasoning as infilling), reporting after every step the
    model's confidence in that answer given the reasoning so far: scoring reasoning without rollouts."""
    check_text(answer, "the given answer")
    config = config.for_model(model)
    if not config.infill or config.early_exit:
        raise ConfigError("a given answer needs reasoning-as-infilling (answer_length > 0) and no early exit")
    state = DecodeState(build_canvas(model, prompt, config), np.random.default_rng(config.seed))
    slot = answer_slot(model, answer, config)
    state.tokens[state.canvas.answer_idx] = slot
    confidence, history = [], [] if record_history else None
    report = recording(on_step, history)

    def hook(event: StepEvent) -> Optional[bool]:
        confidence.append(answer_likelihood(model, event.tokens, state.canvas.answer_idx, slot))
        return report(dataclasses.replace(event, answer_confidence=confidence[-1])) if report else None

    completed = decode(model, state, config, on_step=hook)
    text, tokens, answer_text = finish(model, state.canvas, config)
    return GenerateResult(text, tokens, answer_text, state.steps, not completed, model.name, history,
                          model_calls=2 * state.steps, answer_confidence=tuple(confidence))


# ---------------------------------------------------------------------------
# ensembling (TIE)
# ---------------------------------------------------------------------------

@dataclass
class Run:
    """One model's part in an ensemble: its decode state and confidence history."""

    model: Model
    state: DecodeState              # tracks the answer positions; its rng is the model's own stream
    history: Optional[list] = None  # StepEvents, when asked for
    window: list = field(default_factory=list)  # AnswerSignals of the interval being decoded
    tcc_total: float = 0.0          # token change count summed over every closed window
    pairs: int = 0                  # consecutive step pairs counted in tcc_total
    top1_total: float = 0.0         # sum over steps of the mean top-1 probability over A(t)
    top1_steps: int = 0             # steps with a non-empty A(t)
    wins: int = 0                   # relays this model's trajectory won
    scoring_calls: int = 0          # forward passes spent scoring other trajectories

    def record(self, signals: AnswerSignals) -> None:
        self.window.append(signals)
        mean = mean_over_tracked(signals, "top1")
        if not np.isnan(mean):
            self.top1_total, self.top1_steps = self.top1_total + mean, self.top1_steps + 1

    def close_window(self) -> None:
        """Fold the interval's history into the whole-decode totals and reset it."""
        self.tcc_total += token_change_count(self.window)
        self.pairs += max(len(self.window) - 1, 0)
        self.window = []

    @property
    def whole_tcc(self) -> float:
        """Token change count over the whole decode, per step pair."""
        return self.tcc_total / self.pairs if self.pairs else 0.0

    @property
    def mean_top1(self) -> float:
        return self.top1_total / self.top1_steps if self.top1_steps else 0.0


@dataclass(frozen=True)
class Relay:
    """One trajectory assessment and relay."""

    steps: int           # steps the leading model had decoded when it happened
    scores: tuple        # (M,) each model's trajectory score, higher = more reliable
    leader: int          # index of the model whose trajectory every model continues
    changed: bool        # the leader differs from the previous relay's
    prompt: int = 0      # a batched call: index of the prompt in its list
    top1: tuple = ()     # (M,) each window's mean top-1 probability over A(t): breaks ties of scores


def leader_changes(relays: Sequence[Relay], chosen: Optional[int] = None) -> tuple[int, int]:
    """(changes, hand-overs) along the leader sequence: each relay's leader, then the final pick
    `chosen` when given (the trajectory output leads the last interval)."""
    leaders = [r.leader for r in relays] + ([] if chosen is None else [chosen])
    return sum(a != b for a, b in zip(leaders, leaders[1:])), max(len(leaders) - 1, 0)


def leader_change_rate(relays: Sequence[Relay], chosen: Optional[int] = None) -> Optional[float]:
    """Share of hand-overs (see leader_changes) where the leader changes; None if there are none."""
    changes, handovers = leader_changes(relays, chosen)
    return changes / handovers if handovers else None


def same_tokenizer(a: Model, b: Model) -> bool:
    return a.manifest.tokenizer_sha256 == b.manifest.tokenizer_sha256


def clean_prefix(model: Model, state: DecodeState) -> np.ndarray:
    """Generated tokens (n,) in order, up to the first mask."""
    gen_tokens = state.tokens[state.canvas.gen_idx]
    return gen_tokens[: first_index(gen_tokens, [model.manifest.mask_id])]


def region_text(model: Model, ids: np.ndarray) -> tuple[str, bool]:
    """Text of a region's decoded ids and whether a stop id ended it."""
    kept = trim_at_stop(ids, model.manifest.stop_ids)
    return model.detokenize(kept), kept.size < ids.size


def fill_region(model: Model, text: str, ended: bool, size: int) -> np.ndarray:
    """A receiver's region (size,): the re-encoded text, then stop ids if it had ended, else masks."""
    ids = model.encode(text)[:size] if text else np.zeros(0, np.int64)
    pad = model.manifest.eos_id if ended else model.manifest.mask_id
    return np.concatenate([ids, np.full(size - ids.size, pad, np.int64)])


def text_view(source: Run, receiver: Model, prompt: str, config: DecodeConfig) -> Canvas:
    """The receiver's canvas holding the source's clean prefix, relayed through text."""
    src = source.model
    prefix = clean_prefix(src, source.state)  # (n,)
    reasoning_len = config.gen_length - config.answer_length
    canvas = build_canvas(receiver, prompt, config)
    reasoning, r_ended = region_text(src, prefix[:reasoning_len])
    gen = [fill_region(receiver, reasoning, r_ended, reasoning_len)]
    if config.infill:
        if prefix.size > reasoning_len:
            answer, a_ended = region_text(src, prefix[reasoning_len:])
            gen.append(fill_region(receiver, answer, a_ended, config.answer_length))
        else:
            gen.append(np.full(config.answer_length, receiver.manifest.mask_id, np.int64))
    canvas.tokens[canvas.gen_idx] = np.concatenate(gen)
    return canvas


def view_for(source: Run, receiver: Run, prompt: str, config: DecodeConfig) -> Canvas:
    """The source's trajectory as the receiver's canvas: ids copied if the tokenizers match, else text."""
    if not same_tokenizer(source.model, receiver.model):
        return text_view(source, receiver.model, prompt, config)
    canvas = dataclasses.replace(receiver.state.canvas, tokens=receiver.state.tokens.copy())
    canvas.tokens[canvas.gen_idx] = source.state.tokens[source.state.canvas.gen_idx]
    return canvas


def relayed_state(source: Run, receiver: Run, prompt: str, config: DecodeConfig) -> DecodeState:
    """The receiver's new decode state continuing the source's trajectory."""
    canvas, own = view_for(source, receiver, prompt, config), receiver.state
    fresh = DecodeState(canvas, own.rng, own.track, own.first_k, steps=own.steps)
    if not same_tokenizer(source.model, receiver.model):
        return fresh  # block and schedule restart from the canvas
    schedule = None if source.state.schedule is None else source.state.schedule.copy()
    return dataclasses.replace(fresh, block=source.state.block, block_step=source.state.block_step,
                               schedule=schedule)


def judge_signals(judge: Run, source: Run, prompt: str, config: DecodeConfig,
                  first_k: Optional[int]) -> AnswerSignals:
    """The judge model's answer signals on the source's trajectory (one forward pass)."""
    canvas = view_for(source, judge, prompt, config)
    stats = judge.model.stats(canvas.tokens, canvas.answer_idx)
    judge.scoring_calls += 1
    return track_answer(judge.model, canvas.tokens, canvas.answer_idx, stats, first_k)


def scored_reasoning(model: Model, canvas: Canvas) -> np.ndarray:
    """Canvas positions (n,) of the committed reasoning: the reasoning region's clean prefix, up to and
    including its first stop id."""
    reasoning_idx = canvas.gen_idx[: canvas.gen_idx.size - canvas.answer_idx.size]  # (R,)
    ids = canvas.tokens[reasoning_idx]
    committed = first_index(ids, [model.manifest.mask_id])
    stop = first_index(ids[:committed], model.manifest.stop_ids)
    return reasoning_idx[: min(committed, stop + 1)]


def reasoning_log_likelihood(model: Model, canvas: Canvas, groups: int) -> tuple[float, int]:
    """The pseudo-likelihood of the canvas's committed reasoning under `model`: the mean log-probability
    of each committed token with its interleaved group masked (one forward pass per group), the answer
    masked throughout; NaN when nothing is committed. Also the forward passes taken."""
    scored = scored_reasoning(model, canvas)  # (n,)
    mask_id = model.manifest.mask_id
    shown = canvas.tokens.copy()  # (L,)
    shown[canvas.answer_idx] = mask_id  # the answer follows from the reasoning: judge the reasoning alone
    log_p = np.zeros(scored.size)  # (n,)
    parts = interleaved_groups(scored.size, groups)
    canvases = []
    for part in parts:
        tokens = shown.copy()  # (L,)
        tokens[scored[part]] = mask_id
        canvases.append(tokens)
    # the groups' canvases in one call where the model batches bit-identically (else one call each)
    for part, stats in zip(parts, model.batch_stats(canvases, [scored[p] for p in parts], with_logits=True)):
        log_p[part] = log_probs_at(stats.logits, shown[scored[part]])
    return (float(log_p.mean()) if scored.size else float("nan")), len(parts)


def pll_score(runs: Sequence[Run], m: int, prompt: str, config: DecodeConfig, ensemble: EnsembleConfig) -> float:
    """Run m's committed reasoning's pseudo-likelihood, averaged over the judging models (every model, or
    the source only); a judge that sees no committed reasoning abstains."""
    judges = runs if ensemble.cross_model else [runs[m]]
    values = []
    for judge in judges:
        value, calls = reasoning_log_likelihood(judge.model, view_for(runs[m], judge, prompt, config),
                                                ensemble.pll_groups)
        judge.scoring_calls += calls
        values.append(value)
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def trajectory_score(runs: Sequence[Run], m: int, prompt: str, config: DecodeConfig,
                     ensemble: EnsembleConfig) -> float:
    """score(T_m), higher = more reliable (docs/method.md, assessment)."""
    if ensemble.score == "tcc":
        return 0.0 - token_change_count(runs[m].window)  # 0.0 - x: no change scores 0.0, not -0.0
    if ensemble.score == "pll":
        return pll_score(runs, m, prompt, config, ensemble)
    judges = runs if ensemble.cross_model else [runs[m]]
    values = [mean_over_tracked(judge_signals(j, runs[m], prompt, config, ensemble.first_k), ensemble.score)
              for j in judges]
    values = [v for v in values if not np.isnan(v)]  # a judge with an empty A(t) abstains
    return float(np.mean(values)) if values else float("nan")


def relay(runs: Sequence[Run], prompt: str, config: DecodeConfig, ensemble: EnsembleConfig,
          previous: Optional[Relay]) -> Relay:
    """Score every trajectory, hand the best to every model, reset the histories."""
    scores = np.array([trajectory_score(runs, m, prompt, config, ensemble) for m in range(len(runs))])  # (M,)
    top1 = np.array([window_top1(run.window) for run in runs])  # (M,)
    leader = leader_of(scores, top1)  # ties: as the final pick
    runs[leader].wins += 1
    for m, run in enumerate(runs):
        if m != leader:
            run.state = relayed_state(runs[leader], run, prompt, config)
        run.close_window()
    changed = previous is not None and previous.leader != leader
    return Relay(runs[leader].state.steps, tuple(float(s) for s in scores), leader, changed,
                 top1=tuple(float(p) for p in top1))


def select_final(runs: Sequence[Run], prompt: str, config: DecodeConfig, ensemble: EnsembleConfig) -> int:
    """Index of the final response (docs/method.md, final selection)."""
    if ensemble.best_model:
        return [r.model.name for r in runs].index(ensemble.best_model)
    if ensemble.select == "pll":
        scores = np.array([pll_score(runs, m, prompt, config, ensemble) for m in range(len(runs))])  # (M,)
        return leader_of(scores, np.array([r.mean_top1 for r in runs]))
    if ensemble.select == "most-selected":
        return leader_of(np.array([r.wins for r in runs], dtype=np.float64))
    return min(range(len(runs)), key=lambda m: (runs[m].whole_tcc, -runs[m].mean_top1, m))


def _check_ensemble(models: Sequence[Model], config: DecodeConfig, ensemble: EnsembleConfig) -> None:
    if not config.infill:
        raise ConfigError("TIE tracks the answer positions: set answer_length > 0 (reasoning-as-infilling)")
    names = [m.name for m in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"the ensemble has two models named {repeated[0]!r} ({', '.join(names)}): TIE needs "
                          "different models, each named once (a manifest's name, else its folder's)")
    if ensemble.first_k is not None and ensemble.first_k > config.answer_length:
        raise ConfigError(f"first_k {ensemble.first_k} exceeds the answer's {config.answer_length} positions")
    if ensemble.best_model and ensemble.best_model not in names:
        raise ConfigError(f"select best-model:{ensemble.best_model} names no model in the ensemble {names}")


def decode_interval(run: Run, config: DecodeConfig, ensemble: EnsembleConfig, hook: Callable,
                    stop: threading.Event) -> None:
    """One model decodes one interval (ensemble.interval committed positions, or steps), tracking its
    answer positions; no step starts once `stop` is set."""
    progress = 0
    while progress < ensemble.interval and not stop.is_set():
        event = decode_step(run.model, run.state, config)
        if event is None:
            return
        progress += event.committed_idx.size if ensemble.interval_unit == "positions" else 1
        run.record(event.signals)
        if run.history is not None:
            run.history.append(event)
        hook(event)


def step_hook(on_step: Optional[OnStep], stop: threading.Event) -> Callable:
    """Serialise the user's callback across worker threads; any False sets `stop`. Every step taken
    is reported, also one that was under way in another thread when `stop` was set."""
    lock = threading.Lock()

    def hook(event) -> Optional[bool]:
        if on_step is not None:
            with lock:
                try:
                    if says_stop(on_step(event)):
                        stop.set()
                except BaseException:
                    stop.set()
                    raise
        return False if stop.is_set() else None

    return hook


def relay_budget(config: DecodeConfig, ensemble: EnsembleConfig) -> int:
    """The most relays one decode makes: one per interval of the generation, as many as a decode that
    never loses a committed position can reach. A text relay inside a block drops the positions the
    leader committed after its first masked one, so without a bound two models could hand such
    trajectories back and forth forever; past it the models decode to their own end."""
    return config.gen_length // ensemble.interval


def run_intervals(runs: Sequence[Run], prompt: str, config: DecodeConfig, ensemble: EnsembleConfig,
                  on_step: Optional[OnStep]) -> tuple[list, bool]:
    """The TIE cycle: decode an interval, assess, relay. Once any trajectory is complete (models
    can finish apart: early exit, unequal step counts under threshold strategies, text relays
    between tokenizers), or the relay budget is spent, relaying stops and the others decode to
    their own end, so every candidate is a whole answer. Returns (relays, stopped)."""
    stop, relays = threading.Event(), []
    hook = step_hook(on_step, stop)
    pool = ThreadPoolExecutor(max_workers=len(runs)) if ensemble.parallel else None
    finished = lambda r: is_finished(r.state, r.model.manifest.mask_id)  # noqa: E731
    try:
        while True:
            jobs = [lambda r=r: decode_interval(r, config, ensemble, hook, stop) for r in runs if not finished(r)]
            list(pool.map(lambda job: job(), jobs)) if pool else [job() for job in jobs]
            if stop.is_set() or all(finished(r) for r in runs):
                break
            if any(finished(r) for r in runs) or len(relays) >= relay_budget(config, ensemble):
                continue
            relays.append(relay(runs, prompt, config, ensemble, relays[-1] if relays else None))
            if says_stop(hook(relays[-1])):
                break
    except BaseException:  # Ctrl-C or a raising callback: let the other workers stop after their step
        stop.set()
        raise
    finally:
        if pool:
            pool.shutdown()
    for run in runs:
        run.close_window()
    return relays, stop.is_set()


def generate_tie(models: Sequence[Model], prompt: str, config: DecodeConfig, ensemble: EnsembleConfig,
                 on_step: Optional[OnStep] = None, record_history: bool = False) -> GenerateResult:
    """Decode `prompt` with M >= 2 models ensembled by TIE."""
    _check_ensemble(models, config, ensemble)
    runs = tie_runs(models, prompt, config, ensemble, record_history)
    relays, stopped = run_intervals(runs, prompt, config, ensemble, on_step)
    return tie_result(runs, relays, stopped, prompt, config, ensemble)


def tie_runs(models: Sequence[Model], prompt: str, config: DecodeConfig, ensemble: EnsembleConfig,
             record_history: bool) -> list:
    """Each model's Run on `prompt`: its canvas, tracking the answer, its own rng stream (seed, m)."""
    return [Run(model, DecodeState(build_canvas(model, prompt, config), np.random.default_rng([config.seed, m]),
                                   track=True, first_k=ensemble.first_k), [] if record_history else None)
            for m, model in enumerate(models)]


def tie_result(runs: Sequence[Run], relays: Sequence[Relay], stopped: bool, prompt: str, config: DecodeConfig,
               ensemble: EnsembleConfig) -> GenerateResult:
    """The ensemble's result: every model's own, and the one select_final picks."""
    chosen = select_final(runs, prompt, config, ensemble)  # first: its scoring passes count as model calls
    candidates = []
    for run in runs:
        text, tokens, answer = finish(run.model, run.state.canvas, config)
        candidates.append(GenerateResult(text, tokens, answer, run.state.steps, stopped, run.model.name,
                                         run.history, model_calls=run.state.steps + run.scoring_calls))
    calls = sum(c.model_calls for c in candidates)
    return dataclasses.replace(candidates[chosen], candidates=tuple(candidates), chosen=chosen,
                               relays=tuple(relays), model_calls=calls)


# ---------------------------------------------------------------------------
# batched prompts
# ---------------------------------------------------------------------------

DEFAULT_BATCH_SIZE = 8   # canvases a model steps in one call (bench/README.md, batched prompts)
START_WINDOW = 8         # batches' worth of prompts started shortest canvas first (less padding)


@dataclass
class Job:
    """One prompt of a batched call: a Run per model and, in an ensemble, the interval under way."""

    index: int                # the prompt's index in the caller's list
    prompt: str
    runs: list                # (M,) Run, in model order; one untracked Run for a single model
    progress: list            # (M,) positions (or steps) each Run has decoded in the current interval
    relays: list = field(default_factory=list)
    stopped: bool = False     # on_step returned False for one of this prompt's events

    def finished(self, m: int) -> bool:
        run = self.runs[m]
        return is_finished(run.state, run.model.manifest.mask_id)


def check_batch_size(batch_size) -> None:
    _require(is_int(batch_size) and batch_size > 0,
             f"batch_size must be a positive integer, got {batch_size!r}")


def check_prompts(models: Sequence[Model], prompts: Sequence[str], config: DecodeConfig,
                  name: Callable[[int], str] = lambda i: f"prompts[{i}]") -> None:
    """ConfigError, naming the prompt (`name(i)`), unless every prompt fits every model's canvas."""
    for i, prompt in enumerate(prompts):
        try:
            for model in models:
                build_canvas(model, prompt, config)
        except ConfigError as exc:
            raise ConfigError(f"{name(i)}: {exc}") from None


def start_order(model: Model, prompts: Sequence[str], config: DecodeConfig, batch_size: int) -> list:
    """Indices of the prompts in the order their decodes start: within each window of START_WINDOW x
    batch_size prompts, shortest canvas (on `model`) first, so that the canvases stepped together are
    about as long and padding costs little (their results do not depend on it)."""
    lengths = [build_canvas(model, prompt, config).tokens.size for prompt in prompts]
    window = START_WINDOW * batch_size
    return [i for start in range(0, len(prompts), window)
            for i in sorted(range(start, min(start + window, len(prompts))), key=lengths.__getitem__)]


def start_job(models: Sequence[Model], index: int, prompt: str, config: DecodeConfig, ensemble: EnsembleConfig,
              record_history: bool) -> Job:
    """A prompt's runs, seeded as generate() seeds them for that prompt alone."""
    if len(models) > 1:
        runs = tie_runs(models, prompt, config, ensemble, record_history)
    else:
        state = DecodeState(build_canvas(models[0], prompt, config), np.random.default_rng(config.seed))
        runs = [Run(models[0], state, [] if record_history else None)]
    return Job(index, prompt, runs, [0] * len(runs))


def wants_step(job: Job, m: int, config: DecodeConfig, ensemble: EnsembleConfig) -> bool:
    """Whether model m steps this prompt now: not done, and in an ensemble its interval not done (or,
    once another model has finished or the relay budget is spent, decoding to its own end, as
    run_intervals does)."""
    if job.stopped or job.finished(m):
        return False
    if len(job.runs) == 1 or job.progress[m] < ensemble.interval:
        return True
    return (any(job.finished(other) for other in range(len(job.runs)))
            or len(job.relays) >= relay_budget(config, ensemble))


def take_event(job: Job, m: int, event: StepEvent, ensemble: EnsembleConfig, on_step: Optional[OnStep]) -> None:
    """Record model m's step on this prompt (history, TIE's window and interval) and report it."""
    run = job.runs[m]
    if on_step is not None or run.history is not None:
        event = dataclasses.replace(event, prompt=job.index)
    if len(job.runs) > 1:
        run.record(event.signals)
        job.progress[m] += event.committed_idx.size if ensemble.interval_unit == "positions" else 1
    if run.history is not None:
        run.history.append(event)
    if on_step is not None and says_stop(on_step(event)):
        job.stopped = True


def step_jobs(jobs: Sequence[Job], models: Sequence[Model], config: DecodeConfig, ensemble: EnsembleConfig,
              on_step: Optional[OnStep], pool: Optional[ThreadPoolExecutor]) -> None:
    """One step of every prompt that wants one: each model steps all of its canvases in one call
    (decode_steps), the models in parallel threads when `pool` is given; then the events are reported."""
    wanting = [[job for job in jobs if wants_step(job, m, config, ensemble)] for m in range(len(models))]

    def step(m: int) -> list:
        return decode_steps(models[m], [job.runs[m].state for job in wanting[m]], config)

    if pool:
        for m, events in enumerate(list(pool.map(step, range(len(models))))):
            for job, event in zip(wanting[m], events):
                take_event(job, m, event, ensemble, on_step)
        return
    for m in range(len(models)):  # sequentially: no step of a prompt starts once it is stopped
        wanting[m] = [job for job in wanting[m] if not job.stopped]
        for job, event in zip(wanting[m], step(m)):
            take_event(job, m, event, ensemble, on_step)


def settle_job(job: Job, config: DecodeConfig, ensemble: EnsembleConfig, on_step: Optional[OnStep]) -> bool:
    """After a step: relay when every model has decoded its interval (run_intervals' cycle, per prompt);
    True when the prompt's decode is over."""
    finished = [job.finished(m) for m in range(len(job.runs))]
    if job.stopped or all(finished):
        return True
    if (len(job.runs) == 1 or any(finished) or min(job.progress) < ensemble.interval
            or len(job.relays) >= relay_budget(config, ensemble)):
        return False
    previous = job.relays[-1] if job.relays else None
    job.relays.append(dataclasses.replace(relay(job.runs, job.prompt, config, ensemble, previous), prompt=job.index))
    job.progress = [0] * len(job.runs)
    if on_step is not None and says_stop(on_step(job.relays[-1])):
        job.stopped = True
    return job.stopped


def job_result(job: Job, config: DecodeConfig, ensemble: EnsembleConfig) -> GenerateResult:
    """The prompt's GenerateResult, as generate() returns it for that prompt alone."""
    if len(job.runs) > 1:
        for run in job.runs:
            run.close_window()
        return tie_result(job.runs, job.relays, job.stopped, job.prompt, config, ensemble)
    run = job.runs[0]
    text, tokens, answer = finish(run.model, run.state.canvas, config)
    return GenerateResult(text, tokens, answer, run.state.steps, job.stopped, run.model.name, run.history,
                          model_calls=run.state.steps)


def generate_batches(models: Sequence[Model], prompts: Sequence[str], config: DecodeConfig,
                     ensemble: EnsembleConfig = EnsembleConfig(), on_step: Optional[OnStep] = None,
                     record_history: bool = False, batch_size: int = DEFAULT_BATCH_SIZE):
    """Yield (index, GenerateResult) of each prompt as its decode ends, each token-identical to
    generate() of that prompt alone. Up to batch_size prompts decode at a time; when one ends, the
    next starts (start_order: input order, shortest first within a window). `config` must be resolved
    (DecodeConfig.for_model); check_prompts first, to name a bad prompt before any decoding."""
    check_batch_size(batch_size)
    active, pending = [], ((i, prompts[i]) for i in start_order(models[0], prompts, config, batch_size))
    pool = ThreadPoolExecutor(max_workers=len(models)) if len(models) > 1 and ensemble.parallel else None
    try:
        while True:
            active += [start_job(models, i, prompt, config, ensemble, record_history)
                       for i, prompt in itertools.islice(pending, min(batch_size, len(prompts)) - len(active))]
            if not active:
                return
            step_jobs(active, models, config, ensemble, on_step, pool)
            over = [settle_job(job, config, ensemble, on_step) for job in active]
            for job in [job for job, done in zip(active, over) if done]:
                yield job.index, job_result(job, config, ensemble)
            active = [job for job, done in zip(active, over) if not done]
    finally:
        if pool:
            pool.shutdown()


def resolve_config(models: Sequence[Model], config: DecodeConfig) -> DecodeConfig:
    """`config` with its unset lengths the first model's recommendation. ConfigError when the caller left
    the generation or answer length unset and the models recommend different ones: each was trained on
    its own layout, and an ensemble decodes one. The block size is a decoding choice, not a layout: an
    unset one is the first model's, whatever the others recommend."""
    for name in ("gen_length", "answer_length"):
        wanted = [(m.name, m.manifest.decode_defaults[name]) for m in models if name in m.manifest.decode_defaults]
        if getattr(config, name) is None and len({value for _, value in wanted}) > 1:
            listed = ", ".join(f"{model} {value}" for model, value in wanted)
            raise ConfigError(f"the models recommend different {name} values ({listed}): set {name} "
                              f"(--{name.replace('_', '-')}) to decode them together")
    return config.for_model(models[0])


def generate(models, prompt: str | Sequence[str], config: DecodeConfig = DecodeConfig(),
             ensemble: EnsembleConfig = EnsembleConfig(), on_step: Optional[OnStep] = None,
             record_history: bool = False, answer: Optional[str] = None,
             batch_size: int = DEFAULT_BATCH_SIZE) -> GenerateResult | list:
    """Decode `prompt` with one Model, or ensemble a sequence of Models with TIE.

    Lengths left unset in `config` (gen_length, answer_length, block_size) are the first
    model's recommendation, exactly as on the command line (DecodeConfig.for_model); an
    ensemble whose models recommend different generation or answer lengths needs them set.

    on_step(event) is called after every step of every model with a StepEvent and
    after every relay with a Relay (one call at a time, also when the models run in
    threads); returning False stops the decode: no model begins another step after it,
    though in a parallel ensemble a step another thread had already begun completes and
    is reported too, so every step in the result was seen. An exception it raises stops
    every model and propagates. answer: decode only the reasoning for this given answer,
    reporting the model's confidence in it after every step (result.answer_confidence).

    A list of prompts decodes them together and returns a list of GenerateResults in
    their order, each token-identical to generating that prompt alone (same seed):
    up to batch_size prompts at a time, each model stepping all of their canvases in
    one onnxruntime call per step (right-padded, masked). Each prompt keeps its own
    blocks, schedule, early exit and relays; its events carry its index (event.prompt),
    and on_step returning False stops that prompt only. A model loaded with kv_cache
    batches its full passes, and its cached steps by the number of rows they recompute
    (steps of one row go one canvas per call). An int8 model, a cache graph exported
    before its manifest recorded cache_layout, TIE's scoring passes (the cross-model scores
    and the pll final pick; pll's groups go together in one call) and a learned policy step
    one prompt at a time; a given answer needs a single prompt.
    """
    models = model_list(models)
    check_batch_size(batch_size)
    _require(on_step is None or callable(on_step), f"on_step must be a callable or None, got {on_step!r:.60}")
    config = resolve_config(models, config)
    if isinstance(prompt, (list, tuple)):
        return generate_list(models, list(prompt), config, ensemble, on_step, record_history, answer, batch_size)
    if answer is not None:
        if len(models) != 1:
            raise ConfigError("a given answer is decoded with one model, not an ensemble")
        return infill_reasoning(models[0], prompt, answer, config, on_step, record_history)
    if len(models) == 1:
        return generate_one(models[0], prompt, config, on_step, record_history)
    return generate_tie(models, prompt, config, ensemble, on_step, record_history)


def model_list(models) -> list:
    """generate()'s `models`, one Model or a sequence of them, as a list; ConfigError naming anything else."""
    if isinstance(models, Model):
        return [models]
    if isinstance(models, (str, bytes, os.PathLike)) or not isinstance(models, Iterable):
        raise ConfigError(f"models must be a Model or a sequence of Models (Model.load(folder) loads one), "
                          f"got {type(models).__name__} {models!r:.60}")
    listed = list(models)
    if not listed:
        raise ConfigError("no model given")
    for i, model in enumerate(listed):
        if not isinstance(model, Model):
            raise ConfigError(f"models[{i}] is {type(model).__name__} {model!r:.60}, not a Model "
                              "(Model.load(folder) loads one)")
    return listed


def generate_list(models: Sequence[Model], prompts: list, config: DecodeConfig, ensemble: EnsembleConfig,
                  on_step: Optional[OnStep], record_history: bool, answer: Optional[str],
                  batch_size: int) -> list:
    """generate() of a list of prompts: every prompt checked first, then decoded in batches."""
    if answer is not None:
        raise ConfigError("a given answer is decoded for one prompt: pass a str prompt, not a list")
    if len(models) > 1:
        _check_ensemble(models, config, ensemble)
    check_batch_size(batch_size)
    check_prompts(models, prompts, config)
    results = [None] * len(prompts)
    for i, result in generate_batches(models, prompts, config, ensemble, on_step, record_history, batch_size):
        results[i] = result
    return results


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

DEFAULT_MODELS = ("b", "d")        # the shipped default pair, folders under models/ holding onnx/
                                   # (see models/README.md)


def _default_models_dir() -> Path:
    """models/ beside this file (a checkout), else the installed package tie_lite_models (`pip install .`)."""
    checkout = Path(__file__).resolve().parent / "models"
    if all((checkout / name / "onnx").is_dir() for name in DEFAULT_MODELS):
        return checkout
    import importlib.util

    spec = importlib.util.find_spec("tie_lite_models")  # finds the folder, imports nothing
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return checkout


DEFAULT_MODELS_DIR = _default_models_dir()


EXAMPLE_PROMPT = "Compute 7 - 6 + 8."  # the kind of prompt the shipped models answer
EPILOG = f"""\
Without --model or --models, the shipped pair (models/{DEFAULT_MODELS[0]} and models/{DEFAULT_MODELS[1]}) runs, \
ensembled with TIE. They are small models trained on integer arithmetic chains of two to six \
operations (+, -, *; numbers up to 30), e.g. --prompt "{EXAMPLE_PROMPT}" prints the worked steps \
and "Answer: 9". Other prompts give text of that shape, not sense.

Decoding lengths left unset come from the first model's manifest (the shipped models: \
--gen-length 80 --answer-length 16 --block-size 16, i.e. 64 reasoning and 16 answer positions \
in blocks of 16); an ensemble of models that recommend different \
generation or answer lengths needs them given."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ConfigError, so main() reports them in one line."""

    def error(self, message):
        raise ConfigError(message)


ARG_TYPES = {"int": int, "float": float, "str": str, "tuple": float}  # a config field's type -> the flag's


def add_config_options(group, config_class) -> None:
    """One flag per field of a config dataclass, from the field: name, type, default, help (option())."""
    for f in dataclasses.fields(config_class):
        meta = dict(f.metadata)
        help_text, flag, shown = meta.pop("help"), meta.pop("flag"), meta.pop("shown")
        flag = flag or "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                               help=help_text)
            continue
        kind = ARG_TYPES[f.type.replace("Optional[", "").rstrip("]")]
        default = shown if f.default is None else f.default
        group.add_argument(flag, dest=f.name, type=kind, default=f.default, help=f"{help_text} (default: {default})",
                           **meta)


def config_from_args(args: argparse.Namespace, config_class):
    """The config dataclass whose fields the parsed flags set."""
    return config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)})


def _path_arg(text: str) -> Path:
    """A path flag's value; an empty one is refused (Path("") would be the working folder)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def _add_prompt_options(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the user's text; - reads it from standard input")
    source.add_argument("--prompt-file", type=_path_arg, metavar="PATH", help="read the prompt from this UTF-8 file")
    source.add_argument("--prompts-file", type=_path_arg, metavar="PATH",
                        help="decode many prompts together: one a line, or JSON lines with a \"prompt\" field "
                             "(- reads standard input); prints a JSON line per prompt, in their order")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", type=_path_arg, help="one exported model folder (python -m export)")
    which.add_argument("--models", type=_path_arg, nargs="+", help="two or more model folders, ensembled with TIE")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("runtime")
    r.add_argument("--provider", default="cpu",
                   help="cpu, cuda, cuda:N or openvino; for an ensemble, one per model separated by commas (default: cpu)")
    r.add_argument("--threads", type=int, default=None,
                   help=f"onnxruntime threads in all, at most {THREADS_PER_CORE} per core (default: every core)")
    kept = r.add_mutually_exclusive_group()
    kept.add_argument("--openvino-cache", metavar="DIR",
                      help=f"with --provider openvino: keep the compiled graphs in DIR, later runs load them "
                           f"(default: ${OPENVINO_CACHE_ENV}, else ~/.cache/tie-lite/openvino)")
    kept.add_argument("--no-openvino-cache", action="store_true",
                      help="with --provider openvino: compile the graphs at every run, keeping nothing")
    r.add_argument("--kv-cache", nargs="?", const="prefix", choices=KV_CACHE_MODES,
                   help="reuse keys/values within a block (cache.onnx; approximate, faster on long canvases): "
                        "prefix (the default) recomputes the block and all after it, dual the block only")
    r.add_argument("--kv-window", type=int,
                   help="with --kv-cache: also recompute this many positions before the block (default: the "
                        "block's size)")
    r.add_argument("--batch-size", type=int, metavar="N",
                   help="with --prompts-file: prompts decoded together, each model stepping all their canvases "
                        f"in one call (default: {DEFAULT_BATCH_SIZE})")
    r.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    r.add_argument("--history", action="store_true", help="with --json: include every step")
    live = r.add_mutually_exclusive_group()
    live.add_argument("--show", action="store_true", help="redraw the canvas on stderr as it is decoded")
    live.add_argument("--stream", action="store_true", help="print a JSON line per step and relay on stdout")
    r.add_argument("--version", action="version", version=f"tie-lite {__version__}")


def refuse_repeats(argv: Sequence[str], p: argparse.ArgumentParser, error=None) -> set:
    """An option given twice is an error (argparse would keep the last one silently): `error` (default
    ConfigError) naming it; a repeatable one (action "append") may come again. Returns the options given."""
    seen = set()
    for arg in argv:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in p._option_string_actions:
            if name in seen and not isinstance(p._option_string_actions[name], argparse._AppendAction):
                raise (error or ConfigError)(f"{name} is given twice")
            seen.add(name)
    return seen


STRATEGY_OPTIONS = {"--threshold": "threshold", "--tokens-per-step": "topk", "--entropy-budget": "med",
                    "--eps": "dream", "--ass-blocks": "ass"}  # an option that one strategy alone reads


def _refuse_inapplicable(given: set, args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """An option that nothing would read, given the others, is an error, not silently ignored: a strategy's
    own option under another strategy, ensembling options with one --model, OpenVINO's cache options
    without --provider openvino."""
    strategy = args.strategy or ("policy" if args.policy is not None else "schedule")
    for flag, owner in STRATEGY_OPTIONS.items():
        if flag in given and strategy != owner:
            p.error(f"{flag} applies to --strategy {owner}, not {strategy}")
    if args.model is not None:
        ensembling = [f.metadata["flag"] or "--" + f.name.replace("_", "-") for f in dataclasses.fields(EnsembleConfig)]
        for flag in (*ensembling, "--trace"):
            if flag in given:
                p.error(f"{flag} applies to an ensemble (--models, or the default pair), not to one --model")
    if "openvino" not in args.provider.split(","):
        for flag in ("--openvino-cache", "--no-openvino-cache"):
            if flag in given:
                p.error(f"{flag} applies to --provider openvino, not {args.provider}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    epilog = "\n\n".join(textwrap.fill(paragraph, 79) for paragraph in EPILOG.split("\n\n"))
    p = _ArgumentParser(prog="tie-lite", description=__doc__.split("\n\n")[0], epilog=epilog, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_prompt_options(p)
    decoding = p.add_argument_group("decoding")
    add_config_options(decoding, DecodeConfig)
    decoding.add_argument("--answer", help="infill the reasoning for this given answer and report the model's "
                                           "confidence in it after every step")
    ensembling = p.add_argument_group("ensembling (TIE)")
    add_config_options(ensembling, EnsembleConfig)
    ensembling.add_argument("--trace", action="store_true", help="print each relay's scores and leader to stderr")
    _add_runtime_options(p)
    given = refuse_repeats(argv, p)
    args = p.parse_args(argv)
    _refuse_inapplicable(given, args, p)
    if args.history and not args.json and args.prompts_file is None:
        p.error("--history needs --json")
    _check_batch_args(args, p)
    return args


def _check_batch_args(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """--batch-size goes with --prompts-file, which writes JSON lines: no live view, no given answer."""
    if args.prompts_file is None:
        if args.batch_size is not None:
            p.error("--batch-size needs --prompts-file")
        return
    for flag, given in (("--answer", args.answer is not None), ("--show", args.show), ("--stream", args.stream)):
        if given:
            p.error(f"{flag} applies to one --prompt, not to --prompts-file")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size must be a positive integer, got {args.batch_size}")


def read_prompt(args: argparse.Namespace, stdin=None) -> str:
    """The prompt: --prompt's text, or standard input for --prompt -, or --prompt-file's contents;
    text read from a stream or file loses one trailing line ending (as `echo` and editors add one)."""
    if args.prompt_file is not None:
        return _without_final_newline(_read_text(args.prompt_file, f"--prompt-file {args.prompt_file}"))
    if args.prompt != "-":
        return args.prompt
    stdin = stdin or sys.stdin
    if stdin is None or stdin.isatty():
        raise ConfigError("--prompt - reads the prompt from standard input, which is a terminal: pipe it in")
    return _without_final_newline(_read_stream(stdin, "--prompt -"))


def _without_final_newline(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


BYTE_ORDER_MARK = "\ufeff"  # what some editors write first in a UTF-8 file: no part of its text


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file (or a pipe), as it stands: line endings untouched, as on standard input,
    a leading byte-order mark dropped."""
    if path.is_dir() or not path.exists():
        raise ConfigError(f"{what}: " + ("a folder, not a file" if path.is_dir() else "no such file"))
    if not (path.is_file() or path.is_fifo()):
        raise ConfigError(f"{what}: neither a file nor a pipe")  # e.g. /dev/zero, which never ends
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return file.read().removeprefix(BYTE_ORDER_MARK)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read it: {exc.strerror}") from None


def _read_stream(stdin, what: str) -> str:
    """Standard input's UTF-8 text, a leading byte-order mark dropped. Where the stream lets undecodable
    bytes through as surrogates (Python's stdin under a C locale), they are refused as not UTF-8 too."""
    try:
        text = stdin.read()
        text.encode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what}: standard input is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{what}: standard input is not UTF-8 text: an undecodable byte at character "
                          f"{exc.start}") from None
    return text.removeprefix(BYTE_ORDER_MARK)


def read_prompts(args: argparse.Namespace, stdin=None) -> list:
    """--prompts-file's prompts, in order. A file whose first line is a JSON object is JSON lines: each
    line an object whose "prompt" is the prompt (other fields ignored); otherwise each line is a prompt as
    it stands. A first line that starts as a JSON object ({") but does not parse is an error. Lines end at
    \\n (a \\r before it is dropped, as is the file's final line ending; a leading byte-order mark goes). An
    empty or blank line is an error naming it, as is a bad JSON line: output line N is input line N."""
    what = f"--prompts-file {args.prompts_file}"
    if str(args.prompts_file) == "-":
        text = _read_stdin(stdin or sys.stdin, what)
    else:
        text = _read_text(args.prompts_file, what)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final line ending
    if not lines:
        raise ConfigError(f"{what} holds no prompts")
    first = lines[0].removesuffix("\r")
    as_json = isinstance(_json_or_none(first), dict)
    if not as_json and first.lstrip().startswith('{"'):
        try:
            json.loads(first)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{what} line 1 starts as a JSON object but is not valid JSON ({exc.msg}, column "
                              f"{exc.colno}): mend it, or, if it is a prompt, write the file as JSON lines, "
                              '{"prompt": ...} a line') from None
    return [_prompt_line(line.removesuffix("\r"), f"{what} line {n}", as_json) for n, line in enumerate(lines, 1)]


def _read_stdin(stdin, what: str) -> str:
    if stdin is None or stdin.isatty():
        raise ConfigError(f"{what} reads the prompts from standard input, which is a terminal: pipe them in")
    return _read_stream(stdin, what)


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _prompt_line(line: str, where: str, as_json: bool) -> str:
    """The prompt on one line of a prompts file; ConfigError naming the line if there is none."""
    if not line.strip():
        raise ConfigError(f"{where} is empty: every line holds a prompt")
    if as_json:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not valid JSON ({exc.msg}, column {exc.colno}); the file is JSON lines, "
                              "as its first line is") from None
        if not isinstance(record, dict) or "prompt" not in record:
            raise ConfigError(f'{where}: a JSON line must be an object with a "prompt" field')
        line = record["prompt"]
        if not isinstance(line, str):
            raise ConfigError(f'{where}: "prompt" must be a string, got {type(line).__name__} {line!r:.40}')
    check_text(line, f"{where}: the prompt")
    return line


def model_dirs(args: argparse.Namespace) -> list[Path]:
    """The folders to load: --model, --models, or the shipped default pair."""
    if args.model:
        return [args.model]
    if args.models:
        if len(args.models) < 2:
            raise ConfigError("--models needs two or more folders (use --model for one)")
        return list(args.models)
    dirs = [DEFAULT_MODELS_DIR / name / "onnx" for name in DEFAULT_MODELS]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ModelError(f"no --model given and the default models are missing: {', '.join(missing)}")
    return dirs


def load_models(dirs: Sequence[Path], provider: str, threads: Optional[int], kv_cache: Optional[str] = None,
                kv_window: Optional[int] = None, openvino_cache=True) -> list[Model]:
    """Load every model, splitting the thread budget between them (the first ones take the remainder);
    provider is one, or one per model; openvino_cache as Model.load's."""
    check_threads(threads)
    providers = provider.split(",")
    if len(providers) not in (1, len(dirs)):
        raise ConfigError(f"--provider lists {len(providers)} providers for {len(dirs)} models")
    if threads is not None and threads < len(dirs):
        raise ConfigError(f"threads {threads} is fewer than the {len(dirs)} models, which take one each")
    budget = threads or max(os.cpu_count() or 1, len(dirs))
    shares = [budget // len(dirs) + (i < budget % len(dirs)) for i in range(len(dirs))]
    return [Model.load(d, provider=providers[i % len(providers)], threads=shares[i], kv_cache=kv_cache,
                       kv_window=kv_window, openvino_cache=openvino_cache) for i, d in enumerate(dirs)]


def cli_models(args: argparse.Namespace) -> list[Model]:
    """The models the CLI's arguments name, loaded as they say."""
    kept = False if args.no_openvino_cache else True if args.openvino_cache is None else args.openvino_cache
    return load_models(model_dirs(args), args.provider, args.threads, args.kv_cache, args.kv_window, kept)


def decode_config(args: argparse.Namespace, models: Sequence[Model]) -> DecodeConfig:
    """DecodeConfig from the options, resolved for the models as generate() resolves it."""
    return resolve_config(models, config_from_args(args, DecodeConfig))


def check_options(args: argparse.Namespace) -> None:
    """The options' own rules, before any model loads (the lengths' rules need the model's)."""
    config_from_args(args, DecodeConfig)
    config_from_args(args, EnsembleConfig)


def result_json(result: GenerateResult, with_history: bool) -> dict:
    out = {"text": result.text, "answer": result.answer, "tokens": result.tokens.tolist(),
           "steps": result.steps, "stopped": result.stopped, "model": result.model,
           "model_calls": result.model_calls}
    if with_history and result.history is not None:
        out["history"] = [{"step": e.step, "block": e.block, "positions": e.committed_idx.tolist(),
                           "ids": e.committed_ids.tolist(), "confidence": e.confidence.tolist()}
                          for e in result.history]
    if result.answer_confidence:
        out["answer_confidence"] = list(result.answer_confidence)
    if result.candidates:
        out["chosen"] = result.chosen
        out["candidates"] = [result_json(c, with_history) for c in result.candidates]
        names = [c.model for c in result.candidates]
        out["relays"] = [relay_json(r, names) for r in result.relays]
        out["leader_change_rate"] = leader_change_rate(result.relays, result.chosen)
    return out


def json_number(x: float) -> Optional[float]:
    """x, or None for NaN (an undefined score or top-1): JSON has no NaN."""
    return None if np.isnan(x) else x


def relay_json(relay: Relay, names: Sequence[str]) -> dict:
    """A relay as --json and --stream write it: models named, never indexed; undefined values null."""
    return {"steps": relay.steps, "scores": {n: json_number(s) for n, s in zip(names, relay.scores)},
            "leader": names[relay.leader], "changed": relay.changed,
            "top1": {n: json_number(p) for n, p in zip(names, relay.top1)}}


def relay_line(relay: Relay, names: Sequence[str]) -> str:
    """One relay as --trace prints it; a tie of the best scores names the mean top-1 that broke it."""
    line = f"relay at step {relay.steps}: " + "  ".join(f"{n}={s:.4f}" for n, s in zip(names, relay.scores))
    tied = best_indices(np.array(relay.scores))  # as leader_of ranks them
    if relay.top1 and tied.size > 1:
        line += "  tie, mean top-1: " + "  ".join(f"{names[m]}={relay.top1[m]:.4f}" for m in tied)
    return line + f"  -> {names[relay.leader]}" + (" (leader changed)" if relay.changed else "")


def trace_lines(result: GenerateResult) -> list[str]:
    names = [c.model for c in result.candidates]
    lines = [relay_line(r, names) for r in result.relays]
    if not result.relays:
        lines.append("no relay: a model finished within the first interval, so TIE was a final pick "
                     "between independent decodes")
    rate = leader_change_rate(result.relays, result.chosen)
    lines.append(f"leader change rate: {'n/a' if rate is None else f'{rate:.2f}'}; "
                 f"final: {names[result.chosen]}; model calls: {result.model_calls}")
    return lines


MASK_GLYPH = "_"  # how --show and --stream draw a still-masked position


def region_glyphs(model: Model, ids: np.ndarray) -> str:
    """A region's ids (n,) as its final text will read, one MASK_GLYPH per still-masked position."""
    kept = trim_at_stop(ids, model.manifest.stop_ids)
    pieces = []
    for masked, run in itertools.groupby(kept.tolist(), key=lambda t: t == model.manifest.mask_id):
        run = list(run)
        pieces.append(MASK_GLYPH * len(run) if masked else model.detokenize(np.array(run)))
    return cut_at_stop_text("".join(pieces), model.manifest.stop_texts)


def partial_text(model: Model, tokens: np.ndarray, gen_idx: np.ndarray, answer_length: int) -> str:
    """The generated region of a canvas (L,) drawn as `finish` writes the final text: reasoning,
    then the answer marker and the answer when answer_length > 0."""
    regions = np.split(tokens[gen_idx], [gen_idx.size - answer_length]) if answer_length else [tokens[gen_idx]]
    texts = [region_glyphs(model, ids) for ids in regions]
    return model.manifest.answer_marker.join(texts)


class LiveView:
    """The CLI's on_step: JSON lines (--stream), a redrawn canvas (--show) or a progress line.
    Redraws use terminal escapes only when the output is a terminal; elsewhere each frame is
    plain lines."""

    def __init__(self, models: Sequence[Model], mode: str, answer_length: int, out=None):
        self.models = {m.name: m for m in models}
        self.names = [m.name for m in models]
        self.mode, self.out, self.answer_length = mode, out or sys.stderr, answer_length
        self.redraw = self.out.isatty()
        self.texts = {name: "" for name in self.names}
        self.leader, self.steps, self.start = None, 0, time.perf_counter()

    def __call__(self, event) -> None:
        if isinstance(event, Relay):
            self.leader = self.names[event.leader]
            if self.mode == "stream":
                self._emit({"event": "relay", **relay_json(event, self.names)})
            return
        self.steps += 1
        if self.mode != "progress":  # the progress line shows no text
            model = self.models[event.model]
            self.texts[event.model] = partial_text(model, event.tokens, event.gen_idx, self.answer_length)
        if self.mode == "stream":
            self._emit({"event": "step", "model": event.model, "step": event.step, "block": event.block,
                        "positions": event.committed_idx.tolist(), "ids": event.committed_ids.tolist(),
                        "leader": self.leader, "text": self.texts[event.model]})
        elif self.mode == "show":
            self._draw()
        else:
            rate = self.steps / max(time.perf_counter() - self.start, 1e-9)
            self.out.write(f"\r{self.steps} steps, {rate:.1f} steps/s")
            self.out.flush()

    def _draw(self) -> None:
        """One frame: a line per model, `*` marking the leader; on a terminal it replaces the last
        frame, elsewhere frames follow each other, a blank line after each."""
        lines = [f"{'*' if name == self.leader else ' '} {name}: {self.texts[name]}" for name in self.names]
        frame = "\n".join(lines) + "\n"
        self.out.write("\x1b[H\x1b[2J" + frame if self.redraw else frame + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.mode == "progress" and self.steps:
            self.out.write("\n")

    def _emit(self, record: dict) -> None:
        print(json.dumps(record, ensure_ascii=False), file=self.out, flush=True)


def live_view(args: argparse.Namespace, models: Sequence[Model], config: DecodeConfig) -> Optional[LiveView]:
    """The view the options ask for; a progress line only when stderr is a terminal."""
    if args.stream:
        return LiveView(models, "stream", config.answer_length, sys.stdout)
    if args.show:
        return LiveView(models, "show", config.answer_length)
    return LiveView(models, "progress", config.answer_length) if sys.stderr.isatty() else None


def run_cli(args: argparse.Namespace) -> GenerateResult:
    prompt = read_prompt(args)
    if args.answer is not None:
        check_text(args.answer, "--answer")
    check_options(args)
    ensemble = config_from_args(args, EnsembleConfig)
    models = cli_models(args)
    config = decode_config(args, models)
    if config.policy is not None:
        load_policy(config.policy)  # a bad policy folder fails here, before any decoding
    view = live_view(args, models, config)
    try:
        return generate(models, prompt, config, ensemble, on_step=view, record_history=args.history,
                        answer=args.answer)
    finally:
        if view:
            view.close()


class BatchProgress:
    """--prompts-file's progress line on stderr (a terminal): prompts done of all, and their rate."""

    def __init__(self, total: int, out=None):
        self.total, self.done, self.out, self.start = total, 0, out or sys.stderr, time.perf_counter()

    def advance(self) -> None:
        self.done += 1
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        self.out.write(f"\r\x1b[K{self.done}/{self.total} prompts, {rate:.1f} prompts/s")
        self.out.flush()

    def clear(self) -> None:
        self.out.write("\r\x1b[K")
        self.out.flush()


def batch_lines(args: argparse.Namespace):
    """--prompts-file: yield (JSON line, trace lines) per prompt, in input order, each as soon as it and
    the prompts before it are decoded; a progress line on stderr when it is a terminal."""
    prompts = read_prompts(args)
    check_options(args)
    ensemble = config_from_args(args, EnsembleConfig)
    models = cli_models(args)
    config = decode_config(args, models)
    if config.policy is not None:
        load_policy(config.policy)
    if len(models) > 1:
        _check_ensemble(models, config, ensemble)
    check_prompts(models, prompts, config, name=lambda i: f"--prompts-file {args.prompts_file} line {i + 1}")
    progress = BatchProgress(len(prompts)) if sys.stderr.isatty() else None
    done, first = {}, 0
    for i, result in generate_batches(models, prompts, config, ensemble, None, args.history,
                                      args.batch_size or DEFAULT_BATCH_SIZE):
        done[i] = result
        if progress:
            progress.advance()
        while first in done:
            result = done.pop(first)
            traced = args.trace and result.candidates
            trace = [f"line {first + 1}: {line}" for line in trace_lines(result)] if traced else []
            if progress:
                progress.clear()
            yield json.dumps(result_json(result, args.history), ensure_ascii=False), trace
            first += 1
    if progress:
        progress.clear()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The CLI's warnings: one `warning:` line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI: 0 on success, 2 with one `error:` line on bad input, 130 on Ctrl-C; warnings as one
    `warning:` line each. An ignored SIGINT (a background job) stays ignored, and the caller's handlers
    are restored on return."""
    handles_sigint = (threading.current_thread() is threading.main_thread()
                      and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)
    previous = signal.getsignal(signal.SIGINT) if handles_sigint else None
    if handles_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, Ctrl-C is handled below
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return _run_main(argv)
    finally:
        warnings.showwarning = shown
        if handles_sigint:
            signal.signal(signal.SIGINT, previous)


def _run_main(argv: Optional[Sequence[str]]) -> int:
    try:
        args = parse_args(argv)
        if args.prompts_file is not None:
            for line, trace in batch_lines(args):
                if trace:
                    print("\n".join(trace), file=sys.stderr)
                print(line, flush=True)
            return 0
        result = run_cli(args)
        if args.trace and result.candidates:
            print("\n".join(trace_lines(result)), file=sys.stderr)
        print(json.dumps(result_json(result, args.history), ensure_ascii=False) if args.json else result.text)
    except TieLiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
