"""`muonkit <command>`: the command-line entry point.

Each command lives in its own module, listed in ``COMMANDS``; a module defines
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed args).
Errors that are the user's (:data:`muonlab.cli.common.USER_ERRORS`) print one line to stderr
and exit with code 2; ``--debug`` or ``MUONKIT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

import muonkit

from .common import DEBUG_ENV, USER_ERRORS, Parser, add_debug_flag

COMMANDS = [
    "muonlab.cli.demo",
    "muonlab.cli.compare",
    "muonlab.cli.horizon",
    "muonlab.cli.data",
    "muonlab.cli.train",
    "muonlab.cli.finetune",
    "muonlab.cli.finetune_study",
    "muonlab.cli.variants",
    "muonlab.cli.results",
]


def build_parser() -> Parser:
    parser = Parser(prog="muonkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version",
                        version=f"muonkit {muonkit.__version__} (torch {torch.__version__})")
    add_debug_flag(parser)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:  # a study's StudyInterrupted says how to continue
        if debug:
            raise
        print(f"muonkit {args.command}: {str(e) or 'interrupted'}", file=sys.stderr)
        raise SystemExit(130) from None
    except USER_ERRORS as e:
        if debug:
            raise
        lines = getattr(e, "lines", None)  # one line per item (e.g. each differing flag)
        message = " ".join(str(e).split()) or type(e).__name__
        if lines:
            message = e.head + ":\n" + "\n".join(f"  {x}" for x in lines)
        print(f"muonkit {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    raise SystemExit(main())
