"""Greedy semi-autoregressive decoding in PyTorch, for monitoring a checkpoint's accuracy.

Block size 16 over the response positions (reasoning blocks, then answer blocks; the marker is
fixed), one token per step: at each step commit the still-masked position of the current block
whose top-1 probability is highest (ties to the lowest position). The answer is the answer region
decoded up to the first EOS, scored by exact match.

    nice -n 19 python train/quick_eval.py ckpt/A --split validation --n 500 [--task long]

The problems are of the task variant the checkpoint was trained on (its training_args.json)
unless --task names another; the accuracy is also printed per number of operations.
--teacher-forced prints instead each reasoning token's accuracy given the gold tokens to its left
(every later response position masked), by kind: result digits (right of "="), operand digits,
other characters; it tells arithmetic from copying without the decode order in between.
"""

import argparse
import sys
import time

import torch

import task
from common import Layout, forward_logits, load_args, load_model


@torch.no_grad()
def greedy_decode(model, layout, prompts, block_size=16, batch_size=64):
    """Return the decoded response id lists (R + A ids each) for `prompts`, in order."""
    model.eval()
    out = [None] * len(prompts)
    groups = {}
    for i, p in enumerate(prompts):
        pid = layout.prompt_ids(p)
        groups.setdefault(len(pid), []).append((i, pid))
    for P, items in groups.items():
        resp = layout.response_positions(P)
        assert len(resp) % block_size == 0
        L = P + layout.R + len(layout.marker_ids) + layout.A
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            ids = torch.full((len(chunk), L), layout.mask, dtype=torch.long)
            ids[:, :P] = torch.tensor([pid for _, pid in chunk])
            ids[:, P + layout.R: P + layout.R + len(layout.marker_ids)] = torch.tensor(layout.marker_ids)
            rows = torch.arange(len(chunk))
            for b in range(0, len(resp), block_size):
                block = torch.tensor(resp[b:b + block_size])
                for _ in range(block_size):
                    logits = forward_logits(model, ids)[:, block].float()
                    conf = logits.softmax(-1).max(-1)
                    top_p, top_id = conf.values, conf.indices
                    top_p = top_p.masked_fill(ids[:, block] != layout.mask, -1.0)
                    j = top_p.argmax(-1)  # first max = lowest position on ties
                    ids[rows, block[j]] = top_id[rows, j]
            for (i, _), row in zip(chunk, ids):
                out[i] = row[resp].tolist()
    return out


@torch.no_grad()
def greedy_decode_padded(model, layout, prompts, block_size=16, batch_size=256):
    """Same decode, but prompts of different lengths share a batch: each canvas is right-padded with
    [PAD] and the padding is hidden by the attention mask (keys only; positions are unchanged), so
    the result matches greedy_decode up to float rounding."""
    model.eval()
    out = []
    R, A, mk = layout.R, layout.A, layout.marker_ids
    pad = layout.tok.pad_token_id
    for s in range(0, len(prompts), batch_size):
        pids = [layout.prompt_ids(p) for p in prompts[s:s + batch_size]]
        n, Lmax = len(pids), max(len(p) for p in pids) + R + len(mk) + A
        ids = torch.full((n, Lmax), pad, dtype=torch.long)
        att = torch.zeros((n, Lmax), dtype=torch.long)
        resp = torch.zeros((n, R + A), dtype=torch.long)
        for i, p in enumerate(pids):
            P = len(p)
            L = P + R + len(mk) + A
            ids[i, :L] = layout.mask
            ids[i, :P] = torch.tensor(p)
            ids[i, P + R: P + R + len(mk)] = torch.tensor(mk)
            att[i, :L] = 1
            resp[i] = torch.tensor(layout.response_positions(P))
        rows = torch.arange(n)
        for b in range(0, R + A, block_size):
            block = resp[:, b:b + block_size]  # (n, bs)
            for _ in range(block.shape[1]):
                logits = forward_logits(model, ids, att)  # (n, L, V)
                logits = logits[rows[:, None], block].float()  # (n, bs, V)
                conf = logits.softmax(-1).max(-1)
                top_p = conf.values.masked_fill(ids[rows[:, None], block] != layout.mask, -1.0)
                j = top_p.argmax(-1)
                ids[rows, block[rows, j]] = conf.indices[rows, j]
        out += [ids[i, resp[i]].tolist() for i in range(n)]
    return out


def evaluate(model, layout, examples, padded=False, **kw):
    """Exact-match accuracy and the decoded answers."""
    decode = greedy_decode_padded if padded else greedy_decode
    decoded = decode(model, layout, [e["prompt"] for e in examples], **kw)
    answers = [layout.decode_answer(d[layout.R:]) for d in decoded]
    acc = sum(task.is_correct(a, e) for a, e in zip(answers, examples)) / max(1, len(examples))
    return acc, answers, decoded


