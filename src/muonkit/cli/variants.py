"""`muonkit variants <study>`: the variant studies of :mod:`muonkit.experiments.variants` (an
MLP on MNIST / CIFAR-10) and, as study ``gpt``, of :mod:`muonkit.experiments.variants_gpt`
(the tiny GPT; :mod:`muonkit.cli.variants_gpt`)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..experiments import variants
from ..experiments.runs import default_threads
from . import variants_gpt
from .common import (
    MOMENTUM,
    NONNEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    add_command,
    add_tracker_arguments,
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
                   "--seeds, --device, --threads, --out, the tracker flags and the gpt-study "
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
    p.add_argument("--lr", type=POSITIVE, default=d.lr, help="LR of every Muon-family optimizer")
    p.add_argument("--adamw-lr", type=POSITIVE, default=d.adamw_lr, help="AdamW's LR")
    p.add_argument("--momentum", type=MOMENTUM, default=d.momentum,
                   help="momentum of every Muon-family optimizer")
    p.add_argument("--rank", type=POSITIVE_INT, default=d.rank,
                   help="LoRA-Pre rank (large, hybrid)")
    p.add_argument("--ranks", type=POSITIVE_INT, nargs="+", default=list(d.ranks),
                   help="rank-sweep ranks")
    p.add_argument("--seeds", type=NONNEGATIVE_INT, nargs="+", default=None,
                   help=f"seeds (each arm runs once per seed; None: {' '.join(map(str, d.seeds))}"
                   ", gpt: 0 1 2)")
    p.add_argument("--train-limit", type=POSITIVE_INT, default=None,
                   help="use only the first N training examples (None: all)")
    p.add_argument("--device", default=None,
                   help=f"auto (cuda if available), cpu, cuda (None: {d.device}, gpt: cpu)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None,
                   help="torch intra-op threads (None: the cores the 1-minute load leaves "
                   "free)")
    p.add_argument("--out", default=None, help="output dir (None: runs/variants/<study>; gpt: "
                   "a rerun continues it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the study already in --out (its runs, table and figure)")
    add_tracker_arguments(p, "none", "W&B group of the study's runs (None: the study's name)")
    variants_gpt.add_arguments(p)
    p.set_defaults(func=run_command)


def config_from_args(args: argparse.Namespace) -> variants.StudyConfig:
    names = {f.name for f in dataclasses.fields(variants.StudyConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.tracker is not None:
        values["trackers"] = trackers_from_args(args)
    return variants.StudyConfig(**values)


def run_command(args: argparse.Namespace) -> int:
    if args.study == "gpt":
        return variants_gpt.run_command(args)
    cfg = config_from_args(args)
    if cfg.threads is None:
        cfg = dataclasses.replace(cfg, threads=default_threads())
    paths = variants.run_study(cfg)
    print(Path(paths["table"]).read_text())
    print(f"wrote {paths['table']}, {paths['figure']} and {paths['runs']}/*/metrics.jsonl")
    return 0
