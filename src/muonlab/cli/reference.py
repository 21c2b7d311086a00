"""The command-line reference pages, generated from the parsers themselves: docs/cli.md lists
every flag of every command with its default and help as ``--help`` shows them; docs/options.md
lists the config tree (:mod:`muonlab.train.settings`) by section: each setting's flag, what it
takes, which commands take it and with which default.

``python -m muonlab.cli.reference`` rewrites both; a test fails when one is stale.
"""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path

from ..train.settings import SECTIONS

WIDTH = "100"  # argparse wraps help at $COLUMNS: fixed, so the page is the same everywhere


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers of ``parser`` by name (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@contextmanager
def fixed_width():
    """argparse wraps help at $COLUMNS: fixed while the pages are made."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def all_sections() -> list[tuple[str, argparse.ArgumentParser]]:
    """(command, its parser) for ``muonkit`` and, depth first, every subcommand."""
    from . import build_parser

    def walk(parser, name):
        out = [(name, parser)]
        for sub, child in subcommands(parser).items():
            out += walk(child, f"{name} {sub}")
        return out

    return walk(build_parser(), "muonkit")


def reference() -> str:
    """The markdown page docs/cli.md: one section per command."""
    with fixed_width():
        parts = [(command, parser.format_help()) for command, parser in all_sections()]
    lines = ["# Command-line reference", "",
             "Generated from the parsers (`python -m muonlab.cli.reference`); "
             "the same text as each command's `--help`. The settings by section, with the "
             "commands that take each: [options.md](options.md).", ""]
    for command, text in parts:
        lines += [f"## `{command}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


def options_page() -> str:
    """The markdown page docs/options.md: the config tree by section, one row per setting
    (one per meaning of a flag), with every command that takes it and its default there."""
    rows: dict[tuple, dict] = {}
    for command, parser in all_sections():
        for action in parser._actions:
            s = getattr(action, "setting", None)
            if s is None:
                continue
            flag = action.option_strings[0] if action.option_strings else action.dest
            key = (s.section, flag, s.help, s.choices)
            default = action.shown_default or ""
            row = rows.setdefault(key, {"setting": s, "defaults": {}})
            row["defaults"].setdefault(default, []).append(f"`{command.removeprefix('muonkit ')}`")
    lines = ["# Settings", "",
             "Every setting of every `muonkit` command, declared once in the config tree "
             "(`muonlab.train.settings`) from which the flags, their checks and this page are "
             "generated (`python -m muonlab.cli.reference`). A value out of range is refused "
             "at the command line and in the configs alike, naming the flag. Each command's "
             "`--help`: [cli.md](cli.md).", ""]
    for section in SECTIONS:
        lines += [f"## {section}", "", "| flag | takes | commands: default | meaning |",
                  "| --- | --- | --- | --- |"]
        for (sec, flag, help_text, _), row in rows.items():
            if sec != section:
                continue
            where = "; ".join(", ".join(commands) + (f": {default}" if default else "")
                              for default, commands in row["defaults"].items())
            text = help_text.replace("|", "\\|")
            lines.append(f"| `{flag}` | {row['setting'].describe_type()} | {where} | {text} |")
        lines.append("")
    return "\n".join(lines)


PAGES = {"cli.md": reference, "options.md": options_page}


if __name__ == "__main__":
    docs = Path(__file__).resolve().parents[3] / "docs"
    for name, page in PAGES.items():
        (docs / name).write_text(page())
        print(f"wrote {docs / name}")
