"""Train a GPT with AdamW or the Muon hybrid: ``train_gpt`` and the ``muonkit train`` command.

Data -> :class:`muonkit.models.gpt.GPT` -> ``configure_optimizers`` -> :func:`train`. The same
seed gives both optimizers the same initial weights, the same training batches in the same
order and the same validation batches (drawn once with seed ``val_seed``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.text import BUNDLED, TOKENIZERS, TokenBatches, fixed_batches, load_text
from ..distributed.env import PARALLEL_MODES, compute_cleanup, compute_init
from ..models.gpt import GPT, OPTIMIZERS, PRESETS, preset_config
from .loop import DTYPES, TrainConfig, TrainResult, resolve_device, train


def lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean next-token cross-entropy of ``model(x)`` against ``y``."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))


def train_gpt(
    optimizer: str = "muon",
    *,
    preset: str = "tiny",
    data: str = BUNDLED,
    tokenizer: str = "char",
    batch_size: int = 12,
    block_size: int | None = None,
    eval_batches: int = 20,
    val_seed: int = 0,
    model_overrides: dict | None = None,
    optimizer_options: dict | None = None,
    train_config: TrainConfig,
    parallel: str = "none",
    monitor=None,
) -> TrainResult:
    """One GPT run; ``train_config.seed`` seeds the weights and the training-batch order.

    ``model_overrides`` go to :func:`preset_config` (e.g. ``dropout``, ``rope``,
    ``tie_weights``); ``optimizer_options`` to ``GPT.configure_optimizers`` (``lr``,
    ``muon_lr``, ``betas``, ``weight_decay``, ...). The vocabulary size comes from the data.

    ``parallel="ddp"|"fsdp2"`` (under torchrun, after ``muonkit.distributed.compute_init``):
    every rank builds the same model, draws its own training batches (seed offset by rank),
    and the model/optimizer are wrapped by :mod:`muonkit.distributed.parallel`. Rank 0 writes
    the metrics (its micro-batch loss; tokens counted over all ranks); checkpoints go through
    DCP (``OUT/ckpt_dcp``) and resume with the same number of ranks.

    ``monitor(model, optimizer)``, if given, is called once both exist and returns the loop's
    ``on_eval(step, val_record, logger)`` (e.g. :class:`muonkit.experiments.rms.RMSMonitor`).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {list(OPTIMIZERS)}")
    tokens = load_text(data, tokenizer)
    overrides = dict(model_overrides or {})
    if block_size is not None:
        overrides["block_size"] = block_size
    config = preset_config(preset, vocab_size=tokens.vocab_size, **overrides)
    seed = train_config.seed
    rank, world = 0, 1
    if parallel != "none":
        train_config, rank, world = _parallel_config(parallel, train_config)
    batches = TokenBatches(
        tokens.train, batch_size, config.block_size, seed=seed + 100_003 * rank, split="train"
    )
    val = fixed_batches(tokens.val, batch_size, config.block_size, eval_batches, seed=val_seed)
    torch.manual_seed(seed)
    model = GPT(config)
    device = resolve_device(train_config.device)
    model.to(device)
    net = model
    if parallel != "none":  # before the optimizer: FSDP2 swaps in sharded (DTensor) params
        from ..distributed.parallel import distribute_optimizer, parallelize

        net = parallelize(model, parallel, device)
    opt = model.configure_optimizers(optimizer, **(optimizer_options or {}))
    if parallel != "none":
        opt = distribute_optimizer(opt, parallel)
    run_config = {
        "preset": preset,
        "model": dataclasses.asdict(config),
        "data": tokens.describe(),
        "batch_size": batch_size,
        "eval_batches": eval_batches,
        "val_seed": val_seed,
        "optimizer_options": {k: _jsonable(v) for k, v in (optimizer_options or {}).items()},
        "params": model.num_params(),
        "parallel": parallel,
        "world_size": world,
    }
    result = train(
        net,
        opt,
        batches,
        lm_loss,
        train_config,
        val_batches=val,
        flops_per_token=model.estimate_flops_per_token(),
        optimizer_name=optimizer,
        run_config=run_config,
        count_tokens=lambda batch: world * int(batch[-1].numel()),
        on_eval=None if monitor is None else monitor(model, opt),
    )
    result.extra.update(model=model, data=tokens)
    return result


