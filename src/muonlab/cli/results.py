"""`muonkit results pack DIR`: pack a study's finished runs for committing
(:func:`muonlab.report.records.pack_study`: each ``*.jsonl`` of a finished run, and the
study's own ``runs.jsonl`` and ``task/test.jsonl``, becomes ``*.jsonl.xz``, which every
report reads as it read the plain file). `muonkit results verdicts
[--check] [FILE ...]`: rewrite the verdict blocks of the README and the study pages from the
committed records (:mod:`muonlab.report.verdicts`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..report import verdicts
from ..report.records import THINNED_FIELDS, pack_study
from .common import add_command


def pack_command(args: argparse.Namespace) -> int:
    result = pack_study(args.dir, thin=args.thin)
    study = "".join(f" and its {p.relative_to(args.dir).as_posix()}" for p in result.study_files)
    print(f"packed {len(result.packed)} finished runs under {args.dir}{study}: "
          f"{result.bytes_before:,} -> {result.bytes_after:,} bytes"
          + (f"; {len(result.already)} were packed already" if result.already else ""))
    for run_dir in result.unfinished:
        print(f"left as is (not finished): {run_dir}")
    return 0


def verdicts_command(args: argparse.Namespace) -> int:
    files = [Path(f) for f in args.files] or [Path("README.md"),
                                              *sorted(Path("docs/studies").glob("*.md"))]
    missing = [str(f) for f in [*files, Path(args.results)] if not f.exists()]
    if missing:
        raise ValueError(f"not found: {', '.join(missing)} (run from the repository root or "
                         "name the files and --results)")
    texts = {f: f.read_text() for f in files}
    blocks = verdicts.generate([n for t in texts.values() for n in verdicts.block_names(t)],
                               Path(args.results))
    stale = 0
    for f, text in texts.items():
        names = verdicts.stale_blocks(text, blocks)
        for name in names:
            print(f"{f}: verdict block {name} {'is stale' if args.check else 'rewritten'}")
        stale += len(names)
        if names and not args.check:
            f.write_text(verdicts.render(text, blocks))
    if args.check and stale:
        print(f"{stale} stale verdict block(s): run `muonkit results verdicts`", file=sys.stderr)
        return 1
    print(f"{len(blocks)} verdict block(s) checked in {len(files)} file(s)")
    return 0


def register(subparsers) -> None:
    p = add_command(subparsers, "results",
                    help="store finished runs for committing (pack), regenerate the verdicts")
    sub = p.add_subparsers(dest="results_command", required=True)
    pack = add_command(
        sub, "pack", help="compress the records of finished runs (.jsonl -> .jsonl.xz)",
        description="Compress every finished run's .jsonl records under DIR to .jsonl.xz, "
                    "and DIR's own runs.jsonl and task/test.jsonl (a fine-tuning study's) "
                    "(a run not finished, e.g. still training, is left as it is; packing again "
                    "changes nothing). Reports, and a study continued, read them as before; "
                    "`unxz FILE.jsonl.xz` gives a file back.")
    pack.add_argument("dir", help="a study's output directory (or one run's)")
    pack.add_argument("--thin", action="store_true",
                      help="also leave out of every train record but the last the fields no "
                           f"report reads ({', '.join(THINNED_FIELDS)}: the step's timing, "
                           "which the val records and the summary keep, and what the config "
                           "gives); step, loss and grad_norm stay (about 40%% smaller); "
                           "and out of a fine-tuning run's predictions the questions its "
                           "study's task/test.jsonl holds")
    pack.set_defaults(func=pack_command)
    ver = add_command(
        sub, "verdicts", help="rewrite the pages' verdict blocks from the committed records",
        description="Rewrite the text of every `<!-- verdict:NAME -->` block in FILEs (default: "
                    "README.md and docs/studies/*.md) from the run records under --results, "
                    "through the statistics layer; with --check only list the stale blocks "
                    "(exit 1 if any).")
    ver.add_argument("files", nargs="*", metavar="FILE", help="pages holding verdict blocks")
    ver.add_argument("--results", default="docs/results",
                     help="the committed studies' folder (default: %(default)s)")
    ver.add_argument("--check", action="store_true",
                     help="change nothing; exit 1 when a block differs from the records")
    ver.set_defaults(func=verdicts_command)
