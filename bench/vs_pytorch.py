"""Decode time of tie-lite vs the PyTorch loop users run today, same weights, same settings, one run.

    python bench/vs_pytorch.py [--hidden 768 --layers 22 --vocab 50368] [--length 512] [--gen 32]
    python bench/vs_pytorch.py --model-dir HF_FOLDER --onnx-dir ONNX_FOLDER
    python bench/vs_pytorch.py --model-dir models/a/hf --onnx-dir models/a/onnx --length 127 --gen 16
    python bench/vs_pytorch.py --length 512 --gen 16 --int8 --kv-cache prefix
    python bench/vs_pytorch.py --length 256 --gen 16 --repeats 2 --provider openvino

The PyTorch side is LLaDA's generate() loop (its repository's generate.py, greedy,
one block): transformers model, full logits over the canvas every step, argmax,
softmax over the full logits in float64 as that code does it, the proposals'
probabilities gathered, the most confident mask committed. A leaner float32 version
of the same loop is timed beside it (--reference float32 uses it for the variants
too). The tie-lite side is `tie_lite.generate` on the exported graph. Both decode
the same prompt (the canvas padded to --length with prompt tokens), interleaved,
and the script checks the outputs are token-identical, then prints the median time
ratio, the graph's forward time against this machine's measured float32 GEMM rate,
and `import tie_lite` time. It also prints the exact ceiling: the PyTorch loop's time
over the time numpy takes for the fewest matmul FLOPs any exact decode needs, as
products of the model's own shapes with nothing else, timed interleaved with the
decodes; no token-identical runtime built on matmuls as fast as BLAS's can beat that
ratio on this machine (numpy uses every core, so with --threads below the core count
the ceiling is loose). Without --model-dir it builds a random ModernBERT of the
given size (ModernBERT-base: hidden 768, 22 layers, vocab 50368). Needs torch.

--kv-cache MODE also times tie-lite with the block key/value cache (export --kv-cache,
approximate: a full pass when the block starts, then only the recomputed rows), in
float32 and, with --int8, in int8, and prints the share of its tokens equal to PyTorch's.
--provider openvino also times the float32 exact decode on OpenVINO's onnxruntime plugin (Intel CPUs;
pip install '.[openvino]') and prints its share of the exact ceiling.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--vocab", type=int, default=50368)
    p.add_argument("--length", type=int, default=512, help="canvas length L (prompt + generation)")
    p.add_argument("--gen", type=int, default=32, help="generated positions (one block, one token per step)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model-dir", type=Path, help="an existing Hugging Face folder instead of a random model")
    p.add_argument("--onnx-dir", type=Path, help="its export (python -m export)")
    p.add_argument("--reference", choices=("llada", "float32"), default="llada",
                   help="the PyTorch loop the variants (K/V cache, int8) are timed against")
    p.add_argument("--int8", action="store_true", help="also time a dynamically quantized int8 copy")
    p.add_argument("--provider", default="cpu", help="also time the float32 exact decode on this tie-lite "
                   "provider (e.g. openvino, which needs pip install '.[openvino]' and an Intel CPU)")
    p.add_argument("--kv-cache", choices=("prefix", "dual"), help="also time decoding with the block K/V cache")
    p.add_argument("--kv-window", type=int, help="with --kv-cache: positions before the block also recomputed "
                   "(default: the block's size)")
    return p.parse_args()


def llada_loop(model, prompt_ids: list, gen: int, mask_id: int, vocab_size: int) -> list:
    """LLaDA's generate() as its generate.py writes it, for one block of `gen` masks, one token per
    step, temperature 0 (Gumbel noise off). The mask column and columns past the tokenizer are set
    to -inf first, as tie-lite's graph does (a trained MDLM never proposes them; random weights might)."""
    import torch
    import torch.nn.functional as F

    x = torch.tensor(prompt_ids + [mask_id] * gen)[None]  # (1, L)
    with torch.no_grad():
        for _ in range(gen):
            mask_index = x == mask_id
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits  # (1, L, V)
            logits[:, :, mask_id] = float("-inf")
            logits[:, :, vocab_size:] = float("-inf")
            x0 = torch.argmax(logits, dim=-1)  # (1, L)
            p = F.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)  # (1, L)
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, float("-inf"))
            _, select = torch.topk(confidence[0], k=1)
            x[0, select] = x0[0, select]
    return x[0, len(prompt_ids):].tolist()


