"""`muonkit compare` and `muonkit report`: AdamW vs the Muon hybrid
(:mod:`muonlab.experiments.compare`) from command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import shlex

from muonkit.registry import OPTIMIZER_NAMES

from ..experiments import compare
from ..report.compare import build_compare_report
from .common import NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, add_command
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
    d = compare.CompareConfig()
    p = add_command(
        subparsers, "compare", help="AdamW vs the Muon hybrid on the same GPT, data and budget",
        description=compare.__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", default=d.out, help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier experiment in --out")
    p.add_argument("--seeds", type=NONNEGATIVE_INT, nargs="+", default=d.seeds,
                   help="seeds (init and batch order); every optimizer trains once per seed")
    p.add_argument("--optimizers", nargs="+", default=d.optimizers, choices=OPTIMIZER_NAMES,
                   help="optimizers to compare")
    p.add_argument("--lr-sweep", action="store_true",
                   help="tune each optimizer's LR on shorter runs first")
    p.add_argument("--sweep-steps", type=POSITIVE_INT, default=None,
                   help="steps of a sweep run (None: --steps / 4)")
    p.add_argument("--adamw-lrs", type=POSITIVE, nargs="+", default=d.adamw_lrs,
                   help="AdamW LR grid (factor-2 spaced)")
    p.add_argument("--muon-lrs", type=POSITIVE, nargs="+", default=d.muon_lrs,
                   help="the hybrid's Muon (matrix) LR grid (factor-2 spaced)")
    p.add_argument("--aux-lr", type=POSITIVE, default=None,
                   help="LR of the hybrid's AdamW groups (None: AdamW's, the swept one "
                        "with --lr-sweep)")
    p.add_argument("--aux-lrs", type=POSITIVE, nargs="+", default=None,
                   help="also sweep the aux LR over this grid (at the chosen Muon LR)")
    p.add_argument("--sweep-extend", type=NONNEGATIVE_INT, default=d.sweep_extend,
                   help="max points added beyond each edge when the best LR sits there")
    p.add_argument("--sweep-full-topk", type=NONNEGATIVE_INT, default=d.sweep_full_topk,
                   help="rerun the best K settings at full length and choose from those")
    p.add_argument("--threads", type=POSITIVE_INT, default=None,
                   help="torch threads per run (None: this machine's cores divided by --jobs; "
                        "never the load, so a rerun computes the same bits)")
    p.add_argument("--jobs", type=POSITIVE_INT, default=d.jobs, help="runs at once")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="run in this process (no progress lines; peak memory is then the "
                        "max so far)")
    add_gpt_arguments(p, progress=False)
    p.set_defaults(func=run_command)

    r = add_command(subparsers, "report", help="redraw a compare directory's report and plots")
    r.add_argument("dir", help="output directory of `muonkit compare`")
    r.set_defaults(func=report_command)
