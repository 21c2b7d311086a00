"""`muonkit finetune --init-from RUN_DIR`: one GPT run that starts from a pretrained
`muonkit train` run (:mod:`muonlab.train.finetune`). Every flag of `muonkit train` applies; the
architecture and vocabulary flags default to the base's, and one that differs is refused."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.tasks import Difficulty
from ..train.finetune import BASE_FLAGS, BaseRun, Task, check_base_flags
from ..train.settings import SETTINGS
from .common import add_command, add_setting, add_tree_settings, group_of
from .train import add_run_arguments, run_command


def run_finetune(args: argparse.Namespace) -> int:
    base = BaseRun.load(args.init_from)
    given = {flag: getattr(args, flag) for flag in BASE_FLAGS}
    for flag, value in check_base_flags(given, base).items():
        setattr(args, flag, value)
    args.finetune = {"base": base, "state": args.state}
    if args.task is not None:
        difficulty = Difficulty(max_steps=args.task_max_steps, max_number=args.task_max_number)
        task = Task.make(args.task, args.task_data, args.task_seed, args.task_train,
                         args.task_test, args.task_max_tokens, difficulty)
        name = f"{task.name}-s{args.task_seed}-n{len(task.train)}.txt"
        args.data = str(task.write_training_text(Path(args.out) / "task_data" / name))
        args.finetune["task"] = task
    return run_command(args)


def register(subparsers) -> None:
    p = add_command(
        subparsers, "finetune", help="fine-tune a pretrained run (AdamW or Muon; fresh, carried "
        "or migrated optimizer state)",
        description="Fine-tune the final weights of a `muonkit train` run (--init-from its "
        "--out). Its architecture and vocabulary are kept; every evaluation also scores the "
        "base's validation set (source_val_loss: forgetting).",
    )
    kept = ("preset", "tokenizer", "block_size")  # and --rope, --untied: the base's
    add_run_arguments(p, out="runs/finetune", defaults=dict.fromkeys(kept),
                      none_means=dict.fromkeys(kept, "the base run's"))
    add_setting(group_of(p, "train"), "init_from", SETTINGS["init_from"], required=True,
                metavar="RUN_DIR")
    add_tree_settings(p, ("state", "task"))
    add_setting(group_of(p, "data"), "task_data", SETTINGS["task_data"], metavar="DIR")
    add_tree_settings(p, ("task_seed", "task_train", "task_test", "task_max_tokens",
                          "task_max_steps", "task_max_number"))
    p.set_defaults(func=run_finetune, preset=None, tokenizer=None, block_size=None, rope=None,
                   untied=None)
