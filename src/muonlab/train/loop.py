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
  ``summary``), the same records sent to the experiment trackers (:mod:`muonlab.train.trackers`:
  TensorBoard when installed, W&B), a tqdm bar with loss and
  tokens/s; the summary has tokens/s, time per step, peak memory, optimizer state bytes, MFU,
  and what affects timing (torch threads, 1-minute load average at the start and end of the
  session, the CPU's timing flags from :func:`muonkit.hardware.machine_info`).
  ``elapsed_s`` counts the training steps only (evaluation and checkpoint time left out), and
  carries on across a resume; the summary's throughput leaves out the first step of a session
  (warm-up, compilation) when there are more;
* provenance: the config line's ``provenance`` (:func:`muonlab.train.provenance.provenance`:
  versions, git commit, device and its name, ISA flags, threads, dtype, Newton-Schulz dtype,
  command line, machine class) is the first session's; each resume writes a ``session``
  record at its start (its planned ``steps``, its provenance; ``machine_changed`` when its
  machine class differs from the first session's, with a warning line); every session ends
  with a ``session_end`` record (status, this process's CPU and wall seconds);
  :func:`muonlab.report.metrics.run_sessions` reads them back.

Structure: :func:`train` = :class:`Session` (device and dtype resolved once) -> ``restore``
(resume) -> per step ``train_step`` then ``after_step`` (evaluation, checkpoint) -> ``finish``
(summary). The pieces live in ``config`` (settings), ``files`` (the run directory: metrics,
checkpoints, the rules that keep runs from being lost), ``step`` (autocast, accumulation,
evaluation) and ``measure`` (state bytes, memory, MFU).

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
import functools
import math
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from muonkit.diagnostics import HealthMonitor, describe, param_names
from muonkit.distributed.env import is_distributed
from muonkit.hardware import load_average, machine_info
from muonkit.precision import slow_bf16
from muonkit.schedules import apply_schedules, lr_multiplier, muon_momentum

from .config import TrainConfig, TrainResult, resolve_device, resolve_dtype
from .files import (
    CHECKPOINT,
    CHECKPOINT_DIR,
    METRICS,
    RUN_MARKERS,
    MetricsLogger,
    RunWriteError,
    check_resume,
    check_same_run,
    drop_parked,
    load_checkpoint,
    load_train_state,
    prepare_out_dir,
    save_checkpoint,
    set_rng_state,
    unpark,
)
from .measure import default_peak_flops, group_lrs, summary_record
from .provenance import describe_class, machine_change, provenance
from .step import (
    accumulate_gradients,
    autocast_context,
    default_count_tokens,
    evaluate_batches,
    to_device,
)
from .trackers import build_trackers, resolve_trackers

__all__ = [  # the loop; and names its callers import from here (tests, experiments.runs)
    "CHECKPOINT",
    "METRICS",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "autocast_context",
    "resolve_dtype",
    "train",
]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`: the last finished step and the last checkpoint written
    or resumed from (``checkpoint`` None: there is none)."""

    def __init__(self, step: int, checkpoint: Path | None, checkpoint_step: int | None):
        super().__init__(f"training interrupted at step {step}")
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step


@dataclass
class Session:
    """One call of :func:`train`: the device and dtype it resolved (once), where its files
    go, and what it has done so far (``step``, ``elapsed``, ``tokens`` carry on across a resume;
    the lists hold this session's steps and evaluations only)."""

    cfg: TrainConfig
    device: torch.device
    dtype: torch.dtype
    out_dir: Path | None
    ckpt_path: Path | None
    step: int = 0
    elapsed: float = 0.0
    tokens: int = 0
    checkpoint_step: int | None = None
    summary: dict | None = None  # once written: the run's record is complete
    mfu_per_token_rate: float | None = None  # training FLOPs per token / peak FLOP/s
    train_losses: list[float] = field(default_factory=list)
    val_records: list[dict] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, cfg: TrainConfig, flops_per_token: float | None) -> Session:
        device = resolve_device(cfg.device)
        out_dir = None if cfg.out_dir is None else Path(cfg.out_dir)
        ckpt_name = CHECKPOINT_DIR if is_distributed() else CHECKPOINT
        ckpt_path = None if out_dir is None else out_dir / ckpt_name
        peak = cfg.peak_flops if cfg.peak_flops is not None else default_peak_flops(device)
        rate = flops_per_token / peak if (flops_per_token and peak) else None
        return cls(cfg, device, resolve_dtype(cfg.dtype, device), out_dir, ckpt_path,
                   mfu_per_token_rate=rate)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.dtype)

    @property
    def last_checkpoint(self) -> Path | None:
        return None if self.checkpoint_step is None else self.ckpt_path


def check_inputs(cfg, optimizers, batches, val_batches, evaluate) -> None:
    if not optimizers:
        raise ValueError("train() needs at least one optimizer")
    if val_batches is not None and evaluate is not None:
        raise ValueError("give val_batches or evaluate, not both")
    if val_batches is not None and len(val_batches) == 0:
        raise ValueError("val_batches is empty; give at least one batch or None")
    if (cfg.checkpoint_every or cfg.resume) and not hasattr(batches, "state_dict"):
        raise ValueError(
            "checkpoint_every/resume need a batch source with state_dict()/load_state_dict() "
            "(e.g. muonlab.data.text.TokenBatches) so a resumed run draws the same batches"
        )


def nothing_to_resume(out_dir: Path, checkpoint: str) -> FileNotFoundError:
    """The error of ``--resume`` where ``out_dir`` holds no ``checkpoint``: what it holds
    instead, and what to do (start a run; or replace the one without a checkpoint)."""
    found = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if not any(name in found for name in RUN_MARKERS):
        return FileNotFoundError(f"--resume: {out_dir} holds no run to continue; leave out "
                                 "--resume to start one there")
    return FileNotFoundError(
        f"--resume: {out_dir} holds no checkpoint ({checkpoint}) to continue from, only "
        f"{', '.join(found)} (a run writes one every --checkpoint-every N steps); pass "
        "--overwrite instead of --resume to start it again, or another --out"
    )


def restore(session: Session, model: nn.Module, optimizers, batches) -> None:
    """Load ``session.ckpt_path`` into the model, optimizers, batch source and RNG, after
    checking that resuming continues the run (:func:`check_resume`: nothing is changed
    otherwise)."""
    cfg, path = session.cfg, session.ckpt_path
    check_resume(cfg, session.out_dir, None)
    if not path.exists():
        raise nothing_to_resume(session.out_dir, path.name)
    if is_distributed():
        ckpt = load_train_state(path, model, optimizers)
        check_resume(cfg, session.out_dir, ckpt["step"])
    else:
        ckpt = load_checkpoint(path)
        check_resume(cfg, session.out_dir, ckpt["step"])
        model.load_state_dict(ckpt["model"])
        for opt, state in zip(optimizers, ckpt["optimizers"], strict=True):
            opt.load_state_dict(state)
    batches.load_state_dict(ckpt["batches"])
    set_rng_state(ckpt["rng"])
    session.step, session.elapsed, session.tokens = ckpt["step"], ckpt["elapsed_s"], ckpt["tokens"]
    session.checkpoint_step = session.step


def open_logger(session: Session, optimizer_name: str, run_config: dict | None,
                origin: dict, params: list[dict] | None = None) -> MetricsLogger:
    """The metrics of this run and its trackers (rank 0 only under torch.distributed), with its
    config line, its ``provenance`` ``origin`` and its optimizers' ``params`` tables
    (:func:`muonkit.describe`); a resumed run's config line is in its file already (it goes to
    the trackers), and this session's ``origin`` goes to a ``session`` line
    (:func:`resume_session`)."""
    cfg = session.cfg
    main_process = not is_distributed() or torch.distributed.get_rank() == 0
    out_dir = session.out_dir if main_process else None
    resume_step = session.step if cfg.resume else None
    trackers = []
    if out_dir is not None:
        wandb_options = dict(project=cfg.wandb_project, name=cfg.wandb_run_name or cfg.run_name,
                             group=cfg.wandb_group)
        trackers = build_trackers(resolve_trackers(cfg.trackers), out_dir, resume_step,
                                  wandb_options)
    logger = MetricsLogger(out_dir, resume_step, trackers)
    config = logger.config
    # which Newton-Schulz precision runs, and why, on the parameters' device (Muon only)
    ns_precision = {"ns_precision": origin["ns_dtype"]} if origin["ns_dtype"] else {}
    if config is not None:
        logger.track(config)
        resume_session(session, logger, config, origin)
    else:
        logger.write(
            {
                "kind": "config",
                "run": cfg.run_name,
                "optimizer": optimizer_name,
                "seed": cfg.seed,
                "config": {**dataclasses.asdict(cfg), **(run_config or {}), **ns_precision},
                "provenance": origin,
                **({"params": params} if params else {}),
            }
        )
    return logger


def resume_session(session: Session, logger: MetricsLogger, config: dict, origin: dict) -> None:
    """A resumed session's ``session`` record: where it starts, the ``steps`` it plans (a
    larger ``--steps`` than the config line's trains on), its provenance ``origin``, and
    whether its machine class differs from the one the run's ``config`` line records for its
    first session (then one warning line)."""
    first = (config.get("provenance") or {}).get("machine_class")
    change = machine_change(first, origin["machine_class"])
    logger.write({"kind": "session", "start_step": session.step, "steps": session.cfg.steps,
                  "provenance": origin, **change})
    if change["machine_changed"]:
        print(f"muonkit: warning: {session.cfg.run_name} started on {describe_class(first)} "
              f"and resumes on {describe_class(origin['machine_class'])}: its numbers can "
              "differ from a run on one machine (recorded as machine_changed)", file=sys.stderr)


def end_session(session: Session, logger: MetricsLogger, status: str, clock: tuple) -> None:
    """This session's ``session_end`` record: how it ended ("finished", "stopped" at
    ``stop_at``, "interrupted", "failed"), the step reached, and this process's CPU seconds
    (all its threads) and wall seconds since :func:`train` was called (``clock``)."""
    wall, cpu = clock
    logger.write({"kind": "session_end", "end_step": session.step, "status": status,
                  "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall})


def train_step(session: Session, model, forward_model, optimizers, batches, loss_fn,
               count_tokens) -> dict:
    """Optimizer step ``session.step + 1``: schedules, ``grad_accum`` micro-batches, clipping,
    ``step()`` of every optimizer; returns its ``train`` record and counts it in ``session``."""
    cfg, step, device = session.cfg, session.step, session.device
    t0 = time.perf_counter()
    mult = lr_multiplier(step, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                         decay=cfg.decay, min_lr_ratio=cfg.min_lr_ratio)
    momentum = None
    if cfg.momentum_warmup_steps:
        momentum = muon_momentum(step, start=cfg.momentum_start, end=cfg.momentum_end,
                                 warmup_steps=cfg.momentum_warmup_steps)
    for opt in optimizers:
        apply_schedules(opt, step, lr_mult=mult, muon_momentum=momentum)
    micro = [to_device(batches.next_batch(), device) for _ in range(cfg.grad_accum)]
    loss = accumulate_gradients(forward_model, loss_fn, micro, session.autocast).item()
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
    session.step += 1
    session.elapsed += dt
    session.tokens += n_tokens
    session.step_times.append(dt)
    session.step_tokens.append(n_tokens)
    session.train_losses.append(loss)
    record = {
        "kind": "train",
        "step": session.step,
        "loss": loss,
        "lr": optimizers[0].param_groups[0]["lr"],
        "lr_groups": group_lrs(optimizers),
        "tokens": session.tokens,
        "elapsed_s": session.elapsed,
        "tokens_per_s": n_tokens / dt,
    }
    if grad_norm is not None:
        record["grad_norm"] = grad_norm
    if session.mfu_per_token_rate is not None:
        record["mfu"] = record["tokens_per_s"] * session.mfu_per_token_rate
    return record



def run_eval(session: Session, model, evaluator, logger: MetricsLogger, on_eval) -> None:
    """Evaluate at ``session.step``: a ``val`` record, then ``on_eval``."""
    if evaluator is None:
        return
    record = {"kind": "val", "step": session.step, **evaluator(model),
              "elapsed_s": session.elapsed}
    if "val_loss" not in record:
        raise ValueError("evaluate(model) must return a dict with 'val_loss'")
    logger.write(record)
    session.val_records.append(record)
    if on_eval is not None:
        on_eval(session.step, record, logger)


def after_step(session: Session, model, optimizers, batches, evaluator, logger, on_eval) -> None:
    """Evaluation (every ``eval_every`` steps and at the last) and checkpoint, when due; the
    last step's checkpoint comes after the summary (:func:`train`), so that a checkpoint of
    the last step means a complete metrics file, and a run whose summary could not be written
    resumes from the checkpoint before."""
    cfg, done = session.cfg, session.step
    if eval_due(cfg, done):
        run_eval(session, model, evaluator, logger, on_eval)
    if checkpoint_due(cfg, done) and done < cfg.steps:
        checkpoint(session, model, optimizers, batches)


def eval_due(cfg: TrainConfig, step: int) -> bool:
    return bool(cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps


def start_diagnostics(session: Session, model, optimizers) -> tuple[list, list[dict]]:
    """The :class:`~muonkit.diagnostics.HealthMonitor` of each optimizer and its parameter
    table (:func:`muonkit.describe`), printed with ``progress`` on (folded for big models;
    whole in the config record); one warning line each (rank 0) for a Muon set-up that does
    less than asked, Muon parameters without gradients in the first steps, bf16 autocast
    on a CPU without native bf16, and an LR warmup as long as the run (the default --warmup
    on a short run)."""
    monitors, tables = [], []
    main_process = not is_distributed() or torch.distributed.get_rank() == 0

    def say(message: str) -> None:
        if main_process:
            print(f"muonkit: warning: {message}", file=sys.stderr, flush=True)

    for opt in optimizers:
        names = param_names(opt, model)
        monitors.append(HealthMonitor(opt, names, min(10, session.cfg.steps), say))
        description = describe(opt, model, warn=False)
        tables.append(description.as_record())
        if session.cfg.progress and main_process:
            print(description.table(max_rows=20, warnings=False), flush=True)
        for message in description.warnings:
            say(message)
    slow = slow_bf16("--dtype bfloat16", session.dtype, session.device)
    if slow:
        say(f"{slow}; --dtype float32 is faster here")
    cfg = session.cfg
    if cfg.warmup_steps >= cfg.steps:  # given on the command line, it is refused before
        say(f"the LR warmup (--warmup {cfg.warmup_steps}) is not shorter than the run (--steps "
            f"{cfg.steps}): the LR never reaches its peak and never decays; give a smaller "
            "--warmup")
    return monitors, tables


def write_health(session: Session, monitors, logger: MetricsLogger) -> None:
    """At an evaluation after a step: the ``health`` record of the optimizers' steps
    (:meth:`~muonkit.diagnostics.HealthMonitor.record`: the fraction of steps each Muon
    group stepped, the update RMS per group and the Newton-Schulz error of one matrix at this
    step); with several optimizers, one entry each under ``optimizers``."""
    if session.step == 0 or not eval_due(session.cfg, session.step):
        return
    records = [m.record() for m in monitors]
    body = records[0] if len(records) == 1 else {"optimizers": records}
    logger.write({"kind": "health", "step": session.step, **body})


def checkpoint_due(cfg: TrainConfig, step: int) -> bool:
    return bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0


def checkpoint(session: Session, model, optimizers, batches) -> None:
    save_checkpoint(session.ckpt_path, model, optimizers, batches, session.step,
                    session.elapsed, session.tokens, session.device)
    session.checkpoint_step = session.step


def how_to_continue(session: Session) -> str:
    """What a run stopped by a failed write of its files (:class:`RunWriteError`: a full disk)
    still has, and the command that continues it."""
    fix = "free space (or fix the disk) and run the same command"
    kept = f"the run's checkpoint of step {session.checkpoint_step} is kept"
    if session.summary is not None:  # only the last step's checkpoint is missing
        done = f"the run is complete (its summary is in {METRICS})"
        if session.checkpoint_step is None:
            return done
        return f"{done} and {kept}: {fix} with --resume and a larger --steps to train on"
    if session.checkpoint_step is None:
        return f"the run has no checkpoint to resume from: {fix} with --overwrite to start again"
    return f"{kept}: {fix} with --resume to continue from it"


@contextlib.contextmanager
def saying_how_to_continue(session: Session):
    """A failed write of the run's files ends the run with one message that also says what
    continues it (:func:`how_to_continue`)."""
    try:
        yield
    except RunWriteError as e:
        raise RunWriteError(f"{e}; {how_to_continue(session)}") from None


def make_evaluator(evaluate, val_batches, loss_fn, session: Session):
    """``evaluate`` itself, or the mean loss over the fixed ``val_batches``, or None."""
    if evaluate is not None or val_batches is None:
        return evaluate
    return functools.partial(evaluate_batches, loss_fn=loss_fn, batches=val_batches,
                             device=session.device, autocast=session.autocast)


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
    flag_names: Mapping[str, str] | None = None,
    derived: Collection[str] = (),
) -> TrainResult:
    """Train ``model`` for ``config.steps`` optimizer steps; see the module docstring.

    ``optimizer_name`` and ``run_config`` (model/data settings) go into the metrics' config
    line. ``flops_per_token`` (training FLOPs per token, e.g. ``GPT.estimate_flops_per_token``)
    with a peak FLOP/s gives MFU. ``on_eval(step, val_record, logger)`` runs after each
    evaluation (e.g. to write extra records with ``logger.write``). A resume whose settings
    (``config``, ``optimizer_name``, ``run_config``) differ from the run's recorded ones, other
    than the config's fields marked :func:`~muonlab.train.config.may_differ_on_resume`, is
    refused before anything is loaded (:class:`~muonlab.train.files.ResumeMismatch`), each
    setting named as ``flag_names`` maps its config path (e.g. ``{"warmup_steps":
    "--warmup"}``; else ``--`` + its last part); ``derived``: the paths of ``run_config`` that
    follow from other settings (:func:`~muonlab.train.files.resume_differences`).
    """
    clock = (time.perf_counter(), time.process_time())
    cfg = config
    optimizers = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
    check_inputs(cfg, optimizers, batches, val_batches, evaluate)
    session = Session.start(cfg, flops_per_token)
    model.to(session.device)
    forward_model = torch.compile(model, backend=cfg.compile_backend) if cfg.compile else model
    evaluator = make_evaluator(evaluate, val_batches, loss_fn, session)
    torch.manual_seed(cfg.seed)
    if cfg.resume and session.out_dir is not None and not session.out_dir.exists():
        raise nothing_to_resume(session.out_dir, session.ckpt_path.name)  # nothing created
    with saying_how_to_continue(session):
        parked = session.out_dir is not None and prepare_out_dir(
            session.out_dir, cfg.resume, cfg.overwrite
        )
        try:
            if cfg.resume and session.out_dir is not None:
                given = {"optimizer": optimizer_name, **dataclasses.asdict(cfg),
                         **(run_config or {})}
                check_same_run(session.out_dir, given, flag_names or {}, derived)
                restore(session, model, optimizers, batches)
            world = torch.distributed.get_world_size() if is_distributed() else 1
            origin = provenance(session.device, session.dtype, optimizers, world)
            monitors, tables = start_diagnostics(session, model, optimizers)
            logger = open_logger(session, optimizer_name, run_config, origin, tables)
        except BaseException:
            if parked:
                unpark(session.out_dir)
            raise
        machine = machine_info(session.device)  # threads, load, CPU flags at the start
        if session.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(session.device)
        progress = _progress_bar(cfg, session.step)
        model.train()
        status = "failed"  # how this session ends, until its record is written (then None)
        completed = False
        try:
            if session.step == 0:
                run_eval(session, model, evaluator, logger, on_eval)
            while session.step < min(cfg.steps, cfg.stop_at or cfg.steps):
                for monitor in monitors if eval_due(cfg, session.step + 1) else ():
                    monitor.arm(sample=session.step // max(cfg.eval_every, 1))
                record = train_step(session, model, forward_model, optimizers, batches, loss_fn,
                                    count_tokens)
                logger.write(record)
                if parked:  # the new run has taken a step: the one it replaces goes
                    drop_parked(session.out_dir)
                    parked = False
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.4f}",
                                     tok_s=f"{record['tokens_per_s']:,.0f}")
                write_health(session, monitors, logger)
                after_step(session, model, optimizers, batches, evaluator, logger, on_eval)
            end_session(session, logger, "finished" if session.step == cfg.steps else "stopped",
                        clock)
            status = None
            if parked:
                drop_parked(session.out_dir)
                parked = False
            summary = finish(session, optimizers, flops_per_token, machine)
            logger.write(summary)
            session.summary = summary
            if session.step == cfg.steps and checkpoint_due(cfg, session.step):
                checkpoint(session, model, optimizers, batches)
            completed = True
        except KeyboardInterrupt:
            if status is not None:
                status = "interrupted"
            raise TrainingInterrupted(
                session.step, session.last_checkpoint, session.checkpoint_step
            ) from None
        finally:
            progress.close()
            for monitor in monitors:
                monitor.close()
            if not completed:  # e.g. a diverged run, a full disk
                if status is not None:
                    with contextlib.suppress(OSError):  # its record, if it can be written
                        end_session(session, logger, status, clock)
                logger.close(quiet=True)  # the trackers still end their runs
                if parked:
                    unpark(session.out_dir)
        logger.close()
        return TrainResult(session.step, session.train_losses, session.val_records, summary,
                           logger.path)


def finish(session: Session, optimizers, flops_per_token, machine: dict) -> dict:
    """The summary record of this session, with what affected its timing."""
    cfg, device = session.cfg, session.device
    peak_flops = cfg.peak_flops if cfg.peak_flops is not None else default_peak_flops(device)
    summary = summary_record(
        session.step, device, optimizers, session.val_records, session.step_times,
        session.step_tokens, flops_per_token, peak_flops,
    )
    summary.update(
        threads=machine["torch_threads"],
        load_1min_start=machine["load_1min"],
        load_1min_end=load_average(),
        cpu_flags=machine["cpu_flags"],
        cpu_native_bf16=machine["cpu_native_bf16"],
    )
    return summary


def _progress_bar(cfg: TrainConfig, start_step: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.steps, initial=start_step, desc=cfg.run_name, disable=not cfg.progress,
        dynamic_ncols=True,
    )
