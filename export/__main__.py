"""CLI: python -m export SOURCE OUT_DIR [options]. Its options are ExportOptions' fields (export/options.py)."""

from __future__ import annotations

import argparse
import sys

import tie_lite

from . import ExportError, export_model
from .options import add_export_options, options_from_args


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one ExportError line, not a usage block."""

    def error(self, message):
        raise ExportError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(prog="python -m export", description=__doc__, allow_abbrev=False)
    p.add_argument("source", help="Hub id or local folder of a transformers masked LM")
    p.add_argument("out_dir", help="folder to write model.onnx, tokenizer.json and tie_lite.json to")
    add_export_options(p)
    return p


QUANTIZER_OPTIONS = {"--int8": ("--int8-all-layers", "--int8-min-agreement"),  # options one quantizer alone reads
                     "--int4": ("--int4-block-size", "--int4-accuracy-level", "--int4-min-agreement")}


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed flags; ExportError for an unknown, abbreviated, repeated or inapplicable one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    given = tie_lite.refuse_repeats(argv, p, ExportError)
    for quantizer, flags in QUANTIZER_OPTIONS.items():
        for flag in flags:
            if flag in given and quantizer not in given:
                raise ExportError(f"{flag} applies with {quantizer}, which is not given")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = None
    try:
        args = parse_args(argv)
        path = export_model(args.source, args.out_dir, options_from_args(args))
    except (ExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output folder that cannot be written, a source that cannot be read
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" into {args.out_dir}" if args else ""
        print(f"error: interrupted: the export{where} did not finish", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # the runtime alone is installed
        print(f'error: python -m export needs the export extras, and {exc.name} is not installed: '
              'pip install ".[export]"', file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
