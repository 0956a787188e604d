"""The `qtts` command: speak, design, clone, list voices, make fixture checkpoints, serve, bench.

Every failure a user can cause ends in one line on stderr and exit code 2; Ctrl-C ends quietly
with 130 and leaves no half-written file.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import QttsError
from .parser import build_parser

INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args) or 0
    except KeyboardInterrupt:
        return INTERRUPTED
    except (QttsError, ValueError) as exc:
        print(f"qtts: error: {exc}", file=sys.stderr)
    except OSError as exc:  # a full disk, a read-only file system, a permission taken away mid-run
        where = f": {exc.filename}" if exc.filename else ""
        print(f"qtts: error: {exc.strerror or exc}{where}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int | None:
    from . import checks, commands

    if getattr(args, "device", None) is not None:
        checks.device(args.device)
    if args.command in ("speak", "design", "clone"):
        if args.input_file is None:
            from . import speak

            if args.out_dir is not None:
                raise QttsError("--out-dir is for --input-file; give --out for one text")
            if args.text is not None and args.text_stdin:
                raise QttsError("give either a text or --text-stdin, not both")
            if args.text is None and not args.text_stdin:
                raise QttsError(f"give the text to speak: qtts {args.command} \"Hello.\" (or --input-file FILE)")
            return speak.run(args)
        from . import batch

        if args.text is not None or args.text_stdin:
            raise QttsError("give either a text or --input-file, not both (nor --text-stdin)")
        return batch.run(args)
    if args.command == "serve":
        from ..server.cli import run_serve

        return run_serve(args)
    if args.command == "eval":
        from ..eval import run_eval

        return run_eval(args)
    return {"voices": commands.voices, "fixture": commands.fixture, "bench": commands.bench}[args.command](args)

