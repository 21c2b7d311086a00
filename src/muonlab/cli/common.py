"""What every ``muonkit`` command shares: the parser (one-line errors, defaults in ``--help``,
``--debug``), numeric flag types checked by :func:`muonlab.train.checks.check_number` at parse time,
the ``--ns-*`` flags of every command that trains a Muon (generated from
:class:`muonkit.MuonOptions`, checked by its own validation), and the errors that are the
user's (one line on stderr, exit code 2, no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses

from muonkit.options import MuonOptions

from ..train.checks import check_number, describe_range
from ..train.settings import SECTIONS, SETTINGS, Setting, settings_of, shown_default
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
    """Shows each option's default once: not for on/off flags and required ones (their
    default says nothing), nor where the help already states it (the config tree's flags,
    :func:`add_setting`)."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.required or "(default: " in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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


def add_setting(p, name: str, s: Setting, default=dataclasses.MISSING, *, positional=False,
                required=False, metavar=None):
    """The flag of setting ``s`` (:mod:`muonlab.train.settings`) for the config field (and
    argparse dest) ``name``: its type and bounds, choices, default (``default``, else the
    setting's) and help, which states the default once; ``positional``: an argument without
    dashes; ``required``: a flag without a default. The action keeps its setting and the
    default shown (``action.setting``, ``action.shown_default``) for the options page."""
    if default is dataclasses.MISSING:
        default = s.default
    shown = None if positional or required else shown_default(s, default)
    help_text = s.help + ("" if shown is None else f" (default: {shown})")
    kwargs: dict = {"help": help_text}
    if s.kind is bool:
        kwargs["action"] = "store_false" if default else "store_true"
    else:
        kwargs["default"] = list(default) if isinstance(default, tuple) else default
        if s.kind in (int, float):
            kwargs["type"] = number(s.kind, **s.bounds)
        if s.choices is not None:
            kwargs["choices"] = list(s.choices)
        if s.many:
            kwargs["nargs"] = "+"
    if metavar or s.metavar:
        kwargs["metavar"] = metavar or s.metavar
    if positional:
        kwargs.pop("default", None)
        action = p.add_argument(name, **kwargs)
    else:
        action = p.add_argument(s.flag_of(name), dest=name, required=required, **kwargs)
    action.setting, action.shown_default = s, "required" if required else shown
    return action


def group_of(p: argparse.ArgumentParser, section: str):
    """``p``'s argument group of ``section`` of the config tree; the groups are made on first
    use, all at once, in the tree's order (an empty one is not shown)."""
    if not hasattr(p, "section_groups"):
        p.section_groups = {name: p.add_argument_group(f"{name} settings")
                            for name in SECTIONS}
    return p.section_groups[section]


def add_settings(p: argparse.ArgumentParser, config_class, *, exclude=(), defaults=None,
                 none_means=None) -> None:
    """The flags of every field of ``config_class`` declared in the config tree
    (:func:`muonlab.train.settings.settings_of`), but ``exclude``, in field order, each in its
    section's group; ``defaults`` ({name: value}) replace the config's own defaults, and
    ``none_means`` ({name: text}) says what a None default stands for in this command."""
    config_defaults = {f.name: f.default if f.default is not dataclasses.MISSING
                       else f.default_factory() for f in dataclasses.fields(config_class)}
    for name, s in settings_of(config_class).items():
        if name in exclude:
            continue
        default = (defaults or {}).get(name, config_defaults[name])
        if name in (none_means or {}):
            s = dataclasses.replace(s, none_means=none_means[name])
        add_setting(group_of(p, s.section), name, s, default)


def add_tree_settings(p: argparse.ArgumentParser, names, defaults=None) -> None:
    """The flags of the settings ``names`` of the tree (keys of :data:`SETTINGS`; "key=name"
    adds ``SETTINGS[key]`` as the field ``name``), with the tree's defaults unless
    ``defaults`` ({name: value}) says otherwise: the flags of a command that no config
    carries (where the run goes, how it starts)."""
    for entry in names:
        key, _, name = entry.partition("=")
        s = SETTINGS[key]
        add_setting(group_of(p, s.section), name or key, s,
                    (defaults or {}).get(name or key, dataclasses.MISSING))


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
    g = group_of(p, "train")
    g.add_argument("--tracker", type=tracker_list, action="extend", default=None,
                   metavar="NAME", help=f"experiment tracker(s) besides metrics.jsonl: "
                   f"{', '.join(TRACKERS)}; repeatable or comma-separated (default: {default})")
    g.add_argument("--wandb-project", default="muonkit", help="W&B project (--tracker wandb)")
    g.add_argument("--wandb-run-name", default=None,
                   help=run_name.replace("(None: ", "(default: "))


def trackers_from_args(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The ``--tracker`` choice (None: none given, the command's default); ValueError for
    "none" combined with a tracker."""
    return None if args.tracker is None else parse_trackers(args.tracker)
