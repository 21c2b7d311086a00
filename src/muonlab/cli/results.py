"""`muonkit results pack DIR`: pack a study's finished runs for committing
(:func:`muonlab.report.records.pack_study`: each ``*.jsonl`` of a finished run becomes
``*.jsonl.xz``, which every report reads as it read the plain file)."""

from __future__ import annotations

import argparse

from ..report.records import THINNED_FIELDS, pack_study
from .common import add_command


def pack_command(args: argparse.Namespace) -> int:
    result = pack_study(args.dir, thin=args.thin)
    print(f"packed {len(result.packed)} finished runs under {args.dir}: "
          f"{result.bytes_before:,} -> {result.bytes_after:,} bytes"
          + (f"; {len(result.already)} were packed already" if result.already else ""))
    for run_dir in result.unfinished:
        print(f"left as is (not finished): {run_dir}")
    return 0


def register(subparsers) -> None:
    p = add_command(subparsers, "results", help="store finished runs for committing (pack)")
    sub = p.add_subparsers(dest="results_command", required=True)
    pack = add_command(
        sub, "pack", help="compress the records of finished runs (.jsonl -> .jsonl.xz)",
        description="Compress every finished run's .jsonl records under DIR to .jsonl.xz "
                    "(a run not finished, e.g. still training, is left as it is; packing again "
                    "changes nothing). Reports, and a study continued, read them as before; "
                    "`unxz FILE.jsonl.xz` gives a file back.")
    pack.add_argument("dir", help="a study's output directory (or one run's)")
    pack.add_argument("--thin", action="store_true",
                      help="also leave out of every train record but the last the fields no "
                           f"report reads ({', '.join(THINNED_FIELDS)}: the step's timing, "
                           "which the val records and the summary keep, and what the config "
                           "gives); step, loss and grad_norm stay (about 40%% smaller)")
    pack.set_defaults(func=pack_command)
