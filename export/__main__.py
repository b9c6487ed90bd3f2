"""CLI: python -m export SOURCE OUT_DIR [options]."""

from __future__ import annotations

import argparse
import sys

from . import DEFAULT_ANSWER_MARKER, DEFAULT_INT8_MIN_AGREEMENT, DEFAULT_TOP_K, ExportError, export_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    p.add_argument("source", help="Hub id or local folder of a transformers masked LM")
    p.add_argument("out_dir", help="folder to write model.onnx, tokenizer.json and tie_lite.json to")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="top ids/probs per position")
    p.add_argument("--prompt-format", help='prompt text with "{prompt}" for the user text (default: chat template)')
    p.add_argument("--answer-marker", default=DEFAULT_ANSWER_MARKER, help="reasoning-as-infilling marker")
    p.add_argument("--name", help="display name (default: the source's last path part)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: optimum's)")
    p.add_argument("--gen-length", type=int, help="recommended gen length, used when the user gives none")
    p.add_argument("--answer-length", type=int, help="recommended answer length (reasoning-as-infilling)")
    p.add_argument("--block-size", type=int, help="recommended block size")
    p.add_argument("--stop-text", action="append", default=[],
                   help="an end marker that is text, e.g. [/Answer] for ModernBERT-chat (repeatable)")
    p.add_argument("--family", help="export family when config.json's model_type does not say it (e.g. dream)")
    p.add_argument("--int8", action="store_true", help="quantize the graph to int8 (dynamic), after validating it")
    p.add_argument("--int8-all-layers", action="store_true",
                   help="with --int8: quantize the first transformer layer too (default: it stays float32)")
    p.add_argument("--int8-min-agreement", type=float, default=DEFAULT_INT8_MIN_AGREEMENT,
                   help="least share of positions whose int8 top-1 id equals PyTorch's")
    p.add_argument("--kv-cache", action="store_true",
                   help="also write cache.onnx for the runtime's approximate --kv-cache decoding (ModernBERT, BERT)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the model repository's own Python code (only for sources you trust)")
    return p.parse_args(argv)


def _defaults(args) -> dict:
    names = ("gen_length", "answer_length", "block_size")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        path = export_model(args.source, args.out_dir, top_k=args.top_k, prompt_format=args.prompt_format,
                            answer_marker=args.answer_marker, name=args.name, opset=args.opset,
                            trust_remote_code=args.trust_remote_code, decode_defaults=_defaults(args),
                            int8=args.int8, int8_min_agreement=args.int8_min_agreement, family=args.family,
                            stop_texts=args.stop_text, kv_cache=args.kv_cache,
                            int8_first_layer_fp32=not args.int8_all_layers)
    except (ExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