def torch_loop(model, prompt_ids: list, gen: int, mask_id: int, vocab_size: int) -> list:
    """The same loop written lean: float32 softmax, max instead of argmax + gather."""
    import torch

    x = torch.tensor(prompt_ids + [mask_id] * gen)[None]
    start = len(prompt_ids)
    with torch.no_grad():
        for _ in range(gen):
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0]
            logits[:, mask_id] = float("-inf")
            logits[:, vocab_size:] = float("-inf")
            probs = torch.softmax(logits, dim=-1)
            conf, x0 = probs.max(-1)
            conf[:start] = float("-inf")
            conf[x[0] != mask_id] = float("-inf")
            pos = int(torch.argmax(conf))
            x[0, pos] = x0[pos]
    return x[0, start:].tolist()


def gemm_gflops(shapes, use_torch: bool = False, repeats: int = 10) -> float:
    """This machine's float32 GEMM rate, the limit a forward can approach: the best numpy (BLAS,
    every core) rate over `shapes`, (m, k, n) products. With use_torch, PyTorch's own best
    rate over the same shapes, with its set thread count."""
    import torch

    rng = np.random.default_rng(0)
    best = 0.0
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)  # (m, k)
        b = rng.standard_normal((k, n), dtype=np.float32)  # (k, n)
        if use_torch:
            a, b = torch.from_numpy(a), torch.from_numpy(b)
        a @ b
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - t0) / 1e9)
    return best


def mlp_in_width(cfg) -> int:
    """Width of the MLP's input projection: ModernBERT's is gated (2 x intermediate), BERT's not."""
    return 2 * cfg.intermediate_size if cfg.model_type == "modernbert" else cfg.intermediate_size


def model_shapes(cfg, length: int) -> list:
    """The (m, k, n) products of one layer's linear maps on the whole canvas."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    return [(length, h, 3 * h), (length, h, mlp_in_width(cfg)), (length, inter, h)]


def row_gflop(cfg) -> float:
    """Float ops of one row through one layer's linear maps (Wqkv, Wo, the MLP's two)."""
    h = cfg.hidden_size
    return 2 * (4 * h * h + (mlp_in_width(cfg) + cfg.intermediate_size) * h)


def forward_gflop(cfg, length: int) -> float:
    """Float ops of one encoder forward's matmuls (linear maps and attention), LM head excluded."""
    per_layer = length * row_gflop(cfg) + 4 * length * length * cfg.hidden_size
    return cfg.num_hidden_layers * per_layer / 1e9


def exact_decode_gflop(cfg, length: int, gen: int) -> float:
    """The fewest matmul float ops an exact (token-identical) decode of `gen` masks, one per step,
    can do. Every step runs every layer on every row, except what nothing reads or what cannot
    have changed: the last layer's queries, attention and the maps after them for rows other than
    the block's masks (their keys and values are still read), the LM head on rows other than the
    masks, and, for rows unchanged since the step before, the first layer's Wqkv (its input is the
    row's embedding) and its attention scores between two such rows."""
    h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    row, key_value, qkv = row_gflop(cfg), 2 * 2 * h * h, 2 * 3 * h * h  # per row
    attention = 4 * length * h  # one query row against every key and value
    total = 0
    for step in range(gen):
        masked = gen - step
        unchanged = 0 if step == 0 else length - 1
        first = length * (row + attention) - unchanged * qkv - unchanged ** 2 * 2 * h
        last = length * key_value + masked * (row - key_value + attention)
        head = masked * 2 * (h * h + h * vocab)
        total += first + (layers - 2) * length * (row + attention) + last + head
    return total / 1e9


def matmul_floor(shapes, gflop: float):
    """A stand-in for the ideal exact runtime: a callable doing `gflop` of float32 products of
    the model's own shapes through numpy (BLAS, every core), round robin, and nothing else.
    Timed beside the decodes, it gives the exact ceiling without mixing moments of the machine."""
    rng = np.random.default_rng(0)
    operands = [(rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32))
                for m, k, n in shapes]  # (m, k), (k, n) each
    per_round = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in operands) / 1e9
    rounds = max(1, round(gflop / per_round))

    def run() -> None:
        for _ in range(rounds):
            for a, b in operands:
                a @ b
    return run


def import_time() -> float:
    code = "import time; t = time.perf_counter(); import tie_lite; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE.parent, check=True)
    return float(out.stdout)


