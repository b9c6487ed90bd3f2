"""Train a learned unmasking policy (Learning Unmasking Policies for Diffusion LMs) for the shipped models with GRPO, and export it.

    python train/train_policy.py --out models/policy [--iterations 50] [--cost 0.002]

The policy is one small transformer layer over the current block's positions. Each step
it reads tie_lite.policy_features (top-1 probability, margin, entropy, whether the
position is still masked, its place in the block, the block's committed share, the
decode's progress) and gives each position an unmask logit; a masked position is
committed with probability sigmoid(logit) while training, and when its logit is > 0 at
inference (at least the highest one each step).

Rollouts are tie_lite's own decodes of the shipped ONNX models (strategy "policy"), with
the policy's ONNX session swapped for a sampler that runs the torch network, so training
and inference take exactly the same steps. Problems come from the train split. For each
problem, --group rollouts with one model (A and B take turns) are rewarded

    reward = 1[answer correct] - cost * model calls,

their advantages are the rewards minus the group's mean (GRPO without the division by the
group's standard deviation, as in Dr. GRPO: with it, a group whose rollouts are all correct
differs only in cost, and that tiny difference is scaled up to full size, so the policy
learns to commit whole blocks at once whatever it costs in accuracy), and one policy-gradient
step per iteration raises the log-probability of the above-average rollouts' unmasking
decisions. The network starts as a soft confidence threshold (a learned residual on
scale * (top1 - bar)), so the first rollouts already decode sensibly.

Writes DIR/policy.onnx and DIR/policy.json (the runtime reads both: --policy DIR).
Needs torch (the export extra); the defaults made the shipped models/policy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "train"))

import task  # noqa: E402
import tie_lite  # noqa: E402

FEATURES = len(tie_lite.POLICY_FEATURES)


class PolicyNet(torch.nn.Module):
    """(batch, b, F) features -> (batch, b) unmask logits: one pre-norm transformer layer over the
    block's positions, plus a learned soft threshold on the top-1 probability."""

    def __init__(self, width: int = 32, heads: int = 2, bar: float = 0.8, scale: float = 10.0):
        super().__init__()
        self.embed = torch.nn.Linear(FEATURES, width)
        self.norm1 = torch.nn.LayerNorm(width)
        self.heads = heads
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.norm2 = torch.nn.LayerNorm(width)
        self.ff = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                      torch.nn.Linear(2 * width, width))
        self.head = torch.nn.Linear(width, 1)
        torch.nn.init.zeros_(self.head.weight)  # start as the soft threshold alone
        torch.nn.init.zeros_(self.head.bias)
        self.bar = torch.nn.Parameter(torch.tensor(bar))
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over the block's positions, written with plain ops so the ONNX graph
        keeps the block length dynamic."""
        batch, width = x.shape[0], x.shape[-1]
        q, k, v = (t.reshape(batch, -1, self.heads, width // self.heads).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))  # each (batch, heads, b, d)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (width // self.heads) ** 0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, -1, width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.embed(features)
        x = self.norm1(h)
        h = h + self.attention(x)
        h = h + self.ff(self.norm2(h))
        return self.head(h).squeeze(-1) + self.scale * (features[..., 0] - self.bar)


class Sampler:
    """Stands in for tie_lite.Policy during rollouts: runs the torch network, samples each
    position's decision and records (features, decisions) for the gradient step.

    tie_lite commits the masked positions whose returned logit is > 0, else the highest one;
    sampled positions get +1, the others sigmoid(logit) - 1 (< 0, ordered like the logits),
    so the decode commits exactly the sampled set, or the most likely position if it is empty."""

    def __init__(self, net: PolicyNet, rng: np.random.Generator, sample: bool = True):
        self.net, self.rng, self.sample = net, rng, sample
        self.steps: list = []  # (features (b, F), decisions (b,) bool) per step

    def logits(self, features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = self.net(torch.from_numpy(features)[None])[0].numpy().astype(np.float64)  # (b,)
        prob = 1.0 / (1.0 + np.exp(-logits))
        chosen = self.rng.random(prob.size) < prob if self.sample else logits > 0
        self.steps.append((features, chosen))
        return np.where(chosen, 1.0, prob - 1.0)


@contextlib.contextmanager
def policy_swapped(sampler: Sampler):
    """tie_lite decodes with `sampler` as every policy while the block runs."""
    original = tie_lite.load_policy
    tie_lite.load_policy = lambda folder: sampler
    try:
        yield
    finally:
        tie_lite.load_policy = original


def rollout(model: tie_lite.Model, example: dict, config: tie_lite.DecodeConfig, sampler: Sampler) -> tuple:
    """One policy decode: (correct, model calls, the sampler's recorded steps)."""
    sampler.steps = []
    with policy_swapped(sampler):
        result = tie_lite.generate(model, example["prompt"], config)
    return task.is_correct(result.answer or "", example), result.model_calls, sampler.steps


def log_prob(net: PolicyNet, steps: list) -> torch.Tensor:
    """Mean over a rollout's steps of the log-probability of its decisions at the masked positions."""
    features = torch.from_numpy(np.stack([f for f, _ in steps]))          # (S, b, F)
    chosen = torch.from_numpy(np.stack([c for _, c in steps])).float()    # (S, b)
    masked = features[..., tie_lite.POLICY_FEATURES.index("is_masked")]   # (S, b) 1 = still masked
    logits = net(features)
    per_position = -torch.nn.functional.binary_cross_entropy_with_logits(logits, chosen, reduction="none")
    return ((per_position * masked).sum(-1)).mean()


def evaluate(net: PolicyNet, models: dict, problems: list, config: tie_lite.DecodeConfig) -> dict:
    """Greedy (logit > 0) accuracy and mean calls per model on `problems`."""
    out = {}
    for name, model in models.items():
        runs = [rollout(model, ex, config, Sampler(net, np.random.default_rng(0), sample=False)) for ex in problems]
        out[name] = (float(np.mean([r[0] for r in runs])), float(np.mean([r[1] for r in runs])))
    return out


def export(net: PolicyNet, out: Path, card: dict) -> None:
    """policy.onnx (features (1, b, F) -> unmask_logits (1, b)) and policy.json."""
    out.mkdir(parents=True, exist_ok=True)
    net.eval()
    example = torch.rand(1, 4, FEATURES)
    torch.onnx.export(net, (example,), str(out / tie_lite.POLICY_GRAPH), input_names=["features"],
                      output_names=["unmask_logits"], dynamic_axes={"features": {1: "b"}, "unmask_logits": {1: "b"}},
                      opset_version=17, dynamo=False)
    (out / tie_lite.POLICY_CARD).write_text(json.dumps(card, indent=2) + "\n")
    check = tie_lite.Policy.load(out)
    for size in (1, 4, 9):
        features = np.random.default_rng(size).random((size, FEATURES), dtype=np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(features)[None])[0].numpy()
        got = check.logits(features)
        if not np.allclose(got, want, atol=1e-4):
            raise SystemExit(f"error: exported policy differs from torch by {np.abs(got - want).max():.2e}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to write policy.onnx and policy.json")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--models", nargs="+", default=["a", "b"], help="model folders under --models-dir")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--problems", type=int, default=32, help="train problems per iteration")
    p.add_argument("--group", type=int, default=8, help="rollouts per problem (GRPO group)")
    p.add_argument("--cost", type=float, default=0.002, help="reward lost per model call")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-n", type=int, default=300, help="validation problems scored at start and end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per model")
    args = p.parse_args(argv)
    for name in ("iterations", "problems", "group", "eval_n"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.group < 2:
        p.error(f"--group must be at least 2 (advantages compare rollouts), got {args.group}")
    if args.cost < 0:
        p.error(f"--cost must be >= 0, got {args.cost}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    models = {m: tie_lite.Model.load(args.models_dir / m / "onnx", threads=args.threads) for m in args.models}
    defaults = next(iter(models.values())).manifest.decode_defaults
    config = tie_lite.DecodeConfig(**defaults, strategy="policy", policy="<training>")
    train = task.make_split("train", args.iterations * args.problems, seed=args.seed)
    validation = task.make_split("validation", args.eval_n, seed=args.seed)
    net = PolicyNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    start = evaluate(net, models, validation, config)
    print(f"start: validation {start}", flush=True)
    names, t0 = list(models), time.perf_counter()
    for it in range(args.iterations):
        batch = train[it * args.problems:(it + 1) * args.problems]
        objective, stats = 0.0, []
        for i, example in enumerate(batch):
            model = models[names[(it * args.problems + i) % len(names)]]
            runs = [rollout(model, example, config, Sampler(net, rng)) for _ in range(args.group)]
            rewards = np.array([float(c) - args.cost * calls for c, calls, _ in runs])
            stats += [(c, calls) for c, calls, _ in runs]
            advantages = rewards - rewards.mean()
            if not advantages.any():
                continue  # every rollout scored the same: nothing to compare
            objective = objective + sum(a * log_prob(net, steps) for a, (_, _, steps) in zip(advantages, runs))
        if torch.is_tensor(objective):
            optimizer.zero_grad()
            (-objective / (args.problems * args.group)).backward()
            optimizer.step()
        acc, calls = np.mean([s[0] for s in stats]), np.mean([s[1] for s in stats])
        print(f"iteration {it + 1}/{args.iterations}: sampled accuracy {acc:.3f}, calls {calls:.1f}, "
              f"bar {net.bar.item():.3f}, scale {net.scale.item():.2f}, {time.perf_counter() - t0:.0f}s", flush=True)
    final = evaluate(net, models, validation, config)
    print(f"end: validation {final}", flush=True)
    card = {"schema_version": tie_lite.SCHEMA_VERSION, "features": list(tie_lite.POLICY_FEATURES),
            "trained_on": args.models, "method": "GRPO, reward = correct - cost * model calls",
            "cost_per_call": args.cost, "iterations": args.iterations, "problems_per_iteration": args.problems,
            "group": args.group, "lr": args.lr, "seed": args.seed, "decode": defaults,
            "validation": {m: {"accuracy": a, "model_calls": c} for m, (a, c) in final.items()},
            "validation_at_start": {m: {"accuracy": a, "model_calls": c} for m, (a, c) in start.items()},
            "validation_problems": args.eval_n}
    export(net, args.out, card)
    print(f"wrote {args.out / tie_lite.POLICY_GRAPH} and {args.out / tie_lite.POLICY_CARD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
