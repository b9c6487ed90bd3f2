"""A plain PyTorch decode, written the way LLaDA's generate() is, to hold tie_lite to.

Full logits over the whole canvas every step, softmax, confidence of the argmax at
the still-masked positions of the current block, commit the most confident ones.
It shares no code with tie_lite.

Two rules are tie-lite's, not LLaDA's or Dream's, and this reference applies them too:
the mask token's column gets no probability (logit -inf here, the float32 minimum in
the exported graph: the same softmax), and equal confidences commit the lower position
first. Dream's count is computed as Dream's _sample does, in torch float32.
"""

from __future__ import annotations

import torch


def reference_decode(model, tokenizer, prompt: str, *, gen_length: int, block_size: int,
                     steps: int | None = None, answer_length: int = 0, marker: str = "Answer:",
                     strategy: str = "schedule", threshold: float = 0.9, tokens_per_step: int = 2,
                     vocab_size: int | None = None, confidence: str = "top1", entropy_budget: float = 1.0,
                     eps: float = 1e-3, eos_gamma: tuple | None = None, mask_id: int | None = None,
                     bidirectional: bool = False, shift: int = 0,
                     commits: list | None = None) -> tuple[list[int], int]:
    """Greedy decode; returns (the canvas after the prompt, number of forward passes).

    bidirectional: hand a causal-LM class an all-true 4D mask; shift 1: position i reads
    the logits at i - 1 (position 0 its own), as Dream does. commits: a list to which each
    step appends the sorted canvas positions it committed.
    """
    mask_id = tokenizer.mask_token_id if mask_id is None else mask_id
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    marker_ids = tokenizer.encode(marker, add_special_tokens=False) if answer_length else []
    reasoning = gen_length - answer_length
    x = torch.tensor(prompt_ids + [mask_id] * reasoning + marker_ids + [mask_id] * answer_length)
    p = len(prompt_ids)
    gen_positions = list(range(p, p + reasoning)) + list(range(p + reasoning + len(marker_ids), len(x)))
    num_blocks = gen_length // block_size
    steps_per_block = (steps or gen_length) // num_blocks
    forwards = 0
    for b in range(num_blocks):
        block = torch.tensor(gen_positions[b * block_size:(b + 1) * block_size])
        n = int((x[block] == mask_id).sum())
        counts = [n // steps_per_block + (1 if i < n % steps_per_block else 0) for i in range(steps_per_block)]
        step = 0
        while bool((x[block] == mask_id).any()):
            masked = block[x[block] == mask_id]
            with torch.no_grad():
                attention = (torch.ones(1, 1, len(x), len(x), dtype=torch.bool) if bidirectional
                             else torch.ones(1, len(x), dtype=torch.long))
                logits = model(input_ids=x[None], attention_mask=attention).logits[0]
            forwards += 1
            if shift:
                logits = torch.cat([logits[:1], logits[:-1]])
            logits[:, mask_id] = float("-inf")
            if vocab_size is not None:
                logits[:, vocab_size:] = float("-inf")
            probs = torch.softmax(logits.float(), dim=-1)
            x0 = probs.argmax(-1)
            top2 = probs.topk(2, dim=-1).values[masked]
            entropy = -(probs * torch.log_softmax(logits.float(), dim=-1)).nan_to_num().sum(-1)[masked]
            conf = {"top1": top2[:, 0], "margin": top2[:, 0] - top2[:, 1], "entropy": -entropy}[confidence]
            if eos_gamma is not None:  # EOSER, as the reference code: block step over total steps
                total = steps or gen_length
                fac = eos_gamma[0] + (eos_gamma[1] - eos_gamma[0]) * min(step, total - 1) / (total - 1)
                conf = torch.where(x0[masked] == tokenizer.eos_token_id, conf * fac, conf)
            order = sorted(range(len(masked)), key=lambda i: (-float(conf[i]), int(masked[i])))
            if strategy == "schedule":
                chosen = order[:counts[step]]
            elif strategy == "topk":
                chosen = order[:tokens_per_step]
            elif strategy == "med":
                by_entropy = sorted(range(len(masked)), key=lambda i: (float(entropy[i]), int(masked[i])))
                total_h, chosen = 0.0, []
                for i in by_entropy:
                    total_h += float(entropy[i])
                    if total_h > entropy_budget:
                        break
                    chosen.append(i)
                chosen = chosen or by_entropy[:1]
            elif strategy == "dream":  # Dream's _sample: linspace(1, eps, n + 1), int(masked * (1 - s / t))
                timesteps = torch.linspace(1, eps, steps_per_block + 1)
                t, s = timesteps[step], timesteps[step + 1]
                num_mask_token = torch.tensor(len(masked)) / 1  # float32, as Dream's mask_index.sum() / batch
                last = step == steps_per_block - 1
                k = int(num_mask_token) if last else int(num_mask_token * (1 - s / t))
                chosen = order[:k]
            else:
                chosen = [i for i in order if float(conf[i]) > threshold] or order[:1]
            for i in chosen:
                x[masked[i]] = x0[masked[i]]
            if commits is not None:
                commits.append(sorted(int(masked[i]) for i in chosen))
            step += 1
    return x[p:].tolist(), forwards


def reference_ass_decode(model, tokenizer, prompt: str, *, gen_length: int, block_num: int,
                         vocab_size: int | None = None) -> tuple[list[int], int]:
    """Ascending step size, transcribing the layout of ass_generate in yjyddq/EOSER-ASS-RL by hand."""
    mask_id = tokenizer.mask_token_id
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    x = torch.tensor(prompt_ids + [mask_id] * gen_length)
    S = gen_length.bit_length() - 1
    if block_num == 1:
        sizes, steps = [gen_length], [list(range(S))]
    else:
        sizes, steps, remaining, power = [], [], gen_length, S - 1
        for b in range(block_num - 1, -1, -1):
            if b == block_num - 1:
                size, st = 2 ** power + 1, [power]
                power -= 1
            elif b == 0:
                size, st = remaining, list(range(power + 1))
            else:
                size, st = 2 ** power, [power]
                power -= 1
            remaining -= size
            sizes.insert(0, size)
            steps.insert(0, st)
    counts = [2 ** i for i in range(S)]
    counts[-1] = sizes[-1] - (2 ** (S - 1) - 1) if len(sizes) == 1 else sizes[-1]
    start, forwards = len(prompt_ids), 0
    for size, st in zip(sizes, steps):
        for i in st:
            with torch.no_grad():
                logits = model(input_ids=x[None], attention_mask=torch.ones(1, len(x), dtype=torch.long)).logits[0]
            forwards += 1
            logits[:, mask_id] = float("-inf")
            if vocab_size is not None:
                logits[:, vocab_size:] = float("-inf")
            probs = torch.softmax(logits.float(), dim=-1)
            conf, x0 = probs.max(-1)
            masked = [p for p in range(start, start + size) if int(x[p]) == mask_id]
            order = sorted(masked, key=lambda p: (-float(conf[p]), p))
            for p in order[:counts[i]]:
                x[p] = x0[p]
        start += size
    return x[len(prompt_ids):].tolist(), forwards
