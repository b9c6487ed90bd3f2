"""Train a small masked diffusion LM (MDLM) on the arithmetic task, reasoning-as-infilling layout.

Objective (LLaDA-style): per example t ~ U(0, 1) clamped to >= t_min; each response position
(reasoning + answer, including their EOS padding; never prompt or marker) is replaced by [MASK]
independently with probability t; loss = sum over masked positions of CE / t, divided by
(batch * response positions). Full bidirectional attention, no padding: batches are drawn from
one prompt-length bucket at a time so every sequence in a batch has the same length.

--decode_frac F masks a fraction F of each batch as a blockwise decode sees its canvas instead
(decode_like_mask: the blocks before one clean, that block partly masked, every block after it
masked), scoring only that block: what the runtime asks of a model at every step, which a uniform
mask almost never shows. It took D from 43% to 92% of 100 validation problems in 1000 steps.

    nice -n 19 python train/train_mdlm.py --out ckpt/A --arch modernbert \
        --tokenizer char --hidden 128 --layers 4 --heads 4 --intermediate 256 --steps 3000
    python train/train_mdlm.py --smoke --out /tmp/mdlm-smoke
"""

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import task  # noqa: E402
from common import (Layout, bucket_by_prompt_length, build_tokenizer, forward_logits, load_model,  # noqa: E402
                    tokenizer_kind)
from quick_eval import evaluate  # noqa: E402


def make_model(args, tok):
    from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if args.arch == "modernbert":
        cfg = ModernBertConfig(
            vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
            num_hidden_layers=args.layers, num_attention_heads=args.heads,
            max_position_embeddings=args.max_length, global_attn_every_n_layers=1,
            local_attention=2 * args.max_length, global_rope_theta=10000.0, local_rope_theta=10000.0,
            attention_dropout=0.0, mlp_dropout=0.0, embedding_dropout=0.0,
            bos_token_id=tok.eos_token_id, cls_token_id=tok.eos_token_id, sep_token_id=tok.eos_token_id,
            reference_compile=False, tie_word_embeddings=True, **ids)
        model = ModernBertForMaskedLM(cfg)
    elif args.arch == "bert":
        cfg = BertConfig(
            vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
            num_hidden_layers=args.layers, num_attention_heads=args.heads,
            max_position_embeddings=args.max_length, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, tie_word_embeddings=True,
            position_embedding_type=args.bert_positions, **ids)
        model = BertForMaskedLM(cfg)
    elif args.arch == "a2d-qwen3":  # the dLLM project's A2D layout: Qwen3 weights, bidirectional attention
        from transformers import Qwen3Config, Qwen3ForCausalLM
        cfg = Qwen3Config(
            vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
            num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
            head_dim=args.hidden // args.heads, max_position_embeddings=args.max_length, rope_theta=10000.0,
            attention_dropout=0.0, tie_word_embeddings=True, bos_token_id=tok.eos_token_id, **ids)
        model = Qwen3ForCausalLM(cfg)
    else:
        raise ValueError(args.arch)
    return model


