"""What every ``muonkit`` command shares: the parser (one-line errors, defaults in ``--help``,
``--debug``), numeric flag types checked by :func:`muonlab.train.checks.check_number` at parse time,
the ``--ns-*`` flags of every command that trains a Muon (generated from
:class:`muonkit.MuonOptions`, checked by its own validation), and the errors that are the
user's (one line on stderr, exit code 2, no traceback).
"""

from __future__ import annotations

import argparse

from muonkit.options import MuonOptions

from ..train.checks import check_number, describe_range
from ..train.trackers import TRACKERS, parse_trackers

# Exceptions that report a bad input or environment (a missing or unreadable file, a value out
# of range, a diverging run): ``muonkit`` prints their message on one line and exits with 2.
USER_ERRORS = (ValueError, OSError, FloatingPointError, ImportError)
DEBUG_ENV = "MUONKIT_DEBUG"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: message``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except for on/off flags (their default says nothing)."""

    def _get_help_string(self, action):
        return action.help if action.nargs == 0 else super()._get_help_string(action)


def add_command(subparsers, name: str, *, help: str, description: str | None = None):
    """A subcommand parser that shows defaults in ``--help`` and takes ``--debug``."""
    p = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=DefaultsHelpFormatter,
    )
    add_debug_flag(p)
    return p


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)",
    )


def number(kind: type = float, **bounds):
    """An argparse ``type`` that parses ``kind`` and checks it like
    :func:`muonlab.train.checks.check_number` (finite, within ``bounds``: ge, gt, le, lt)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        try:
            return check_number("value", value, integer=kind is int, **bounds)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value ")) from None

    parse.__name__ = f"{kind.__name__} {describe_range(**bounds)}"
    return parse


POSITIVE_INT = number(int, ge=1)
NONNEGATIVE_INT = number(int, ge=0)
POSITIVE = number(float, gt=0)
NONNEGATIVE = number(float, ge=0)
FRACTION = number(float, ge=0, le=1)  # a ratio in [0, 1]
MOMENTUM = number(float, ge=0, lt=1)  # momentum, beta, dropout: [0, 1)


# the MuonOptions every command that trains a Muon-family optimizer takes as flags
NS_FLAG_OPTIONS = ("ns_steps", "ns_coefficients", "ns_dtype", "ns_gram", "ns_precondition")


def option_flag(name: str) -> str:
    """The flag of a MuonOptions field: ``ns_steps`` -> ``--ns-steps``."""
    return "--" + name.replace("_", "-")


def muon_option(name: str):
    """An argparse ``type``: option ``name`` from its word (:meth:`MuonOptions.from_word`),
    checked by MuonOptions' own validation; the error speaks of the flag's value."""

    def parse(text: str):
        try:
            return MuonOptions.from_word(name, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{name} ")) from None

    parse.__name__ = name
    return parse


def add_muon_option_flags(p: argparse.ArgumentParser, names=NS_FLAG_OPTIONS) -> None:
    """One flag per :class:`muonkit.MuonOptions` field in ``names`` (``--ns-steps``, ...), for
    every Muon-family optimizer the command trains: choices, default and help come from the
    field's declaration; :func:`muon_options_from_args` reads them back."""
    g = p.add_argument_group("Muon options (every Muon-family optimizer; muonkit.MuonOptions)")
    for name in names:
        declared = MuonOptions.declaration(name)
        words = declared.metadata["words"]
        g.add_argument(option_flag(name), type=muon_option(name),
                       default=MuonOptions.word_of(name, declared.default),
                       metavar="{" + ",".join(words) + "}" if words else "N",
                       help=declared.metadata["summary"].replace("`", ""))


def muon_options_from_args(args: argparse.Namespace, names=NS_FLAG_OPTIONS) -> dict:
    """{option name: value} of the flags :func:`add_muon_option_flags` added."""
    return {name: getattr(args, name) for name in names}


def add_qk_clip_flag(p: argparse.ArgumentParser, default: float | None = None) -> None:
    """``--qk-clip TAU`` (:class:`muonkit.QKClip`; every command that trains a GPT)."""
    p.add_argument("--qk-clip", type=POSITIVE, default=default, metavar="TAU",
                   help="QK-clip (MuonClip, Kimi K2): after each step, scale the query and key "
                   "rows of every attention head whose max pre-softmax logit exceeded TAU so "
                   "that it is TAU")


def tracker_list(text: str) -> list[str]:
    """An argparse ``type``: comma-separated tracker names, each one of ``TRACKERS``."""
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in TRACKERS:
            raise argparse.ArgumentTypeError(
                f"unknown tracker {name!r}; valid: {', '.join(TRACKERS)}")
    return names


def add_tracker_arguments(p: argparse.ArgumentParser, default: str, run_name: str) -> None:
    """``--tracker`` (repeatable, comma-separated; ``default`` says what none given means),
    ``--wandb-project``, ``--wandb-run-name`` (``run_name`` says what it names)."""
    p.add_argument("--tracker", type=tracker_list, action="extend", default=None,
                   metavar="NAME", help=f"experiment tracker(s) besides metrics.jsonl: "
                   f"{', '.join(TRACKERS)}; repeatable or comma-separated (default: {default})")
    p.add_argument("--wandb-project", default="muonkit", help="W&B project (--tracker wandb)")
    p.add_argument("--wandb-run-name", default=None, help=run_name)


def trackers_from_args(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The ``--tracker`` choice (None: none given, the command's default); ValueError for
    "none" combined with a tracker."""
    return None if args.tracker is None else parse_trackers(args.tracker)
