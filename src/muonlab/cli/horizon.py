"""`muonkit horizon`: the training-length study of :mod:`muonlab.experiments.horizon` from
command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from ..experiments import horizon
from ..report.horizon import build_horizon_report
from ..train.settings import settings_of
from .common import (
    add_command,
    add_muon_option_flags,
    add_setting,
    add_settings,
    add_tracker_arguments,
    add_tree_settings,
    group_of,
    muon_options_from_args,
    trackers_from_args,
)

# the list flags that also take comma-separated values (``--tokens-per-param 2,5,20``)
COMMA_LISTS = ("tokens_per_param", "wd_grid", "beta2_grid")


def comma_separated(parse):
    """An argparse ``type``: the values ``parse`` reads, separated by commas."""
    def values(text: str) -> list:
        return [parse(part) for part in text.split(",") if part.strip()]
    return values


def config_from_args(args: argparse.Namespace) -> horizon.HorizonConfig:
    names = {f.name for f in dataclasses.fields(horizon.HorizonConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    for name in COMMA_LISTS:
        if values[name] is not None:
            values[name] = [v for part in values[name] for v in part]
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
    p = add_command(
        subparsers, "horizon",
        help="AdamW vs Muon variants at several training lengths, each tuned",
        description=horizon.__doc__.split("\n\n")[0],
    )
    d = horizon.HorizonConfig()
    declared = settings_of(horizon.HorizonConfig)
    lengths = group_of(p, "study").add_mutually_exclusive_group()
    add_setting(lengths, "horizons", declared["horizons"], d.horizons)
    lists = [add_setting(lengths, "tokens_per_param", declared["tokens_per_param"], None,
                         metavar="T[,T...]")]
    add_settings(p, horizon.HorizonConfig,
                 exclude=(*horizon.HorizonConfig.NOT_FLAGS, "horizons", *COMMA_LISTS))
    lists += [add_setting(group_of(p, "study"), name, declared[name])
              for name in COMMA_LISTS[1:]]
    for action in lists:
        action.type = comma_separated(action.type)
    add_muon_option_flags(p)
    add_tracker_arguments(p, "none", "W&B group of the study's runs (None: the name of --out)")
    add_tree_settings(p, ("plan", "report_only"))
    p.set_defaults(func=run_command)