def extend_positions(model, max_length):
    """Let a loaded model take sequences of max_length (a longer task variant). Rotary models only
    record the new length; BERT's relative-position table gains rows for the new distances, each a
    copy of the farthest distance it had (the table's edge), and its unused absolute table grows
    the same way."""
    c = model.config
    old = c.max_position_embeddings
    if max_length <= old:
        return
    c.max_position_embeddings = max_length
    if c.model_type != "bert":
        return
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        table = attention.distance_embedding.weight.data  # (2 old - 1, head size)
        grown = torch.cat([table[:1].expand(max_length - old, -1), table,
                           table[-1:].expand(max_length - old, -1)])  # (2 max_length - 1, head size)
        attention.distance_embedding = torch.nn.Embedding.from_pretrained(grown, freeze=False)
        attention.max_position_embeddings = max_length
    positions = model.bert.embeddings.position_embeddings.weight.data  # (old, hidden)
    grown = torch.cat([positions, positions[-1:].expand(max_length - old, -1)])
    model.bert.embeddings.position_embeddings = torch.nn.Embedding.from_pretrained(grown, freeze=False)
    model.bert.embeddings.register_buffer("position_ids", torch.arange(max_length)[None], persistent=False)
    model.bert.embeddings.register_buffer("token_type_ids", torch.zeros(1, max_length, dtype=torch.long),
                                          persistent=False)


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def decode_like_mask(rng, B, n_resp, block, t):
    """(B, n_resp) bools masked as a blockwise decode sees its canvas, and (B, n_resp) bools of the
    positions scored: per row a block b is drawn uniformly; blocks before b are clean, block b has
    each position masked with probability t (the row's noise level), every later block is masked.
    Only block b is scored: the positions a decode commits next, from that context."""
    if n_resp % block:
        raise ValueError(f"block {block} does not divide the {n_resp} response positions")
    pos = np.arange(n_resp)[None, :]                        # (1, n_resp)
    b = rng.integers(0, n_resp // block, size=(B, 1)) * block  # (B, 1) first position of the block
    in_block = (pos >= b) & (pos < b + block)               # (B, n_resp)
    masked = (in_block & (rng.random((B, n_resp)) < t[:, None])) | (pos >= b + block)
    return masked, in_block & masked


def save(model, tok, layout, args, out, extra):
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if args.arch == "a2d-qwen3":  # as dllm saves its A2D checkpoints; export reads the family from it
        path = os.path.join(out, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["model_type"] = "a2d-qwen3"
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
    info = {"task": f"tie-lite arithmetic (train/task.py), variant {args.task}", "layout": layout.to_dict(),
            "difficulty": {"N_OPS": task.TASKS[args.task].n_ops, "FIRST_RANGE": task.FIRST_RANGE, "ADD_RANGE": task.ADD_RANGE, "MUL_RANGE": task.MUL_RANGE,
                           "MAX_VALUE": task.MAX_VALUE, "MUL_MAX_VALUE": task.MUL_MAX_VALUE},
            "args": vars(args), **extra}
    with open(os.path.join(out, "training_args.json"), "w") as f:
        json.dump(info, f, indent=2)


def ops_list(text: str) -> tuple:
    """--ops: comma-separated positive numbers of operations."""
    try:
        return task.check_ops(tuple(int(k) for k in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated positive numbers of operations, got {text!r}") from None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--task", default="short", choices=["short", "long", "chain", "chain80"],
                    help="task variant (train/task.py): its problems and its layout")
    ap.add_argument("--ops", default=None, type=ops_list,
                    help="numbers of operations of the training problems, comma-separated and drawn uniformly "
                         "(repeats weigh more), e.g. 2,2,3,3,4,5,6; default the variant's. Validation keeps the variant's")
    ap.add_argument("--arch", default="modernbert", choices=["modernbert", "bert", "a2d-qwen3"])
    ap.add_argument("--tokenizer", default="char", choices=["char", "bpe", "bpe-words"])
    ap.add_argument("--bpe_vocab", type=int, default=300)
    ap.add_argument("--bert_positions", default="relative_key", choices=["absolute", "relative_key"],
                    help="BERT's position embeddings; relative positions learn the layout far faster here, "
                         "where the prompt length varies")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv_heads", type=int, default=2, help="key/value heads (a2d-qwen3's grouped-query attention)")
    ap.add_argument("--intermediate", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min_lr_frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight_decay", type=float, default=0.01)
    ap.add_argument("--t_min", type=float, default=1e-3)
    ap.add_argument("--n_train", type=int, default=200000)
    ap.add_argument("--data_seed", type=int, default=0, help="seed of the train split")
    ap.add_argument("--seed", type=int, default=0, help="seed of init, masking and batching")
    ap.add_argument("--eval_every", type=int, default=500)
    ap.add_argument("--eval_n", type=int, default=200, help="validation problems per periodic eval")
    ap.add_argument("--keep_snapshots", action="store_true", help="also keep every eval's checkpoint in OUT_steps/")
    ap.add_argument("--max_minutes", type=float, default=30.0, help="stop (and save) after this much time")
    ap.add_argument("--init_from", default=None,
                    help="continue from this checkpoint dir (weights + tokenizer; fresh optimizer and schedule)")
    ap.add_argument("--ema", type=float, default=0.0,
                    help="keep an exponential moving average of the weights with this decay (e.g. 0.999) and "
                         "evaluate and save it instead of the raw weights; 0 = off")
    ap.add_argument("--decode_frac", type=float, default=0.0,
                    help="fraction of each batch masked as a blockwise decode sees it (see decode_like_mask)")
    ap.add_argument("--block", type=int, default=16, help="block size of --decode_frac's masking")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps, seconds")
    args = ap.parse_args(argv)
    if not 0.0 <= args.ema < 1.0:
        raise SystemExit(f"--ema must be in [0, 1), got {args.ema}")
    if not 0.0 <= args.decode_frac <= 1.0:
        raise SystemExit(f"--decode_frac must be in [0, 1], got {args.decode_frac}")
    if args.smoke:
        args.hidden, args.layers, args.heads, args.intermediate = 32, 1, 2, 64
        args.steps, args.warmup, args.batch, args.n_train = 20, 5, 8, 500
        args.eval_every, args.eval_n, args.bpe_vocab = 20, 8, 280

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    t0 = time.time()
    variant = task.TASKS[args.task]
    args.max_length = variant.max_length
    train = task.make_split("train", args.n_train, seed=args.data_seed, variant=args.task, ops=args.ops)
    val = task.make_split("validation", args.eval_n, seed=0, variant=args.task)
    if args.init_from:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(args.init_from)
        args.tokenizer = tokenizer_kind(tok)
    else:
        tok = build_tokenizer(args.tokenizer, train, bpe_vocab=args.bpe_vocab)
    layout = Layout(tok, R=variant.R, A=variant.A, max_length=variant.max_length)
    if args.decode_frac and (args.block < 1 or layout.R % args.block or layout.A % args.block):
        raise SystemExit(f"--block must divide the task's reasoning ({layout.R}) and answer ({layout.A}) "
                         f"positions, as a decode's blocks do; got {args.block}")
    buckets = bucket_by_prompt_length(layout, train)
    keys = sorted(buckets)
    weights = np.array([len(buckets[k]) for k in keys], dtype=np.float64)
    weights /= weights.sum()
    if args.init_from:
        model = load_model(args.init_from)
        extend_positions(model, args.max_length)
        c = model.config  # record the loaded model's shape, not the command-line defaults
        args.hidden, args.layers = c.hidden_size, c.num_hidden_layers
        args.heads, args.intermediate = c.num_attention_heads, c.intermediate_size
        args.arch = {"bert": "bert", "qwen3": "a2d-qwen3"}.get(c.model_type, "modernbert")
        args.kv_heads = getattr(c, "num_key_value_heads", args.kv_heads)
    else:
        model = make_model(args, tok)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch} tokenizer={args.tokenizer} vocab={len(tok)} params={n_params} "
          f"train={len(train)} buckets={len(keys)} setup {time.time() - t0:.1f}s", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))

    n_resp = layout.R + layout.A
    history, start, step, loss_avg = [], time.time(), 0, None
    ema = copy.deepcopy(model).eval() if args.ema else None  # the weights evaluated and saved, if on
    for p in (ema.parameters() if ema else ()):
        p.requires_grad_(False)

    def do_eval(step):
        shown = ema if ema is not None else model
        acc, _, _ = evaluate(shown, layout, val)
        record = {"step": step, "val_acc": acc}
        if ema is not None:  # the raw weights too, to see what the average buys
            record["val_acc_raw"] = evaluate(model, layout, val)[0]
        model.train()
        elapsed = time.time() - start
        history.append({**record, "minutes": round(elapsed / 60, 2)})
        extra = {"n_params": n_params, "step": step, "val_acc_quick": acc, "val_n_quick": len(val),
                 "train_minutes": round(elapsed / 60, 2), "history": history}
        save(shown, tok, layout, args, args.out, extra)
        if args.keep_snapshots:
            snap = f"{args.out.rstrip('/')}_steps/step{step:05d}"
            shutil.rmtree(snap, ignore_errors=True)
            shutil.copytree(args.out, snap)
        raw = f" raw {record['val_acc_raw']:.3f}" if ema is not None else ""
        print(f"step {step} val_acc {acc:.3f}{raw} ({len(val)}) loss {loss_avg:.4f} "
              f"{elapsed / 60:.1f} min", flush=True)

    model.train()
    while step < args.steps:
        P = keys[rng.choice(len(keys), p=weights)]
        data = buckets[P]
        rows = rng.choice(len(data), size=min(args.batch, len(data)), replace=False)
        x = torch.from_numpy(data[rows])  # (B, L)
        B = x.shape[0]
        resp = torch.tensor(layout.response_positions(P))
        t = torch.from_numpy(rng.random(B)).float().clamp_min(args.t_min)  # (B,)
        masked = torch.zeros_like(x, dtype=torch.bool)
        masked[:, resp] = torch.from_numpy(rng.random((B, len(resp)))).float() < t[:, None]
        scored, w_row = masked.clone(), (1.0 / t)[:, None].expand(B, x.shape[1]).clone()  # (B, L) each
        n_dec = int(round(args.decode_frac * B))
        if n_dec:  # the first n_dec rows: a blockwise decode's context, its block scored (scaled to a row)
            dm, ds = decode_like_mask(rng, n_dec, n_resp, args.block, t[:n_dec].numpy())
            masked[:n_dec, resp], scored[:n_dec] = torch.from_numpy(dm), False
            scored[:n_dec, resp] = torch.from_numpy(ds)
            w_row[:n_dec] *= n_resp / args.block
        inp = x.masked_fill(masked, layout.mask)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        logits = forward_logits(model, inp)  # (B, L, V)
        ce = F.cross_entropy(logits[scored].float(), x[scored], reduction="none")
        loss = (ce * w_row[scored]).sum() / (B * n_resp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1.0 - args.ema)
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if step % 50 == 0:
            print(f"step {step} loss {loss_avg:.4f} lr {lr_at(step, args):.2e} "
                  f"{(time.time() - start) / step:.2f}s/step", flush=True)
        timed_out = time.time() - start > args.max_minutes * 60
        if step % args.eval_every == 0 or step == args.steps or timed_out:
            do_eval(step)
        if timed_out:
            print(f"stopping at step {step}: max_minutes {args.max_minutes} reached", flush=True)
            break
    print(f"done: {args.out} step {step} params {n_params} {(time.time() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
