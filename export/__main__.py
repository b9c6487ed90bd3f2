"""CLI: python -m export SOURCE OUT_DIR [options]. Its options are ExportOptions' fields (export/options.py)."""

from __future__ import annotations

import argparse
import sys

from . import ExportError, export_model
from .options import add_export_options, options_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    p.add_argument("source", help="Hub id or local folder of a transformers masked LM")
    p.add_argument("out_dir", help="folder to write model.onnx, tokenizer.json and tie_lite.json to")
    add_export_options(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        path = export_model(args.source, args.out_dir, options_from_args(args))
    except (ExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # the runtime alone is installed
        print(f'error: python -m export needs the export extras, and {exc.name} is not installed: '
              'pip install ".[export]"', file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
