"""The one training loop of muonkit: model-agnostic, resumable, measured.

A caller supplies the model, its optimizer(s), a batch source and a loss function; the loop
does the rest (nanoGPT's ``train.py`` structure, minus the GPT specifics):

* every step: LR multiplier (linear warmup, cosine/linear decay) and Muon momentum warmup from
  :mod:`muonkit.schedules` written into every optimizer's groups; ``grad_accum`` micro-batches,
  each loss scaled by ``1 / grad_accum`` before backward so the summed gradient is that of the
  mean loss over the whole batch; optional gradient-norm clipping; one ``step()`` per optimizer;
* bf16 autocast on CUDA (``dtype="auto"``), fp32 on CPU; optional ``torch.compile``;
* validation loss at step 0, every ``eval_every`` steps and at the end, on FIXED batches;
* a checkpoint every ``checkpoint_every`` steps holding model, optimizer states, step, the batch
  source's state and the RNG states: ``resume=True`` continues so that N steps + resume N steps
  ends bit for bit where 2N steps do (on CPU);
* metrics: one JSONL line per step in the team's schema (``config``, ``train``, ``val``,
  ``summary``), TensorBoard scalars when tensorboard is installed, a tqdm bar with loss and
  tokens/s; the summary has tokens/s, time per step, peak memory, optimizer state bytes, MFU,
  and what affects timing (torch threads, 1-minute load average at the start and end of the
  session, the CPU's timing flags from :func:`muonkit.hardware.machine_info`).
  ``elapsed_s`` counts the training steps only (evaluation and checkpoint time left out), and
  carries on across a resume; the summary's throughput leaves out the first step of a session
  (warm-up, compilation) when there are more.

Interfaces:

* batch source: an object with ``next_batch() -> tuple[Tensor, ...]`` (one micro-batch, on any
  device; the loop moves it) and, for resume, ``state_dict()``/``load_state_dict()``;
* ``loss_fn(model, batch) -> scalar Tensor`` (mean over the micro-batch);
* ``val_batches``: a list of batches, averaged with ``loss_fn`` under ``torch.no_grad``; or
  ``evaluate(model) -> dict`` with at least ``"val_loss"`` (extra keys go into the val line);
* ``count_tokens(batch) -> int``: tokens (or samples) in a micro-batch; default the number of
  elements of the batch's last tensor (the targets: B*T for a LM, B for a classifier).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..checks import check_number
from ..distributed.env import is_distributed
from ..hardware import load_average, machine_info
from ..schedules import DECAYS, apply_schedules, lr_multiplier, muon_momentum

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}
CHECKPOINT = "ckpt.pt"
CHECKPOINT_DIR = "ckpt_dcp"  # multi-rank runs (torchrun): muonkit.distributed.save_train_state
METRICS = "metrics.jsonl"
RUN_MARKERS = (METRICS, CHECKPOINT, CHECKPOINT_DIR)  # files that say a directory holds a run
RUN_FILES = (*RUN_MARKERS, CHECKPOINT + ".tmp", "tb")  # what overwrite=True deletes
CHECKPOINT_KEYS = ("model", "optimizers", "batches", "rng", "step", "elapsed_s", "tokens")
# Dense bf16 tensor-core peaks (vendor data sheets) used for MFU when --peak-flops is not given.
KNOWN_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass
class TrainConfig:
    """Everything the loop needs to know that is not the model, data or optimizer.

    Args:
        steps: optimizer steps in the whole run (the LR schedule's length).
        grad_accum: micro-batches per optimizer step.
        warmup_steps, decay, min_lr_ratio: LR multiplier (see ``schedules.lr_multiplier``).
        momentum_warmup_steps: Muon momentum ramps ``momentum_start -> momentum_end`` over this
            many steps (0: leave the optimizers' momentum alone). Only groups with
            ``use_muon=True`` are touched.
        grad_clip: max global gradient norm (0: no clipping).
        eval_every: validation every this many steps (0: only at step 0 and at the end).
        checkpoint_every: checkpoint every this many steps (0: never); needs ``out_dir``.
        out_dir: where metrics.jsonl, ckpt.pt and tb/ go (None: nothing written). A directory
            that already holds a run is refused unless ``resume`` or ``overwrite`` is set.
        resume: continue from ``out_dir/ckpt.pt``; a run that has trained all ``steps``
            raises :class:`RunComplete` and changes nothing.
        overwrite: delete the run files already in ``out_dir`` (``RUN_FILES``) and start anew.
        stop_at: end this session after this many steps (the schedule still spans ``steps``),
            e.g. to split a run over time-limited jobs; continue it with ``resume``.
        device: "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (bf16 autocast on CUDA, fp32 on CPU), "float32", "bfloat16".
        compile, compile_backend: wrap the model in ``torch.compile(backend=...)``.
        progress: tqdm bar. tensorboard: TensorBoard scalars in ``out_dir/tb`` if installed.
        peak_flops: the device's peak FLOP/s for MFU; None: a known GPU's bf16 peak, else no MFU.
        seed: recorded in the metrics, and seeds torch's global RNG (dropout) at the start.
    """

    steps: int
    grad_accum: int = 1
    warmup_steps: int = 0
    decay: str = "cosine"
    min_lr_ratio: float = 0.1
    momentum_warmup_steps: int = 0
    momentum_start: float = 0.85
    momentum_end: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 0
    checkpoint_every: int = 0
    out_dir: str | None = None
    run_name: str = "run"
    resume: bool = False
    overwrite: bool = False
    stop_at: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    compile_backend: str = "inductor"
    progress: bool = True
    tensorboard: bool = True
    peak_flops: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("warmup_steps", "momentum_warmup_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        check_number("TrainConfig.grad_clip (0 = off)", self.grad_clip, ge=0)
        check_number("TrainConfig.min_lr_ratio", self.min_lr_ratio, ge=0, le=1)
        for name in ("momentum_start", "momentum_end"):
            check_number(f"TrainConfig.{name}", getattr(self, name), ge=0, lt=1)
        if self.peak_flops is not None:
            check_number("TrainConfig.peak_flops", self.peak_flops, gt=0)
        parse_device(self.device)
        if self.resume and self.overwrite:
            raise ValueError("TrainConfig: resume and overwrite exclude each other")
        if self.decay not in DECAYS:
            raise ValueError(f"TrainConfig.decay {self.decay!r} unknown; valid: {list(DECAYS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TrainConfig.dtype {self.dtype!r} unknown; valid: {list(DTYPES)}")
        if self.stop_at is not None and not 0 < self.stop_at <= self.steps:
            raise ValueError(f"TrainConfig.stop_at must be in [1, steps], got {self.stop_at}")
        if (self.checkpoint_every or self.resume) and self.out_dir is None:
            raise ValueError("checkpoint_every/resume need TrainConfig.out_dir (where ckpt.pt is)")


class RunComplete(Exception):
    """``resume=True`` on a run that has already trained all its steps; nothing was changed."""


class RunExistsError(FileExistsError):
    """``out_dir`` holds a run, and neither ``resume`` nor ``overwrite`` was asked for."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: truncated, corrupt, or not written by this loop."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`: the last finished step and the last checkpoint written
    or resumed from (``checkpoint`` None: there is none)."""

    def __init__(self, step: int, checkpoint: Path | None, checkpoint_step: int | None):
        super().__init__(f"training interrupted at step {step}")
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step


@dataclass
class TrainResult:
    steps: int
    train_losses: list[float]
    val: list[dict]
    summary: dict
    metrics_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def final_val_loss(self) -> float | None:
        return self.summary["final_val_loss"]


# ---------------------------------------------------------------------------------------------
# small pieces (each tested on its own)
# ---------------------------------------------------------------------------------------------


def parse_device(device: str) -> torch.device | None:
    """``torch.device(device)`` (None for "auto"); ValueError for a string torch cannot read."""
    if device == "auto":
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


def resolve_device(device: str) -> torch.device:
    """The device to train on: "auto" is CUDA when available, else CPU."""
    dev = parse_device(device)
    if dev is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device='cpu'")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto": bf16 on CUDA (mixed precision via autocast), fp32 elsewhere."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} unknown; valid: {list(DTYPES)}")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def autocast_context(device: torch.device, dtype: torch.dtype):
    """``torch.autocast`` to ``dtype`` for the forward pass; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def accumulate_gradients(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    micro_batches: Sequence[Any],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Tensor:
    """Backward of ``mean(loss_fn(model, b) for b in micro_batches)``; returns that mean (detached).

    Each micro-batch loss is scaled by ``1 / len(micro_batches)`` before its backward, so the
    gradients summed in ``.grad`` equal those of one batch made of all of them (when each loss
    is a mean over equally sized micro-batches). Under ``DistributedDataParallel`` every
    backward but the last runs in ``model.no_sync()``: gradients accumulate locally and are
    all-reduced once per step, not once per micro-batch. (FSDP2 still reduce-scatters each
    micro-batch, which keeps gradients sharded; skipping that would hold unsharded gradients.)
    """
    k = len(micro_batches)
    total = None
    for i, batch in enumerate(micro_batches):
        last = i == k - 1
        sync = (
            model.no_sync()
            if isinstance(model, DistributedDataParallel) and not last
            else contextlib.nullcontext()
        )
        with sync:
            with autocast():
                loss = loss_fn(model, batch) / k
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


def optimizer_state_bytes(optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """Bytes held by tensors in the optimizers' ``state`` (momentum buffers, moments, steps)."""

    def size(obj) -> int:
        if isinstance(obj, Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(size(v) for v in obj)
        return 0

    return sum(size(dict(opt.state)) for opt in optimizers)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: ``max_memory_allocated``; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def default_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in KNOWN_PEAK_FLOPS.items() if k in name), None)


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create ``out_dir``; refuse a file or an unwritable directory, and a directory that holds
    a run (``RUN_MARKERS``) unless ``resume`` (continue it) or ``overwrite`` (delete its
    ``RUN_FILES``, nothing else) is set. Under torch.distributed rank 0 deletes."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output directory {out_dir} is a file, not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create output directory {out_dir}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {out_dir} is not writable")
    found = [name for name in RUN_MARKERS if (out_dir / name).exists()]
    if found and not (resume or overwrite):
        raise RunExistsError(
            f"{out_dir} already holds a run ({', '.join(found)}); pass --resume to continue it "
            "or --overwrite to replace it"
        )
    distributed = is_distributed()
    if distributed:
        torch.distributed.barrier()  # every rank has looked before any rank writes or deletes
    if found and overwrite and (not distributed or torch.distributed.get_rank() == 0):
        for path in (out_dir / name for name in RUN_FILES):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    if distributed:
        torch.distributed.barrier()


def read_records(path: Path) -> list[dict]:
    """The JSON records of a metrics file; a last line cut short by a kill is left out."""
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path} line {i + 1} is not JSON: {line[:60]!r}") from None
    return records


def finished_run(metrics: Path) -> dict | None:
    """The summary record of the run in ``metrics`` if it ended after all its planned steps
    (the config line's ``steps``), else None."""
    if not metrics.exists():
        return None
    records = read_records(metrics)
    config = next((r for r in records if r.get("kind") == "config"), None)
    if config is None or not records or records[-1].get("kind") != "summary":
        return None
    summary = records[-1]
    return summary if summary["steps"] >= config["config"]["steps"] else None


def check_resume(cfg: TrainConfig, out_dir: Path, ckpt_step: int | None) -> None:
    """Refuse a resume that would not continue the run: :class:`RunComplete` when all
    ``cfg.steps`` are done, ValueError when ``cfg.steps`` is below what is done.
    ``ckpt_step`` None: the checkpoint has not been read yet (only the metrics are checked)."""
    summary = finished_run(out_dir / METRICS)
    done = summary["steps"] if summary is not None else ckpt_step
    if done is None or done < cfg.steps:
        return
    if done > cfg.steps:
        raise ValueError(
            f"the run in {out_dir} has trained {done} steps; steps={cfg.steps} is below that: "
            f"pass --steps {done} (the run is complete then) or more to train on"
        )
    loss = None if summary is None else summary.get("final_val_loss")
    raise RunComplete(
        f"{out_dir}: the run is complete ({done} of {cfg.steps} steps"
        + (f", final val loss {loss:.4f}" if loss is not None else "")
        + "); nothing to do. Pass a larger --steps to train on, or --overwrite to start again."
    )


def load_checkpoint(path: Path) -> dict:
    """A single-process checkpoint, on CPU (RNG and generator states must stay CPU tensors;
    ``load_state_dict`` moves model and optimizer tensors to their parameters' device)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({reason}): it is truncated or corrupt; restore "
            "it, or start the run again with --overwrite"
        ) from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: not a muonkit "
                              "training checkpoint")
    return ckpt


def default_count_tokens(batch) -> int:
    return int(batch[-1].numel())


def to_device(batch, device: torch.device):
    if device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)
    return tuple(t.to(device) for t in batch)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class MetricsLogger:
    """JSONL metrics (and TensorBoard scalars) of one run; None paths write nothing."""

    def __init__(self, out_dir: Path | None, tensorboard: bool, resume_step: int | None):
        self.path = None if out_dir is None else out_dir / METRICS
        self.tb = None
        if self.path is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate(resume_step)
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step)

    def _truncate(self, step: int) -> None:
        """Keep the config line and the records up to ``step`` (the checkpoint's)."""
        kept = [
            rec
            for rec in read_records(self.path)
            if rec["kind"] == "config" or (rec["kind"] != "summary" and rec.get("step", 0) <= step)
        ]
        self.path.write_text("".join(json.dumps(rec) + "\n" for rec in kept))

    @property
    def has_config(self) -> bool:
        return self.path is not None and self.path.exists() and self.path.stat().st_size > 0

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


def evaluate_batches(model, loss_fn, batches, device, autocast) -> dict:
    """Mean of ``loss_fn`` over fixed ``batches`` with the model in eval mode, no grad."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            with autocast():
                total += float(loss_fn(model, to_device(batch, device)))
    model.train(was_training)
    return {"val_loss": total / len(batches)}


def train(
    model: nn.Module,
    optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    batches,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    config: TrainConfig,
    *,
    val_batches: Sequence[Any] | None = None,
    evaluate: Callable[[nn.Module], dict] | None = None,
    on_eval: Callable[[int, dict, MetricsLogger], None] | None = None,
    count_tokens: Callable[[Any], int] = default_count_tokens,
    flops_per_token: float | None = None,
    optimizer_name: str = "",
    run_config: dict | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.steps`` optimizer steps; see the module docstring.

    ``optimizer_name`` and ``run_config`` (model/data settings) go into the metrics' config
    line. ``flops_per_token`` (training FLOPs per token, e.g. ``GPT.estimate_flops_per_token``)
    with a peak FLOP/s gives MFU. ``on_eval(step, val_record, logger)`` runs after each
    evaluation (e.g. to write extra records with ``logger.write``).
    """
    cfg = config
    optimizers = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
    if not optimizers:
        raise ValueError("train() needs at least one optimizer")
    if val_batches is not None and evaluate is not None:
        raise ValueError("give val_batches or evaluate, not both")
    if val_batches is not None and len(val_batches) == 0:
        raise ValueError("val_batches is empty; give at least one batch or None")
    if (cfg.checkpoint_every or cfg.resume) and not hasattr(batches, "state_dict"):
        raise ValueError(
            "checkpoint_every/resume need a batch source with state_dict()/load_state_dict() "
            "(e.g. muonkit.data.text.TokenBatches) so a resumed run draws the same batches"
        )
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model.to(device)
    out_dir = None if cfg.out_dir is None else Path(cfg.out_dir)
    distributed = is_distributed()
    ckpt_name = CHECKPOINT_DIR if distributed else CHECKPOINT
    ckpt_path = None if out_dir is None else out_dir / ckpt_name

    def autocast():
        return autocast_context(device, dtype)

    forward_model = torch.compile(model, backend=cfg.compile_backend) if cfg.compile else model
    if evaluate is None and val_batches is not None:

        def evaluate(m):
            return evaluate_batches(m, loss_fn, val_batches, device, autocast)

    start_step, prior_elapsed, tokens_seen = 0, 0.0, 0
    ckpt_step = None
    torch.manual_seed(cfg.seed)
    if out_dir is not None:
        prepare_out_dir(out_dir, cfg.resume, cfg.overwrite)
    if cfg.resume:
        check_resume(cfg, out_dir, None)
        if not ckpt_path.exists():
            raise FileNotFoundError(
                f"resume=True but there is no checkpoint {ckpt_path}; run without --resume "
                "first with checkpoint_every > 0"
            )
        if distributed:
            from ..distributed.checkpoint import load_train_state

            ckpt = load_train_state(ckpt_path, model, optimizers)
        else:
            ckpt = load_checkpoint(ckpt_path)
        check_resume(cfg, out_dir, ckpt["step"])
        if not distributed:
            model.load_state_dict(ckpt["model"])
            for opt, state in zip(optimizers, ckpt["optimizers"], strict=True):
                opt.load_state_dict(state)
        batches.load_state_dict(ckpt["batches"])
        set_rng_state(ckpt["rng"])
        start_step, prior_elapsed, tokens_seen = ckpt["step"], ckpt["elapsed_s"], ckpt["tokens"]
        ckpt_step = start_step
    main_process = not distributed or torch.distributed.get_rank() == 0  # writes the metrics
    logger = MetricsLogger(
        out_dir if main_process else None, cfg.tensorboard, start_step if cfg.resume else None
    )
    if not logger.has_config:
        logger.write(
            {
                "kind": "config",
                "run": cfg.run_name,
                "optimizer": optimizer_name,
                "seed": cfg.seed,
                "config": {**dataclasses.asdict(cfg), **(run_config or {})},
            }
        )
    machine = machine_info(device)  # threads, load, CPU flags at the start of this session
    peak_flops = cfg.peak_flops if cfg.peak_flops is not None else default_peak_flops(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    train_losses: list[float] = []
    val_records: list[dict] = []
    step_times: list[float] = []
    step_tokens: list[int] = []
    elapsed = prior_elapsed

    def run_eval(step: int) -> None:
        if evaluate is None:
            return
        record = {"kind": "val", "step": step, **evaluate(model), "elapsed_s": elapsed}
        if "val_loss" not in record:
            raise ValueError("evaluate(model) must return a dict with 'val_loss'")
        logger.write(record)
        val_records.append(record)
        if on_eval is not None:
            on_eval(step, record, logger)

    progress = _progress_bar(cfg, start_step)
    model.train()
    step = start_step
    try:
        if start_step == 0:
            run_eval(0)
        for step in range(start_step, min(cfg.steps, cfg.stop_at or cfg.steps)):
            t0 = time.perf_counter()
            mult = lr_multiplier(
                step,
                total_steps=cfg.steps,
                warmup_steps=cfg.warmup_steps,
                decay=cfg.decay,
                min_lr_ratio=cfg.min_lr_ratio,
            )
            momentum = None
            if cfg.momentum_warmup_steps:
                momentum = muon_momentum(
                    step,
                    start=cfg.momentum_start,
                    end=cfg.momentum_end,
                    warmup_steps=cfg.momentum_warmup_steps,
                )
            for opt in optimizers:
                apply_schedules(opt, step, lr_mult=mult, muon_momentum=momentum)
            micro = [to_device(batches.next_batch(), device) for _ in range(cfg.grad_accum)]
            loss = accumulate_gradients(forward_model, loss_fn, micro, autocast).item()
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss is {loss} at step {step + 1}; lower the learning rate, "
                    "enable grad_clip, or check the data"
                )
            grad_norm = None
            if cfg.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            for opt in optimizers:
                opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            n_tokens = sum(count_tokens(b) for b in micro)
            elapsed += dt
            tokens_seen += n_tokens
            step_times.append(dt)
            step_tokens.append(n_tokens)
            train_losses.append(loss)
            record = {
                "kind": "train",
                "step": step + 1,
                "loss": loss,
                "lr": optimizers[0].param_groups[0]["lr"],
                "tokens": tokens_seen,
                "elapsed_s": elapsed,
                "tokens_per_s": n_tokens / dt,
            }
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            logger.write(record)
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tokens / dt:,.0f}")
            done = step + 1
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                run_eval(done)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                save_checkpoint(
                    ckpt_path, model, optimizers, batches, done, elapsed, tokens_seen, device
                )
                ckpt_step = done
    except KeyboardInterrupt:
        logger.close()
        last = None if ckpt_step is None else ckpt_path
        raise TrainingInterrupted(start_step + len(step_times), last, ckpt_step) from None
    finally:
        progress.close()
    done_steps = start_step + len(step_times)
    summary = _summary(
        done_steps, device, optimizers, val_records, step_times, step_tokens, flops_per_token,
        peak_flops,
    )
    summary.update(
        threads=machine["torch_threads"],
        load_1min_start=machine["load_1min"],
        load_1min_end=load_average(),
        cpu_flags=machine["cpu_flags"],
        cpu_native_bf16=machine["cpu_native_bf16"],
    )
    logger.write(summary)
    logger.close()
    return TrainResult(done_steps, train_losses, val_records, summary, logger.path)


def _progress_bar(cfg: TrainConfig, start_step: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.steps, initial=start_step, desc=cfg.run_name, disable=not cfg.progress,
        dynamic_ncols=True,
    )


def save_checkpoint(path, model, optimizers, batches, step, elapsed, tokens, device) -> None:
    """Everything a resumed run needs to continue exactly; written atomically.

    Under torch.distributed (several ranks) model and optimizers go through DCP, each rank's
    sampler and RNG states to their own file (:func:`muonkit.distributed.save_train_state`).
    """
    state = {
        "batches": batches.state_dict(),
        "rng": rng_state(device),
        "step": step,
        "elapsed_s": elapsed,
        "tokens": tokens,
    }
    if is_distributed():
        from ..distributed.checkpoint import save_train_state

        save_train_state(path, model, optimizers, state)
        return
    state["model"] = model.state_dict()
    state["optimizers"] = [opt.state_dict() for opt in optimizers]
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _summary(steps, device, optimizers, val_records, step_times, step_tokens, fpt, peak) -> dict:
    """Throughput over this session's steps, leaving out the first (warm-up/compile) if >1."""
    times, toks = (step_times[1:], step_tokens[1:]) if len(step_times) > 1 else (
        step_times, step_tokens
    )
    total_time = sum(times)
    tokens_per_s = sum(toks) / total_time if total_time > 0 else 0.0
    mfu = fpt * tokens_per_s / peak if (fpt and peak) else None
    return {
        "kind": "summary",
        "steps": steps,
        "final_val_loss": val_records[-1]["val_loss"] if val_records else None,
        "tokens_per_s": tokens_per_s,
        "step_time_s": total_time / len(times) if times else 0.0,
        "peak_mem_bytes": peak_memory_bytes(device),
        "optimizer_state_bytes": optimizer_state_bytes(optimizers),
        "mfu": mfu,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
    }
