"""`muonkit finetune-study`: the fine-tuning study of :mod:`muonlab.experiments.finetune_study`
from command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from ..experiments import finetune_study as study
from ..models.gpt import PRESETS
from ..report.finetune import build_finetune_report
from .common import FRACTION, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, add_command


def config_from_args(args: argparse.Namespace) -> study.FinetuneStudyConfig:
    names = {f.name for f in dataclasses.fields(study.FinetuneStudyConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if args.quick:  # its sizes, where the flag was left at its default
        default = study.FinetuneStudyConfig()
        values.update({k: v for k, v in study.QUICK.items()
                       if values.get(k, getattr(default, k)) == getattr(default, k)})
    return study.FinetuneStudyConfig(**values)


def run_command(args: argparse.Namespace) -> int:
    if not args.report_only:  # (--report-only: nothing checked, nothing appended)
        cfg = config_from_args(args)
        study.prepare_out(cfg, "muonkit " + shlex.join(getattr(args, "argv", sys.argv[1:])))
        study.FinetuneStudy(cfg).run_all()
    paths = build_finetune_report(args.out)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


def register(subparsers) -> None:
    d = study.FinetuneStudyConfig()
    p = add_command(
        subparsers, "finetune-study",
        help="fine-tune an AdamW- and a Muon-pretrained base with AdamW, Muon and LoRA arms",
        description=study.__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", default=d.out, help="study directory (a rerun continues it)")
    p.add_argument("--data", default=d.data, help="pretraining corpus: 'tinyshakespeare' or a "
                   "text file (byte tokenizer; its sha256 is recorded)")
    p.add_argument("--arms", nargs="+", default=d.arms, choices=list(study.ARMS),
                   help="fine-tuning setups (adamw always runs: the hybrids take its LR)")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS), help="GPT size")
    p.add_argument("--block-size", type=POSITIVE_INT, default=d.block_size,
                   help="context length, in bytes")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=d.batch_size,
                   help="sequences per step")
    p.add_argument("--base-steps", type=POSITIVE_INT, default=d.base_steps,
                   help="pretraining steps of each base")
    p.add_argument("--base-adamw-lr", type=POSITIVE, default=d.base_adamw_lr,
                   help="centre of the AdamW base's LR sweep")
    p.add_argument("--base-muon-lr", type=POSITIVE, default=d.base_muon_lr,
                   help="centre of the Muon base's LR sweep (its --muon-lr)")
    p.add_argument("--steps", type=POSITIVE_INT, default=d.steps, help="fine-tuning steps")
    p.add_argument("--warmup-frac", type=FRACTION, default=d.warmup_frac,
                   help="LR warmup, as a fraction of a run")
    p.add_argument("--evals-per-run", type=POSITIVE_INT, default=d.evals_per_run,
                   help="validation evaluations per run")
    p.add_argument("--eval-batches", type=POSITIVE_INT, default=d.eval_batches,
                   help="fixed validation batches")
    p.add_argument("--task-seed", type=NONNEGATIVE_INT, default=d.task_seed,
                   help="seed of the word problems' fixed train/test split")
    p.add_argument("--task-train", type=POSITIVE_INT, default=d.task_train,
                   help="training problems")
    p.add_argument("--task-test", type=POSITIVE_INT, default=d.task_test, help="test problems")
    p.add_argument("--task-max-steps", type=POSITIVE_INT, default=d.task_max_steps,
                   help="most reasoning steps of a problem")
    p.add_argument("--task-max-tokens", type=POSITIVE_INT, default=d.task_max_tokens,
                   help="longest greedy answer, in tokens")
    p.add_argument("--tune-seed", type=NONNEGATIVE_INT, default=d.tune_seed,
                   help="seed of the LR sweeps")
    p.add_argument("--report-seeds", type=NONNEGATIVE_INT, nargs="+", default=d.report_seeds,
                   help="seeds trained at each arm's chosen LR (the reported results)")
    p.add_argument("--grid-points", type=POSITIVE_INT, default=d.grid_points,
                   help="factor-2 LR grid size of every sweep")
    p.add_argument("--sweep-extend", type=NONNEGATIVE_INT, default=d.sweep_extend,
                   help="max points added past each edge of a grid")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N")
    p.add_argument("--jobs", type=POSITIVE_INT, default=d.jobs, help="runs at once")
    p.add_argument("--threads", type=POSITIVE_INT, default=d.threads,
                   help="torch threads per run")
    p.add_argument("--quick", action="store_true",
                   help="a minutes-long smoke study: a 1-layer model, few steps and problems "
                   "(its sizes replace those of the size flags left at their defaults)")
    p.add_argument("--report-only", action="store_true",
                   help="only redraw the report of --out (other flags are ignored)")
    p.set_defaults(func=run_command)
