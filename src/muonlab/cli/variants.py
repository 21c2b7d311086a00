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
from ..train.settings import SETTINGS
from . import variants_gpt
from .common import (
    add_command,
    add_muon_option_flags,
    add_setting,
    add_settings,
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
    add_setting(p, "study", dataclasses.replace(
        SETTINGS["study"], choices=(*variants.STUDIES, "gpt"),
        help="which study (gpt: the tiny GPT, each optimizer tuned; it reads --seeds, --device, "
        "--threads, --jobs, --out, --sweep-refine, the tracker, --ns-* and gpt-study flags)"),
        positional=True)
    # None: the study's own default (the gpt study's are VariantGPTConfig's)
    add_settings(p, variants.StudyConfig, exclude=("study",), none_means={
        "seeds": f"{' '.join(map(str, d.seeds))}; gpt and tuned: 0 1 2",
        "device": f"{d.device}; gpt: cpu", "out": "runs/variants/<study>"},
        defaults={"device": None})
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
