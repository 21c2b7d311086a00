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
from muonkit.registry import OPTIMIZER_NAMES, OPTIMIZERS, PARALLEL_MODES, check_parallel
from muonkit.schedules import DECAYS

from ..data.text import BUNDLED, TOKENIZERS
from ..experiments.runs import default_threads
from ..models.gpt import PRESETS
from ..train.config import DTYPES, TrainConfig, resume_may_differ
from ..train.files import RunComplete, setting_name
from ..train.gpt import FLAG_NAMES, GPTRunConfig, sample_text, train_gpt
from ..train.loop import TrainingInterrupted
from .common import (
    FRACTION,
    MOMENTUM,
    NONNEGATIVE,
    NONNEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    add_command,
    add_muon_option_flags,
    add_qk_clip_flag,
    add_tracker_arguments,
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


def add_gpt_arguments(p: argparse.ArgumentParser, progress: bool = True) -> None:
    """Model, data, loop and optimizer flags of :class:`GPTRunConfig` (``config_from_args``
    reads them back); ``progress=False``: no ``--no-progress`` (a command that shows its own)."""
    d = GPTRunConfig()
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS), help="GPT size")
    p.add_argument("--data", default=d.data,
                   help=f"'{BUNDLED}' (bundled), a text file, or a dir with train.bin/val.bin")
    p.add_argument("--tokenizer", default=d.tokenizer, choices=TOKENIZERS,
                   help="char-level, byte-level (UTF-8 bytes, 256 ids: reads any text), or "
                        "GPT-2 BPE via tiktoken (for text files)")
    p.add_argument("--steps", type=POSITIVE_INT, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=d.batch_size,
                   help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=POSITIVE_INT, default=d.grad_accum,
                   help="micro-batches per step")
    p.add_argument("--block-size", type=POSITIVE_INT, default=d.block_size,
                   help="context length (None: the preset's)")
    p.add_argument("--dropout", type=MOMENTUM, default=d.dropout, help="None: the preset's (0)")
    p.add_argument("--rope", action="store_true", help="rotary instead of learned positions")
    p.add_argument("--untied", action="store_true", help="separate lm_head and wte weights")
    p.add_argument("--warmup", type=NONNEGATIVE_INT, default=d.warmup, help="LR warmup steps")
    p.add_argument("--decay", default=d.decay, choices=DECAYS, help="LR decay after warmup")
    p.add_argument("--min-lr-ratio", type=FRACTION, default=d.min_lr_ratio,
                   help="final LR / peak LR")
    p.add_argument("--grad-clip", type=NONNEGATIVE, default=d.grad_clip,
                   help="max grad norm (0: off)")
    p.add_argument("--eval-every", type=NONNEGATIVE_INT, default=d.eval_every,
                   help="val loss every N steps (0: at the start and the end only)")
    p.add_argument("--eval-batches", type=POSITIVE_INT, default=d.eval_batches,
                   help="fixed val batches")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=d.dtype, choices=sorted(DTYPES),
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--peak-flops", type=POSITIVE, default=d.peak_flops,
                   help="device peak FLOP/s for MFU (None: known GPUs' bf16 peak, else no MFU)")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    add_tracker_arguments(p, "tensorboard when installed",
                          "W&B run name (None: the run's name; compare: the runs' group)")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="leave TensorBoard out of the trackers (the older spelling of "
                   "--tracker none, kept so recorded commands still run)")
    # optimizer settings (nanoGPT AdamW defaults; Muon on hidden matrices)
    p.add_argument("--lr", type=POSITIVE, default=d.lr,
                   help="AdamW lr (the baseline, and the hybrid's AdamW groups)")
    p.add_argument("--beta2", type=MOMENTUM, default=d.beta2, help="AdamW beta2")
    p.add_argument("--weight-decay", type=NONNEGATIVE, default=d.weight_decay,
                   help="AdamW weight decay")
    p.add_argument("--muon-lr", type=POSITIVE, default=d.muon_lr, help="Muon lr (hidden matrices)")
    p.add_argument("--muon-momentum", type=MOMENTUM, default=d.muon_momentum,
                   help="Muon momentum")
    p.add_argument("--momentum-warmup", type=NONNEGATIVE_INT, default=d.momentum_warmup,
                   help="Muon momentum 0.85 -> --muon-momentum over N steps (0: off)")
    p.add_argument("--muon-weight-decay", type=NONNEGATIVE, default=d.muon_weight_decay,
                   help="Muon decoupled weight decay")
    p.add_argument("--qkv-split", action="store_true",
                   help="orthogonalize the fused QKV weight as 3 blocks")
    p.add_argument("--rank", type=POSITIVE_INT, default=d.rank,
                   help="rank of the low-rank momentum (--optimizer "
                   f"{' or '.join(n for n, s in OPTIMIZERS.items() if s.takes_rank)})")
    p.add_argument("--lora-rank", type=NONNEGATIVE_INT, default=d.lora_rank,
                   help="train LoRA adapters of this rank on the attention and MLP projections, "
                   "the rest frozen (0: off); Muon or AdamW trains them as --optimizer says")
    p.add_argument("--lora-alpha", type=POSITIVE, default=d.lora_alpha,
                   help="LoRA scale alpha (the update is alpha / rank * B A x; None: the rank)")
    add_qk_clip_flag(p, d.qk_clip)
    add_muon_option_flags(p)


def config_from_args(args: argparse.Namespace) -> GPTRunConfig:
    """The :class:`GPTRunConfig` of flags added by :func:`add_gpt_arguments`."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(GPTRunConfig)
        if hasattr(args, f.name)
    }
    values["progress"] = not getattr(args, "no_progress", True)
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


def add_run_arguments(p: argparse.ArgumentParser, out: str) -> None:
    """The flags of one GPT run (``train``, ``finetune``): optimizer, output, seed,
    checkpoints, threads, parallel mode, and :func:`add_gpt_arguments`."""
    p.add_argument("--optimizer", default="muon", choices=OPTIMIZER_NAMES, help="optimizer")
    p.add_argument("--out", default=out, help="output directory")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="init and batch-order seed")
    p.add_argument("--checkpoint-every", type=NONNEGATIVE_INT, default=0,
                   help="write OUT/ckpt.pt every N steps (0: never)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help=RESUME_HELP)
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run already in OUT (its metrics, checkpoint, tb, wandb)")
    p.add_argument("--sample", type=NONNEGATIVE_INT, default=0,
                   help="print N sampled tokens at the end")
    p.add_argument("--threads", type=POSITIVE_INT, default=None,
                   help="torch intra-op threads (None: this machine's cores shared among its "
                   "ranks; never the load, so a rerun computes the same bits)")
    p.add_argument("--parallel", default="none", choices=PARALLEL_MODES,
                   help="under torchrun: DDP, FSDP2 or HSDP data parallelism (gloo on CPU)")
    p.add_argument("--replicate", type=POSITIVE_INT, default=1,
                   help="--parallel hsdp: replica groups (FSDP2 shards over W / N ranks in each)")
    add_gpt_arguments(p)



