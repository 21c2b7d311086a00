"""`muonkit train`: one GPT run (:func:`muonlab.train.gpt.train_gpt`) from command-line flags.

``add_gpt_arguments`` / ``config_from_args`` are the flag <-> :class:`GPTRunConfig` pair that
every GPT command (``train``, ``compare``) shares.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

import torch

from muonkit.distributed.env import (
    TORCHRUN_VARS,
    compute_cleanup,
    compute_init,
    is_distributed,
)
from muonkit.registry import check_parallel

from ..experiments.runs import default_threads
from ..train.config import TrainConfig, resume_may_differ
from ..train.files import RunComplete, setting_name
from ..train.gpt import FLAG_NAMES, GPTRunConfig, sample_text, train_gpt
from ..train.loop import TrainingInterrupted
from ..train.settings import SETTINGS
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

# the flags a resume may change: GPTRunConfig's fields marked may_differ_on_resume, and the
# run's own flags that cannot change its result
FLAGS_FREE_ON_RESUME = (
    *(setting_name(name, FLAG_NAMES) for name in resume_may_differ(GPTRunConfig)),
    "--checkpoint-every", "--sample", "--no-tensorboard",
)
RESUME_HELP = ("continue the run in OUT from OUT/ckpt.pt; every flag that changes its result "
               "must equal the run's, else it is refused (one line per differing flag). These "
               f"may differ: {', '.join(FLAGS_FREE_ON_RESUME)} (a larger --steps trains on, the "
               "LR schedule then spanning it)")


def add_gpt_arguments(p: argparse.ArgumentParser, exclude=(), **defaults) -> None:
    """Model, data, loop and optimizer flags of :class:`GPTRunConfig` (``config_from_args``
    reads them back), generated from the config tree, but ``exclude`` (fields a command sets
    otherwise), the tracker flags, ``--no-tensorboard`` and the ``--ns-*`` flags; ``defaults``:
    the ``defaults`` and ``none_means`` of :func:`muonlab.cli.common.add_settings`."""
    add_settings(p, GPTRunConfig, exclude=exclude, **defaults)
    add_tracker_arguments(p, "tensorboard when installed",
                          "W&B run name (None: the run's name; compare: the runs' group)")
    group_of(p, "train").add_argument("--no-tensorboard", action="store_true",
                   help="leave TensorBoard out of the trackers (the older spelling of "
                   "--tracker none, kept so recorded commands still run)")
    add_muon_option_flags(p)


def config_from_args(args: argparse.Namespace) -> GPTRunConfig:
    """The :class:`GPTRunConfig` of flags added by :func:`add_gpt_arguments`."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(GPTRunConfig)
        if hasattr(args, f.name)
    }
    values.setdefault("progress", False)  # a command without --no-progress shows its own
    trackers = trackers_from_args(args)
    if args.no_tensorboard:
        trackers = tuple(t for t in trackers or () if t != "tensorboard")
    values["trackers"] = trackers
    values["muon_options"] = muon_options_from_args(args)
    return GPTRunConfig(**values)


def check_launch(args: argparse.Namespace) -> None:
    """Refuse --parallel outside torchrun and --replicate without --parallel hsdp (the one
    would fail deep in the model's wrapping, the other be ignored)."""
    check_parallel(args.optimizer, args.parallel)
    if args.parallel != "none" and not all(v in os.environ for v in TORCHRUN_VARS):
        raise ValueError(
            f"--parallel {args.parallel} runs one process per rank under torchrun: "
            f"torchrun --nproc_per_node N -m muonkit {args.command} ... (torchrun's "
            f"{', '.join(TORCHRUN_VARS)} are not set here)"
        )
    if args.replicate != 1 and args.parallel != "hsdp":
        raise ValueError(f"--replicate {args.replicate} applies to --parallel hsdp, not "
                         f"--parallel {args.parallel}")


