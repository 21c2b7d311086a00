"""Settings and result of a training run, and the device and dtype they resolve to."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from muonkit.schedules import DECAYS

from .checks import check_number
from .trackers import resolve_trackers

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}

RESUME_KEY = "may_differ_on_resume"  # dataclass field metadata: why a resume may change it


def may_differ_on_resume(why: str, default=dataclasses.MISSING):
    """A config field that cannot change what a run computes (where files go, what is shown,
    when a session stops, which machine runs it): ``--resume`` may give it another value.
    Every field without this mark must equal the run's on resume
    (:func:`muonlab.train.files.check_same_run`), so a field added later is compared unless
    it says why not; ``why`` is shown in the documentation of ``--resume``."""
    return field(default=default, metadata={RESUME_KEY: why})


def resume_may_differ(config_class) -> dict[str, str]:
    """{field name: why} of the fields of the dataclass ``config_class`` that a resume may
    change (:func:`may_differ_on_resume`)."""
    return {f.name: f.metadata[RESUME_KEY] for f in dataclasses.fields(config_class)
            if RESUME_KEY in f.metadata}


# the reasons shared by TrainConfig and the configs built on it
WHERE_SHOWN = "what is shown or copied to the trackers, not what is computed"
MACHINE = ("the machine, recorded in each session's provenance (a resume on another machine "
           "class is flagged machine_changed)")
STEPS = ("a larger value trains on, the LR schedule then spanning the new length (the "
         "session line records it); one below the steps already done is refused")
MFU = "the peak FLOP/s that MFU divides by"


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
        out_dir: where metrics.jsonl, ckpt.pt and the trackers' files go (None: nothing
            written). A directory that already holds a run is refused unless ``resume`` or
            ``overwrite`` is set.
        resume: continue from ``out_dir/ckpt.pt``; a run that has trained all ``steps``
            raises :class:`RunComplete` and changes nothing.
        overwrite: replace the run files already in ``out_dir`` (``RUN_FILES``) and start
            anew; the old ones are kept aside until the new run's first step (they come back
            if it fails before), see :func:`muonlab.train.files.prepare_out_dir`.
        stop_at: end this session after this many steps (the schedule still spans ``steps``),
            e.g. to split a run over time-limited jobs; continue it with ``resume``.
        device: "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (bf16 autocast on CUDA, fp32 on CPU), "float32", "bfloat16".
        compile, compile_backend: wrap the model in ``torch.compile(backend=...)``.
        progress: tqdm bar.
        trackers: experiment trackers besides metrics.jsonl, names of
            :data:`muonlab.train.trackers.TRACKERS` ("tensorboard", "wandb"; "none" or ()
            for none); None: TensorBoard when installed. One not installed is an ImportError.
        wandb_project, wandb_run_name, wandb_group: the W&B run's project, name (None:
            ``run_name``) and group (None: none).
        peak_flops: the device's peak FLOP/s for MFU; None: a known GPU's bf16 peak, else no MFU.
        seed: recorded in the metrics, and seeds torch's global RNG (dropout) at the start.

    On ``resume`` every field must equal the run's recorded one except those marked
    :func:`may_differ_on_resume` (where files go, what is shown, ``steps`` to train on, the
    device).
    """

    steps: int = may_differ_on_resume(STEPS)
    grad_accum: int = 1
    warmup_steps: int = 0
    decay: str = "cosine"
    min_lr_ratio: float = 0.1
    momentum_warmup_steps: int = 0
    momentum_start: float = 0.85
    momentum_end: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 0
    checkpoint_every: int = may_differ_on_resume("how often the state is saved", 0)
    out_dir: str | None = may_differ_on_resume("where the run is", None)
    run_name: str = may_differ_on_resume(WHERE_SHOWN, "run")
    resume: bool = may_differ_on_resume("how this session starts", False)
    overwrite: bool = may_differ_on_resume("how this session starts", False)
    stop_at: int | None = may_differ_on_resume("when this session ends", None)
    device: str = may_differ_on_resume(MACHINE, "auto")
    dtype: str = "auto"
    compile: bool = False
    compile_backend: str = "inductor"
    progress: bool = may_differ_on_resume(WHERE_SHOWN, True)
    trackers: tuple[str, ...] | None = may_differ_on_resume(WHERE_SHOWN, None)
    wandb_project: str = may_differ_on_resume(WHERE_SHOWN, "muonkit")
    wandb_run_name: str | None = may_differ_on_resume(WHERE_SHOWN, None)
    wandb_group: str | None = may_differ_on_resume(WHERE_SHOWN, None)
    peak_flops: float | None = may_differ_on_resume(MFU, None)
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
        if self.trackers is not None:
            self.trackers = resolve_trackers(
                (self.trackers,) if isinstance(self.trackers, str) else self.trackers)
        if (self.checkpoint_every or self.resume) and self.out_dir is None:
            raise ValueError("checkpoint_every/resume need TrainConfig.out_dir (where ckpt.pt is)")



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
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use "
                         "--device cpu (or auto)")
    return dev



def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """A ``DTYPES`` key (checked by :class:`TrainConfig`) as a torch dtype on ``device``:
    "auto" is bf16 on CUDA (mixed precision via autocast), fp32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]

