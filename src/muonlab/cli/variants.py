"""`muonkit variants <study>`: the variant studies of :mod:`muonlab.experiments.variants` (an
MLP on MNIST / CIFAR-10) and, as study ``gpt``, of :mod:`muonlab.experiments.variants_gpt`
(the tiny GPT; :mod:`muonlab.cli.variants_gpt`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from ..experiments import variant_tuned, variants
from ..experiments.runs import default_threads
from ..report.variant_tuned import write_report as write_tuned_report
from . import variants_gpt
from .common import (
    MOMENTUM,
    NONNEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    add_command,
    add_muon_option_flags,
    add_tracker_arguments,
    muon_options_from_args,
    trackers_from_args,
)


def register(subparsers) -> None:
    d = variants.StudyConfig("large")
    p = add_command(
        subparsers,
        "variants",
        help="memory-saving Muon variants on an MLP (MNIST / CIFAR-10) or the tiny GPT",
        description=variants.__doc__.split("\n\n")[0],
    )
    p.add_argument("study", choices=[*variants.STUDIES, "gpt"],
                   help="which study (gpt: the tiny GPT, each optimizer tuned; it reads "
                   "--seeds, --device, --threads, --out, the tracker, --ns-* and gpt-study "
                   "flags)")
    p.add_argument("--dataset", choices=sorted(variants.DATASETS), default=d.dataset,
                   help="dataset")
    p.add_argument("--data-dir", default=None,
                   help="folder holding mnist/ or cifar-10-batches-py/ "
                   "(None: $MUONKIT_DATA, else ./data)")
    p.add_argument("--hidden", type=POSITIVE_INT, nargs="+", default=list(d.hidden),
                   help="hidden widths of the MLP")
    p.add_argument("--epochs", type=POSITIVE_INT, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=d.batch_size, help="batch size")
    p.add_argument("--lr", type=POSITIVE, default=d.lr,
                   help="LR of every Muon-family optimizer (tuned: the centre of their grids)")
    p.add_argument("--adamw-lr", type=POSITIVE, default=None,
                   help="AdamW's LR (tuned: the centre of its grid; None: 1e-3, tuned 8e-3)")
    p.add_argument("--momentum", type=MOMENTUM, default=d.momentum,
                   help="momentum of every Muon-family optimizer")
    p.add_argument("--rank", type=POSITIVE_INT, default=d.rank,
                   help="LoRA-Pre rank (large, hybrid)")
    p.add_argument("--ranks", type=POSITIVE_INT, nargs="+", default=list(d.ranks),
                   help="rank-sweep ranks")
    p.add_argument("--seeds", type=NONNEGATIVE_INT, nargs="+", default=None,
                   help=f"seeds (each arm runs once per seed; None: {' '.join(map(str, d.seeds))}"
                   ", gpt and tuned: 0 1 2; tuned: the first one chooses the LRs)")
    p.add_argument("--train-limit", type=POSITIVE_INT, default=None,
                   help="use only the first N training examples (None: all)")
    p.add_argument("--device", default=None,
                   help=f"auto (cuda if available), cpu, cuda (None: {d.device}, gpt: cpu)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None,
                   help="torch intra-op threads (per run; None: this machine's cores shared by "
                   "the --jobs; never the load, so a rerun computes the same bits)")
    p.add_argument("--out", default=None, help="output dir (None: runs/variants/<study>; "
                   "the same command continues the study there)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh, replacing the study in --out (its runs, table and figure; "
                   "not tuned, which only continues)")
    tuned = p.add_argument_group("tuned study (each LR swept, runs in their own processes)")
    tuned.add_argument("--grid-points", type=POSITIVE_INT, default=d.grid_points,
                       help="factor-2 LR grid size per optimizer")
    tuned.add_argument("--sweep-extend", type=NONNEGATIVE_INT, default=d.sweep_extend,
                       help="max points added past each edge of a grid")
    tuned.add_argument("--val-size", type=POSITIVE_INT, default=d.val_size,
                       help="training examples held out to choose the LRs")
    add_muon_option_flags(p)
    add_tracker_arguments(p, "none", "W&B group of the study's runs (None: the study's name)")
    variants_gpt.add_arguments(p)
    p.set_defaults(func=run_command)


def config_from_args(args: argparse.Namespace) -> variants.StudyConfig:
    names = {f.name for f in dataclasses.fields(variants.StudyConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.tracker is not None:
        values["trackers"] = trackers_from_args(args)
    return variants.StudyConfig(**values, muon_options=muon_options_from_args(args))


def run_tuned(cfg: variants.StudyConfig, args: argparse.Namespace) -> int:
    out = Path(cfg.out)
    if not args.report_only:
        command = "muonkit " + shlex.join(getattr(args, "argv", sys.argv[1:]))
        paths = variant_tuned.run_tuned(cfg, command)
    elif (out / "study.json").exists():  # the study's own dataset, not the --dataset flag
        dataset = json.loads((out / "study.json").read_text())["dataset"]
        paths = write_tuned_report(out, variants.DATASETS[dataset])
    else:
        raise ValueError(f"{out} holds no tuned study (no study.json)")
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


def run_command(args: argparse.Namespace) -> int:
    if args.study == "gpt":
        return variants_gpt.run_command(args)
    cfg = config_from_args(args)
    if cfg.threads is None:
        cfg = dataclasses.replace(cfg, threads=default_threads(cfg.jobs))
    if cfg.study == "tuned":
        return run_tuned(cfg, args)
    if args.report_only:
        raise ValueError("--report-only is for the tuned study")
    paths = variants.run_study(cfg)
    print(Path(paths["table"]).read_text())
    print(f"wrote {paths['table']}, {paths['figure']} and {paths['runs']}/*/metrics.jsonl")
    return 0