def run_command(args: argparse.Namespace) -> int:
    check_launch(args)  # before torchrun's process group
    run = config_from_args(args)
    run.refuse_ignored([args.optimizer])
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if args.parallel != "none" else 1
    torch.set_num_threads(run.threads or default_threads(local_ranks))
    changes = {}
    if args.parallel != "none":  # under torchrun: one process group, this rank's device
        device = None if args.device == "auto" else args.device
        changes["device"] = str(compute_init(seed=args.seed, device=device)[4])
    cfg = run.train_config(
        args.optimizer, args.out, args.seed, checkpoint_every=args.checkpoint_every,
        resume=args.resume, overwrite=args.overwrite, **changes,
    )
    try:
        status = _run(args, run, cfg)
    except BaseException:
        compute_cleanup(wait_for_peers=False)
        raise
    compute_cleanup()
    return status


def _run(args, run: GPTRunConfig, cfg: TrainConfig) -> int:
    try:
        result = train_gpt(
            **run.train_gpt_kwargs(args.optimizer, cfg),
            parallel=args.parallel,
            replicate=args.replicate,
            **getattr(args, "finetune", {}),  # muonkit finetune: the base run and --state
            decode=args.sample > 0,
        )
    except RunComplete as done:
        if not is_distributed() or torch.distributed.get_rank() == 0:
            print(done)
        return 0
    except TrainingInterrupted as stop:
        print(interrupted_message(stop, args), file=sys.stderr)
        raise SystemExit(130) from None
    text = None  # every rank samples: an FSDP2 forward is a collective
    if args.sample:
        text = sample_text(result.extra["model"], result.extra["data"], args.sample, args.seed)
    if result.metrics_path is None:  # a rank other than 0 under --parallel
        return 0
    s = result.summary
    final = "n/a" if s["final_val_loss"] is None else f"{s['final_val_loss']:.4f}"
    mfu = "n/a" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"
    print(
        f"{cfg.run_name}: final val loss {final} after {s['steps']} steps; "
        f"{s['tokens_per_s']:,.0f} tokens/s, {1000 * s['step_time_s']:.1f} ms/step, "
        f"MFU {mfu}, optimizer state {s['optimizer_state_bytes'] / 2**20:.2f} MiB, "
        f"peak memory {s['peak_mem_bytes'] / 2**20:.0f} MiB on {s['device']}, "
        f"{s['threads']} thread(s)"
    )
    print(f"metrics: {result.metrics_path}")
    if text is not None:
        print(text)
    return 0


def interrupted_message(stop: TrainingInterrupted, args: argparse.Namespace) -> str:
    """Where the interrupted run stands and the command that continues it."""
    head = f"muonkit train: interrupted at step {stop.step}"
    if stop.checkpoint is None:
        return (f"{head}; no checkpoint was written (pass --checkpoint-every N to be able to "
                "resume); nothing to resume")
    argv = [a for a in args.argv if a != "--overwrite"]
    if "--resume" not in argv:
        argv.append("--resume")
    launcher = "muonkit" if args.parallel == "none" else "torchrun ... -m muonkit"
    return (f"{head}; last checkpoint {stop.checkpoint} (step {stop.checkpoint_step}); "
            f"continue with: {launcher} {shlex.join(argv)}")


def register(subparsers) -> None:
    p = add_command(
        subparsers, "train", help="train a GPT with AdamW or the Muon hybrid (one run)",
        description="Train a nanoGPT-style GPT; metrics go to OUT/metrics.jsonl and the "
        "--tracker(s): OUT/tb (TensorBoard), OUT/wandb (W&B).",
    )
    add_run_arguments(p, out="runs/train")
    p.set_defaults(func=run_command)


def add_run_arguments(p: argparse.ArgumentParser, out: str, **defaults) -> None:
    """The flags of one GPT run (``train``, ``finetune``): optimizer, output, seed,
    checkpoints, parallel mode, and :func:`add_gpt_arguments` (with ``defaults``)."""
    add_tree_settings(p, ("optimizer", "out", "seed", "checkpoint_every"), {"out": out})
    again = group_of(p, "train").add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help=RESUME_HELP)
    add_setting(again, "overwrite", SETTINGS["overwrite"])
    add_tree_settings(p, ("sample", "parallel", "replicate"))
    add_gpt_arguments(p, **defaults)