def sample_text(model: GPT, data, n: int, seed: int = 0, top_k: int = 200) -> str:
    """``n`` tokens sampled from ``model`` after the first token of the val split."""
    device = next(model.parameters()).device
    start = torch.tensor([[int(data.val[0])]], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    return data.decode(model.generate(start, n, top_k=top_k, generator=gen)[0].tolist())


def _parallel_config(parallel: str, cfg: TrainConfig) -> tuple[TrainConfig, int, int]:
    """Check the process group; only rank 0 shows progress (and the loop lets only rank 0
    write metrics; every rank writes its part of a checkpoint)."""
    import torch.distributed as dist

    from ..distributed.parallel import check_mode

    check_mode(parallel)
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        cfg = dataclasses.replace(cfg, progress=False, tensorboard=False)
    return cfg, rank, world


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def add_gpt_arguments(p: argparse.ArgumentParser) -> None:
    """Model, data and loop flags shared by ``muonkit train`` and ``muonkit compare``."""
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="GPT size")
    p.add_argument("--data", default=BUNDLED,
                   help="'tinyshakespeare' (bundled), a text file, or a dir with train.bin/val.bin")
    p.add_argument("--tokenizer", default="char", choices=TOKENIZERS,
                   help="char-level, or GPT-2 BPE via tiktoken (for text files)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=12, help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--block-size", type=int, default=None, help="context (default: preset's)")
    p.add_argument("--dropout", type=float, default=None, help="default: preset's (0)")
    p.add_argument("--rope", action="store_true", help="rotary instead of learned positions")
    p.add_argument("--untied", action="store_true", help="separate lm_head and wte weights")
    p.add_argument("--warmup", type=int, default=100, help="LR warmup steps")
    p.add_argument("--decay", default="cosine", choices=["cosine", "linear", "constant"])
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final LR / peak LR")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0: off)")
    p.add_argument("--eval-every", type=int, default=100, help="val loss every N steps")
    p.add_argument("--eval-batches", type=int, default=20, help="fixed val batches")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=sorted(DTYPES),
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="device peak FLOP/s for MFU (default: known GPUs' bf16 peak, else none)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    # optimizer settings (nanoGPT AdamW defaults; Muon on hidden matrices)
    p.add_argument("--lr", type=float, default=6e-4,
                   help="AdamW lr (the baseline, and the hybrid's AdamW groups)")
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    p.add_argument("--muon-lr", type=float, default=0.02, help="Muon lr (hidden matrices)")
    p.add_argument("--muon-momentum", type=float, default=0.95, help="Muon momentum")
    p.add_argument("--momentum-warmup", type=int, default=300,
                   help="Muon momentum 0.85 -> --muon-momentum over N steps (0: off)")
    p.add_argument("--muon-weight-decay", type=float, default=0.0)
    p.add_argument("--qkv-split", action="store_true",
                   help="orthogonalize the fused QKV weight as 3 blocks")


def model_overrides_from(args) -> dict:
    out = {"rope": args.rope, "tie_weights": not args.untied}
    if args.dropout is not None:
        out["dropout"] = args.dropout
    return out


def optimizer_options_from(args, optimizer: str) -> dict:
    opts = dict(lr=args.lr, betas=(0.9, args.beta2), weight_decay=args.weight_decay)
    if optimizer == "muon":
        opts.update(
            muon_lr=args.muon_lr,
            momentum=args.muon_momentum,
            muon_weight_decay=args.muon_weight_decay,
            qkv_split=args.qkv_split,
        )
    return opts


def train_config_from(args, optimizer: str, out_dir: str, seed: int, **changes) -> TrainConfig:
    cfg = TrainConfig(
        steps=args.steps,
        grad_accum=args.grad_accum,
        warmup_steps=args.warmup,
        decay=args.decay,
        min_lr_ratio=args.min_lr_ratio,
        momentum_warmup_steps=args.momentum_warmup if optimizer == "muon" else 0,
        momentum_end=args.muon_momentum,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        out_dir=out_dir,
        run_name=f"{args.preset}-{optimizer}-s{seed}",
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
        peak_flops=args.peak_flops,
        seed=seed,
    )
    return dataclasses.replace(cfg, **changes)


def run_command(args) -> int:
    changes = {}
    if args.parallel != "none":  # under torchrun: one process group, this rank's device
        device = None if args.device == "auto" else args.device
        changes["device"] = str(compute_init(seed=args.seed, device=device)[4])
    cfg = train_config_from(
        args, args.optimizer, args.out, args.seed,
        checkpoint_every=args.checkpoint_every, resume=args.resume, **changes,
    )
    try:
        status = _run(args, cfg)
    except BaseException:
        compute_cleanup(wait_for_peers=False)
        raise
    compute_cleanup()
    return status


def train_gpt_kwargs(args, optimizer: str, cfg: TrainConfig) -> dict:
    """The keyword arguments of :func:`train_gpt` given the shared GPT flags."""
    return dict(
        optimizer=optimizer,
        preset=args.preset,
        data=args.data,
        tokenizer=args.tokenizer,
        batch_size=args.batch_size,
        block_size=args.block_size,
        eval_batches=args.eval_batches,
        model_overrides=model_overrides_from(args),
        optimizer_options=optimizer_options_from(args, optimizer),
        train_config=cfg,
    )


def _run(args, cfg: TrainConfig) -> int:
    result = train_gpt(**train_gpt_kwargs(args, args.optimizer, cfg), parallel=args.parallel)
    text = None  # every rank samples: an FSDP2 forward is a collective
    if args.sample:
        text = sample_text(result.extra["model"], result.extra["data"], args.sample, args.seed)
    if result.metrics_path is None:  # a rank other than 0 under --parallel
        return 0
    s = result.summary
    mfu = "n/a" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"
    print(
        f"{cfg.run_name}: final val loss {s['final_val_loss']:.4f} after {s['steps']} steps; "
        f"{s['tokens_per_s']:,.0f} tokens/s, {1000 * s['step_time_s']:.1f} ms/step, "
        f"MFU {mfu}, optimizer state {s['optimizer_state_bytes'] / 2**20:.2f} MiB, "
        f"peak memory {s['peak_mem_bytes'] / 2**20:.0f} MiB on {s['device']}"
    )
    print(f"metrics: {result.metrics_path}")
    if text is not None:
        print(text)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a GPT with AdamW or the Muon hybrid (one run)",
        description="Train a nanoGPT-style GPT; metrics go to OUT/metrics.jsonl (+ OUT/tb).",
    )
    p.add_argument("--optimizer", default="muon", choices=OPTIMIZERS)
    p.add_argument("--out", default="runs/train", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument("--sample", type=int, default=0, help="print N sampled tokens at the end")
    p.add_argument("--parallel", default="none", choices=PARALLEL_MODES,
                   help="under torchrun: DDP or FSDP2 data parallelism (gloo on CPU)")
    add_gpt_arguments(p)
    p.set_defaults(func=run_command)
