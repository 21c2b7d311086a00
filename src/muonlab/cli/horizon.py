"""`muonkit horizon`: the training-length study of :mod:`muonlab.experiments.horizon` from
command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from ..experiments import horizon
from ..models.gpt import PRESETS
from ..report.horizon import build_horizon_report
from .common import (
    NONNEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    add_command,
    add_muon_option_flags,
    add_qk_clip_flag,
    add_tracker_arguments,
    muon_options_from_args,
    trackers_from_args,
)


def tokens_per_param_list(text: str) -> list[float]:
    """``--tokens-per-param 2,5,20``: positive numbers, comma-separated."""
    return [POSITIVE(part) for part in text.split(",") if part.strip()]


def config_from_args(args: argparse.Namespace) -> horizon.HorizonConfig:
    names = {f.name for f in dataclasses.fields(horizon.HorizonConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if args.tokens_per_param is not None:
        values["tokens_per_param"] = [t for part in args.tokens_per_param for t in part]
    if args.tracker is not None:
        values["trackers"] = trackers_from_args(args)
    return horizon.HorizonConfig(**values, muon_options=muon_options_from_args(args))


def run_command(args: argparse.Namespace) -> int:
    if args.report_only:  # no settings to check, nothing appended to commands.txt
        paths = build_horizon_report(args.out)
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    cfg = config_from_args(args)
    if args.plan:  # nothing is written
        print(horizon.plan(cfg))
        return 0
    out = horizon.prepare_out(cfg, "muonkit " + shlex.join(getattr(args, "argv", sys.argv[1:])))
    cells = horizon.planned_cells(cfg)
    print(f"{out}: {sum(c.tune + c.report for c in cells)} runs (more where a sweep extends) at "
          f"{cfg.horizons} steps; muonkit horizon --plan estimates their time")
    horizon.Study(cfg).run_all()
    paths = build_horizon_report(out)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


def register(subparsers) -> None:
    d = horizon.HorizonConfig()
    p = add_command(
        subparsers, "horizon",
        help="AdamW vs Muon variants at several training lengths, each tuned",
        description=horizon.__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", default=d.out, help="study directory (a rerun continues it)")
    lengths = p.add_mutually_exclusive_group()
    lengths.add_argument("--horizons", type=POSITIVE_INT, nargs="+", default=d.horizons,
                         help="steps per run")
    lengths.add_argument("--tokens-per-param", type=tokens_per_param_list, nargs="+",
                         default=None, metavar="T[,T...]",
                         help="horizons as training tokens per model parameter, e.g. "
                         "2,5,20,50,200 (steps = T x parameters / (batch x block size))")
    p.add_argument("--tune-seed", type=NONNEGATIVE_INT, default=d.tune_seed,
                   help="the seed of the LR sweeps (not reported)")
    p.add_argument("--seeds", type=NONNEGATIVE_INT, nargs="+", default=d.seeds,
                   help="report seeds, run at each chosen LR")
    p.add_argument("--contenders", nargs="+", default=d.contenders,
                   choices=list(horizon.CONTENDERS), help="optimizer settings to compare")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS), help="GPT size")
    p.add_argument("--data", default=d.data, help="'tinyshakespeare', a text file, or a dir "
                   "with train.bin/val.bin")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=d.batch_size,
                   help="sequences per step")
    p.add_argument("--block-size", type=POSITIVE_INT, default=d.block_size,
                   help="context length (None: the preset's)")
    p.add_argument("--eval-batches", type=POSITIVE_INT, default=d.eval_batches,
                   help="fixed val batches")
    p.add_argument("--evals-per-run", type=POSITIVE_INT, default=d.evals_per_run,
                   help="val loss evaluations per run")
    p.add_argument("--grid-points", type=POSITIVE_INT, default=d.grid_points,
                   help="factor-2 LR grid size around the previous horizon's best")
    p.add_argument("--sweep-extend", type=NONNEGATIVE_INT, default=d.sweep_extend,
                   help="max points added past each edge of a grid")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N")
    p.add_argument("--jobs", type=POSITIVE_INT, default=d.jobs, help="runs at once")
    p.add_argument("--threads", type=POSITIVE_INT, default=d.threads,
                   help="torch threads per run")
    add_qk_clip_flag(p, d.qk_clip)
    add_muon_option_flags(p)
    add_tracker_arguments(p, "none", "W&B group of the study's runs (None: the name of --out)")
    p.add_argument("--plan", action="store_true",
                   help="print the runs and their estimated CPU time (a few steps of each "
                   "optimizer timed here), then stop; nothing is written")
    p.add_argument("--report-only", action="store_true",
                   help="only redraw the report of --out (other flags are ignored)")
    p.set_defaults(func=run_command)
