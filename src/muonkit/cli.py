"""`muonkit <command>`: the command-line entry point.

Each command lives in its own module, listed in ``COMMANDS``; a module defines
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed args).
"""

from __future__ import annotations

import argparse
import importlib

COMMANDS = [
    "muonkit.demo",
    "muonkit.experiments.compare",
    "muonkit.data.fetch",
    "muonkit.train.gpt",
    "muonkit.experiments.variants",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="muonkit", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