def peak_rss(onnx_dir: Path, prompt_text: str, gen: int, threads: int, kv_cache=None,
             kv_window=None, provider: str = "cpu") -> tuple[float, float]:
    """(peak resident MB, graph MB) of a fresh process that loads the export and decodes once."""
    code = ("import sys, tie_lite; "
            f"m = tie_lite.Model.load({str(onnx_dir)!r}, threads={threads}, kv_cache={kv_cache!r}, "
            f"provider={provider!r}, "
            f"kv_window={kv_window!r}); "
            f"tie_lite.generate(m, sys.stdin.read(), tie_lite.DecodeConfig(gen_length={gen}, block_size={gen})); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], input=prompt_text, capture_output=True, text=True,
                         cwd=HERE.parent, check=True)
    graph_name = "cache.onnx" if kv_cache else "model.onnx"
    graph = sum(p.stat().st_size for p in Path(onnx_dir).iterdir() if p.name.startswith(graph_name))
    return float(out.stdout) / 1024, graph / 2 ** 20  # VmHWM (kB): ru_maxrss would count the parent's fork


def quantized_copy(onnx_dir: Path, dest: Path, model) -> Path:
    """An int8 (dynamic) copy of an export, as `python -m export --int8` writes it (first layer float32)."""
    import shutil

    from export import quantize_int8

    shutil.copytree(onnx_dir, dest)
    for graph in ("model.onnx", "cache.onnx"):
        if (dest / graph).is_file():
            quantize_int8(dest / graph, first_layer_of=model)
    return dest


def timed_decodes(engine, prompt_text: str, config, repeats: int, *references) -> tuple[list, ...]:
    """Interleaved wall times of each reference (a PyTorch loop, the matmul floor) and of
    tie-lite's decode, `repeats` each: one list per reference, then tie-lite's."""
    import tie_lite

    times = [[] for _ in range(len(references) + 1)]
    for _ in range(repeats):
        for run, record in zip([*references, lambda: tie_lite.generate(engine, prompt_text, config)], times):
            t0 = time.perf_counter()
            run()
            record.append(time.perf_counter() - t0)
    return tuple(times)


def decoded(engine, prompt_text: str, config) -> list:
    """The generated region after a greedy decode, untrimmed (as the PyTorch loops return it)."""
    import tie_lite

    canvas = tie_lite.build_canvas(engine, prompt_text, config)
    state = tie_lite.DecodeState(canvas, np.random.default_rng(0))
    tie_lite.decode(engine, state, config)
    return state.tokens[canvas.prompt_length:].tolist()


def time_variant(label: str, folder: Path, kv_cache, args, prompt_text: str, config, reference,
                 expected: list, provider: str = "cpu", ceiling: float = 0.0) -> None:
    """Time one more tie-lite variant against the PyTorch loop, interleaved; print ratio, agreement, RSS
    (and, given the exact ceiling, the ratio's share of it)."""
    import tie_lite

    window = args.kv_window if kv_cache else None
    engine = tie_lite.Model.load(folder, threads=args.threads, kv_cache=kv_cache, kv_window=window,
                                 provider=provider)
    tie_lite.generate(engine, prompt_text, tie_lite.DecodeConfig(gen_length=2, block_size=2))  # warm-up
    t_torch, t_lite = timed_decodes(engine, prompt_text, config, args.repeats, reference)
    got = decoded(engine, prompt_text, config)
    same = sum(a == b for a, b in zip(got, expected)) / len(expected)
    speedup = np.median(t_torch) / np.median(t_lite)
    share = f" ({speedup / ceiling:.0%} of the exact ceiling)" if ceiling else ""
    print(f"{label}: PyTorch loop ({args.reference}) / tie-lite: {speedup:.2f}x{share}; "
          f"generated positions equal to PyTorch's: {same:.0%} (accuracy: eval/evaluate.py on such exports)")
    rss, graph = peak_rss(folder, prompt_text, args.gen, args.threads, kv_cache, window, provider)
    print(f"{label} peak RSS {rss:.0f} MB; graph {graph:.0f} MB, so 1.3 x graph + 150 MB = {1.3 * graph + 150:.0f} MB")


