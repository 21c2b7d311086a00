"""`muonkit compare` and `muonkit report`: AdamW vs the Muon hybrid
(:mod:`muonlab.experiments.compare`) from command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import shlex

from ..experiments import compare
from ..report.compare import build_compare_report
from .common import add_command, add_settings
from .train import add_gpt_arguments
from .train import config_from_args as gpt_config_from_args


def config_from_args(args: argparse.Namespace) -> compare.CompareConfig:
    own = {f.name for f in dataclasses.fields(compare.CompareConfig)} - {"gpt", "command"}
    command = "muonkit " + shlex.join(args.argv) if hasattr(args, "argv") else None
    return compare.CompareConfig(gpt=gpt_config_from_args(args), command=command,
                                 **{k: getattr(args, k) for k in own})


def run_command(args: argparse.Namespace) -> int:
    paths = compare.run_compare(config_from_args(args))
    print(f"report: {paths['report']}\ncurves: {paths['curves']}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    paths = build_compare_report(args.dir)
    print(f"report: {paths['report']}\ncurves: {paths['curves']}")
    return 0


def register(subparsers) -> None:
    p = add_command(
        subparsers, "compare", help="AdamW vs the Muon hybrid on the same GPT, data and budget",
        description=compare.__doc__.split("\n\n")[0],
    )
    add_settings(p, compare.CompareConfig)
    add_gpt_arguments(p, exclude=("threads", "progress"))  # each run: --threads, no bar
    p.set_defaults(func=run_command)

    r = add_command(subparsers, "report", help="redraw a compare directory's report and plots")
    r.add_argument("dir", help="output directory of `muonkit compare`")
    r.set_defaults(func=report_command)
