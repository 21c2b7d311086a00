"""`muonkit finetune --init-from RUN_DIR`: one GPT run that starts from a pretrained
`muonkit train` run (:mod:`muonlab.train.finetune`). Every flag of `muonkit train` applies; the
architecture and vocabulary flags default to the base's, and one that differs is refused."""

from __future__ import annotations

import argparse

from ..train.finetune import BASE_FLAGS, STATES, BaseRun, check_base_flags
from .common import add_command
from .train import add_run_arguments, run_command


def run_finetune(args: argparse.Namespace) -> int:
    base = BaseRun.load(args.init_from)
    given = {flag: getattr(args, flag) for flag in BASE_FLAGS}
    for flag, value in check_base_flags(given, base).items():
        setattr(args, flag, value)
    args.finetune = {"base": base, "state": args.state}
    return run_command(args)


def register(subparsers) -> None:
    p = add_command(
        subparsers, "finetune", help="fine-tune a pretrained run (AdamW or Muon; fresh, carried "
        "or migrated optimizer state)",
        description="Fine-tune the final weights of a `muonkit train` run (--init-from its "
        "--out). Its architecture and vocabulary are kept; every evaluation also scores the "
        "base's validation set (source_val_loss: forgetting).",
    )
    add_run_arguments(p, out="runs/finetune")
    p.add_argument("--init-from", required=True, metavar="RUN_DIR",
                   help="the base run's output directory (a finished run with a checkpoint)")
    p.add_argument("--state", default="fresh", choices=STATES,
                   help="optimizer state to start from: fresh (empty), carry (the base's, same "
                   "optimizer kind), from-adamw (Muon momentum from an AdamW base's moments)")
    p.set_defaults(func=run_finetune, preset=None, tokenizer=None, block_size=None, rope=None,
                   untied=None)