def token_kinds(text, offsets):
    """Per token (its character offsets into text): "result" (a digit of a number right of "="),
    "operand" (another digit) or "other", by the token's first character."""
    in_result, result = [], False
    for ch in text:
        result = ch == "=" or (result and ch.isdigit())
        in_result.append(result and ch.isdigit())
    kinds = []
    for start, _ in offsets:
        ch = text[start]
        kinds.append("result" if in_result[start] else "operand" if ch.isdigit() else "other")
    return kinds


@torch.no_grad()
def teacher_forced(model, layout, examples):
    """{kind: (right, total)}: top-1 accuracy on every reasoning token with the gold sequence to its
    left and every response position from it on masked (kinds: token_kinds)."""
    model.eval()
    counts = {}
    for ex in examples:
        ids, P = layout.encode(ex)
        offsets = layout.tok(ex["reasoning"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        kinds = token_kinds(ex["reasoning"], offsets)
        resp = torch.tensor(layout.response_positions(P))
        n = len(kinds)
        x = torch.tensor([ids] * n)  # (n, L): row k predicts reasoning token k
        for k in range(n):
            x[k, resp[k:]] = layout.mask
        pred = forward_logits(model, x)[torch.arange(n), resp[:n]].argmax(-1).tolist()
        for kind, p, gold in zip(kinds, pred, ids[P:P + n]):
            right, total = counts.get(kind, (0, 0))
            counts[kind] = (right + (p == gold), total + 1)
    return counts


def operations(example) -> int:
    """How many operations a problem's chain has: one "=" per step of its reasoning."""
    return example["reasoning"].count("=")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--split", default="validation", choices=["validation", "test"])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="split seed (validation/test sets use seed 0)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--padded", action="store_true",
                    help="batch all prompt lengths together with right padding + attention mask")
    ap.add_argument("--task", choices=sorted(task.TASKS), help="task variant (default: the checkpoint's)")
    ap.add_argument("--block-size", type=int, default=16, help="positions per block, decoded in confidence "
                    "order (1: strictly left to right); must divide the response (R + A)")
    ap.add_argument("--show", type=int, default=3, help="print this many decoded examples")
    ap.add_argument("--teacher-forced", action="store_true",
                    help="print the reasoning's token accuracy given the gold left context, by kind, instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.ckpt)
    model = load_model(args.ckpt)
    trained = load_args(args.ckpt)
    a = trained["layout"]
    layout = Layout(tok, R=a["R"], A=a["A"], prefix=a["prompt_prefix"], suffix=a["prompt_suffix"],
                    marker=a["marker"], max_length=a["max_length"])
    variant = args.task or trained.get("args", {}).get("task", "short")
    if task.TASKS[variant].R > a["R"]:
        ap.error(f"--task {variant} needs {task.TASKS[variant].R} reasoning positions; {args.ckpt} was trained "
                 f"with {a['R']}")
    examples = task.make_split(args.split, args.n, seed=args.seed, variant=variant)
    t0 = time.time()
    if args.teacher_forced:
        counts = teacher_forced(model, layout, examples)
        print(f"{args.ckpt}: {variant} {args.split}, {len(examples)} problems, reasoning tokens right given the "
              f"gold left context ({time.time() - t0:.0f}s):")
        for kind in ("result", "operand", "other"):
            right, total = counts.get(kind, (0, 0))
            print(f"  {kind}: {right / max(total, 1):.3f} of {total}")
        return counts
    if args.block_size < 1 or (a["R"] + a["A"]) % args.block_size:
        ap.error(f"--block-size must be a positive divisor of R + A = {a['R'] + a['A']}, got {args.block_size}")
    acc, answers, decoded = evaluate(model, layout, examples, padded=args.padded, block_size=args.block_size)
    for e, ans, d in list(zip(examples, answers, decoded))[:args.show]:
        print(repr(e["prompt"]), "->", repr(tok.decode(d[:layout.R])), "| answer", repr(ans),
              "| gold", e["answer"])
    print(f"{args.ckpt}: {variant} {args.split} exact match {acc:.4f} on {len(examples)} problems "
          f"({time.time() - t0:.0f}s)")
    for ops in sorted({operations(e) for e in examples}):
        right = [task.is_correct(ans, e) for ans, e in zip(answers, examples) if operations(e) == ops]
        print(f"  {ops} operations: {sum(right) / len(right):.3f} of {len(right)}")
    return acc


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
