"""`muonkit finetune --init-from RUN_DIR`: one GPT run that starts from a pretrained
`muonkit train` run (:mod:`muonlab.train.finetune`). Every flag of `muonkit train` applies; the
architecture and vocabulary flags default to the base's, and one that differs is refused."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..train.finetune import BASE_FLAGS, STATES, TASKS, BaseRun, Task, check_base_flags
from .common import NONNEGATIVE_INT, POSITIVE_INT, add_command
from .train import add_run_arguments, run_command


def run_finetune(args: argparse.Namespace) -> int:
    base = BaseRun.load(args.init_from)
    given = {flag: getattr(args, flag) for flag in BASE_FLAGS}
    for flag, value in check_base_flags(given, base).items():
        setattr(args, flag, value)
    args.finetune = {"base": base, "state": args.state}
    if args.task is not None:
        task = Task.make(args.task, args.task_data, args.task_seed, args.task_train,
                         args.task_test, args.task_max_tokens)
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
    add_run_arguments(p, out="runs/finetune")
    p.add_argument("--init-from", required=True, metavar="RUN_DIR",
                   help="the base run's output directory (a finished run with a checkpoint)")
    p.add_argument("--state", default="fresh", choices=STATES,
                   help="optimizer state to start from: fresh (empty), carry (the base's, same "
                   "optimizer kind), from-adamw (Muon momentum from an AdamW base's moments)")
    p.add_argument("--task", default=None, choices=TASKS,
                   help="train on a question-answering task's training problems (instead of "
                   "--data) and score greedy exact-match accuracy on its test problems at step "
                   "0 and at the end (OUT/predictions.jsonl)")
    p.add_argument("--task-data", default=None, metavar="DIR",
                   help="--task gsm8k: a directory with GSM8K's train.jsonl and test.jsonl")
    p.add_argument("--task-seed", type=NONNEGATIVE_INT, default=0,
                   help="--task arithmetic: the seed of its fixed train/test split")
    p.add_argument("--task-train", type=POSITIVE_INT, default=5000, help="training problems")
    p.add_argument("--task-test", type=POSITIVE_INT, default=500, help="test problems scored")
    p.add_argument("--task-max-tokens", type=POSITIVE_INT, default=128,
                   help="longest greedy answer, in tokens")
    p.set_defaults(func=run_finetune, preset=None, tokenizer=None, block_size=None, rope=None,
                   untied=None)
