"""`muonkit variants gpt`: the GPT variant study (:mod:`muonlab.experiments.variants_gpt`);
its flags join those of `muonkit variants` (:mod:`muonlab.cli.variants`)."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..experiments import horizon, variants_gpt
from ..experiments.runs import default_threads
from ..report.variants_gpt import build_report
from .common import (
    POSITIVE_INT,
    add_qk_clip_flag,
    muon_options_from_args,
    trackers_from_args,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags only the gpt study reads (it also reads --seeds, --device, --threads,
    --out, the tracker flags and the --ns-* flags)."""
    d = variants_gpt.VariantGPTConfig()
    g = p.add_argument_group("gpt study")
    g.add_argument("--steps", type=POSITIVE_INT, default=d.steps, help="steps per run")
    g.add_argument("--contenders", nargs="+", default=d.contenders,
                   choices=list(variants_gpt.CONTENDERS), help="optimizers to compare")
    g.add_argument("--jobs", type=POSITIVE_INT, default=1, help="runs at once")
    add_qk_clip_flag(g)
    g.add_argument("--report-only", action="store_true",
                   help="only redraw the report of --out (other flags are ignored)")


def config_from_args(args: argparse.Namespace) -> variants_gpt.VariantGPTConfig:
    d = variants_gpt.VariantGPTConfig()
    return variants_gpt.VariantGPTConfig(
        out=args.out or d.out, horizons=[args.steps], seeds=list(args.seeds or d.seeds),
        contenders=list(args.contenders), device=args.device or d.device, jobs=args.jobs,
        threads=args.threads or default_threads(args.jobs),
        trackers=trackers_from_args(args) or (), wandb_project=args.wandb_project,
        wandb_run_name=args.wandb_run_name, muon_options=muon_options_from_args(args),
        qk_clip=args.qk_clip,
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
