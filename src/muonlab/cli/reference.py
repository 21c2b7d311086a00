"""The command-line reference page (docs/cli.md), generated from the parsers themselves, so the
page lists every flag of every command with its default and help as ``--help`` shows them.

``python -m muonlab.cli.reference > docs/cli.md`` rewrites it; a test fails when it is stale.
"""

from __future__ import annotations

import argparse
import os

WIDTH = "100"  # argparse wraps help at $COLUMNS: fixed, so the page is the same everywhere


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers of ``parser`` by name (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def sections(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, str]]:
    """(command, its --help text) for ``parser`` and, depth first, every subcommand."""
    out = [(name, parser.format_help())]
    for sub, child in subcommands(parser).items():
        out += sections(child, f"{name} {sub}")
    return out


def reference() -> str:
    """The markdown page: one section per command."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        from . import build_parser

        parts = sections(build_parser(), "muonkit")
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    lines = ["# Command-line reference", "",
             "Generated from the parsers (`python -m muonlab.cli.reference > docs/cli.md`); "
             "the same text as each command's `--help`.", ""]
    for command, text in parts:
        lines += [f"## `{command}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
