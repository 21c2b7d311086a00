"""`muonkit variants gpt`: the GPT variant study (:mod:`muonlab.experiments.variants_gpt`);
its flags join those of `muonkit variants` (:mod:`muonlab.cli.variants`)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from ..experiments import horizon, variants_gpt
from ..experiments.runs import default_threads
from ..report.variants_gpt import build_report
from ..train.settings import SETTINGS, settings_of
from .common import (
    add_setting,
    add_tree_settings,
    group_of,
    muon_options_from_args,
    trackers_from_args,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags only the gpt study reads (it also reads --seeds, --device, --threads,
    --jobs, --out, --sweep-refine, the tracker flags and the --ns-* flags)."""
    d = variants_gpt.VariantGPTConfig()
    steps = dataclasses.replace(SETTINGS["steps"], help="steps per run (gpt)")
    add_setting(group_of(p, "study"), "steps", steps, d.steps)
    contenders = settings_of(variants_gpt.VariantGPTConfig)["contenders"]
    add_setting(group_of(p, "study"), "contenders", contenders, d.contenders)
    add_setting(group_of(p, "optimizer"), "qk_clip", SETTINGS["qk_clip"])
    add_tree_settings(p, ("report_only",))


def config_from_args(args: argparse.Namespace) -> variants_gpt.VariantGPTConfig:
    d = variants_gpt.VariantGPTConfig()
    return variants_gpt.VariantGPTConfig(
        out=args.out or d.out, horizons=[args.steps], seeds=list(args.seeds or d.seeds),
        contenders=list(args.contenders), device=args.device or d.device, jobs=args.jobs,
        threads=args.threads or default_threads(args.jobs),
        trackers=trackers_from_args(args) or (), wandb_project=args.wandb_project,
        wandb_run_name=args.wandb_run_name, muon_options=muon_options_from_args(args),
        qk_clip=args.qk_clip, sweep_refine=args.sweep_refine,
    )


def run_command(args: argparse.Namespace) -> int:
    if args.report_only:  # nothing checked or appended to commands.txt
        paths = build_report(args.out or variants_gpt.VariantGPTConfig.out)
    else:
        cfg = config_from_args(args)
        command = "muonkit " + shlex.join(getattr(args, "argv", sys.argv[1:]))
        out = horizon.prepare_out(cfg, command)
        horizon.Study(cfg).run_all()
        paths = build_report(out)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0
