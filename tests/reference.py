"""A plain PyTorch decode, written the way LLaDA's generate() is, to hold tie_lite to.

Full logits over the whole canvas every step, softmax, confidence of the argmax at
the still-masked positions of the current block, commit the most confident ones.
It shares no code with tie_lite.
"""

from __future__ import annotations

import torch


def reference_decode(model, tokenizer, prompt: str, *, gen_length: int, block_size: int,
                     steps: int | None = None, answer_length: int = 0, marker: str = "Answer:",
                     strategy: str = "schedule", threshold: float = 0.9, tokens_per_step: int = 2,
                     vocab_size: int | None = None) -> tuple[list[int], int]:
    """Greedy decode; returns (the canvas after the prompt, number of forward passes)."""
    mask_id = tokenizer.mask_token_id
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
                logits = model(input_ids=x[None], attention_mask=torch.ones(1, len(x), dtype=torch.long)).logits[0]
            forwards += 1
            logits[:, mask_id] = float("-inf")
            if vocab_size is not None:
                logits[:, vocab_size:] = float("-inf")
            probs = torch.softmax(logits.float(), dim=-1)
            x0 = probs.argmax(-1)
            conf = probs.max(-1).values[masked]
            order = sorted(range(len(masked)), key=lambda i: (-float(conf[i]), int(masked[i])))
            if strategy == "schedule":
                chosen = order[:counts[step]]
            elif strategy == "topk":
                chosen = order[:tokens_per_step]
            else:
                chosen = [i for i in order if float(conf[i]) > threshold] or order[:1]
            for i in chosen:
                x[masked[i]] = x0[masked[i]]
            step += 1
    return x[p:].tolist(), forwards
