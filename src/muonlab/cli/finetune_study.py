"""`muonkit finetune-study`: the fine-tuning study of :mod:`muonlab.experiments.finetune_study`
from command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from ..experiments import finetune_study as study
from ..report.finetune import build_finetune_report
from .common import (
    add_command,
    add_muon_option_flags,
    add_settings,
    add_tree_settings,
    muon_options_from_args,
)


def config_from_args(args: argparse.Namespace) -> study.FinetuneStudyConfig:
    names = {f.name for f in dataclasses.fields(study.FinetuneStudyConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if args.quick:  # its sizes, where the flag was left at its default
        default = study.FinetuneStudyConfig()
        values.update({k: v for k, v in study.QUICK.items()
                       if values.get(k, getattr(default, k)) == getattr(default, k)})
    return study.FinetuneStudyConfig(**values, muon_options=muon_options_from_args(args))


def run_command(args: argparse.Namespace) -> int:
    if not args.report_only:  # (--report-only: nothing checked, nothing appended)
        cfg = config_from_args(args)
        study.prepare_out(cfg, "muonkit " + shlex.join(getattr(args, "argv", sys.argv[1:])))
        study.FinetuneStudy(cfg).run_all()
    paths = build_finetune_report(args.out)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


def register(subparsers) -> None:
    p = add_command(
        subparsers, "finetune-study",
        help="fine-tune an AdamW- and a Muon-pretrained base with AdamW, Muon and LoRA arms",
        description=study.__doc__.split("\n\n")[0],
    )
    add_settings(p, study.FinetuneStudyConfig)
    add_muon_option_flags(p)
    add_tree_settings(p, ("quick", "report_only"))
    p.set_defaults(func=run_command)