def main() -> int:
    args = parse_args()
    import torch
    from transformers import AutoModelForMaskedLM

    import tie_lite

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, onnx_dir = args.model_dir, args.onnx_dir
        if hf_dir is None:
            from random_models import export_random

            onnx_dir = export_random(Path(tmp), "modernbert", args.hidden, args.layers, args.vocab,
                                     max(args.length, 128), kv_cache=args.kv_cache is not None)
            hf_dir = Path(tmp) / "hf"
        model = AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
        engine = tie_lite.Model.load(onnx_dir, threads=args.threads)
        m = engine.manifest
        text_ids = [4 + i % (m.vocab_size - 4) for i in range(args.length - args.gen)]  # past the specials
        prompt_text = engine.detokenize(np.array(text_ids))
        assert engine.encode(prompt_text).tolist() == text_ids, "prompt does not round-trip"
        config = tie_lite.DecodeConfig(gen_length=args.gen, block_size=args.gen)
        canvas = tie_lite.build_canvas(engine, prompt_text, config)  # the manifest's prompt format applied
        prompt_ids = canvas.tokens[:canvas.prompt_length].tolist()
        for loop in (torch_loop, llada_loop):
            loop(model, prompt_ids, 2, m.mask_id, m.vocab_size)  # warm-up, untimed
        tie_lite.generate(engine, prompt_text, tie_lite.DecodeConfig(gen_length=2, block_size=2))
        lean = lambda: torch_loop(model, prompt_ids, args.gen, m.mask_id, m.vocab_size)  # noqa: E731
        llada = lambda: llada_loop(model, prompt_ids, args.gen, m.mask_id, m.vocab_size)  # noqa: E731
        cfg, length = model.config, canvas.tokens.size
        shapes = model_shapes(cfg, length)
        floor = matmul_floor(shapes, exact_decode_gflop(cfg, length, args.gen))
        t_lean, t_llada, t_floor, t_lite = timed_decodes(engine, prompt_text, config, args.repeats,
                                                         lean, llada, floor)
        expected = llada()
        loops_agree = lean() == expected
        reference = llada if args.reference == "llada" else lean
        identical = decoded(engine, prompt_text, config) == expected
        per_forward = np.median(t_lite) / args.gen
        gemm = gemm_gflops(shapes + [(1024,) * 3, (2048,) * 3])
        ceiling = np.median(t_llada) / np.median(t_floor)
        speedup = np.median(t_llada) / np.median(t_lite)
        print(f"model: {hf_dir if args.model_dir else 'random ModernBERT'} hidden={cfg.hidden_size} "
              f"layers={cfg.num_hidden_layers} vocab={cfg.vocab_size}; L={args.length}, {args.gen} steps, "
              f"threads={args.threads}, repeats={args.repeats}")
        print(f"outputs token-identical: {identical} (the two PyTorch loops agree: {loops_agree})")
        print(f"PyTorch loop (LLaDA's generate, float64 softmax) / tie-lite: {speedup:.2f}x")
        print(f"PyTorch loop (lean, float32 softmax) / tie-lite: {np.median(t_lean) / np.median(t_lite):.2f}x")
        print(f"tie-lite forward: ~{forward_gflop(cfg, length) / per_forward:.1f} GFLOP/s vs float32 GEMM "
              f"{gemm:.1f} GFLOP/s on this machine (PyTorch's matmul on the model's shapes: "
              f"{gemm_gflops(shapes, use_torch=True):.1f})")
        print(f"exact ceiling: PyTorch loop (LLaDA's) / the fewest exact FLOPs as numpy matmuls: {ceiling:.2f}x "
              f"(tie-lite's {speedup:.2f}x is {speedup / ceiling:.0%} of it)")
        rss, graph = peak_rss(onnx_dir, prompt_text, args.gen, args.threads)
        print(f"peak RSS {rss:.0f} MB; graph {graph:.0f} MB, so 1.3 x graph + 150 MB = {1.3 * graph + 150:.0f} MB")
        variants = [("fp32 + K/V cache", onnx_dir, args.kv_cache)] if args.kv_cache else []
        if args.provider != "cpu":
            time_variant(f"fp32, exact, provider {args.provider}", onnx_dir, None, args, prompt_text, config,
                         reference, expected, provider=args.provider,
                         ceiling=ceiling if args.reference == "llada" else 0.0)
        if args.int8:
            int8_dir = quantized_copy(onnx_dir, Path(tmp) / "int8", model)
            variants.append(("int8", int8_dir, None))
            if args.kv_cache:
                variants.append(("int8 + K/V cache", int8_dir, args.kv_cache))
        for label, folder, kv_cache in variants:
            time_variant(label, folder, kv_cache, args, prompt_text, config, reference, expected)
        print(f"import tie_lite: {import_time():.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
