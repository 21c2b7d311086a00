"""Settings of a variant study (:class:`StudyConfig`, the ``muonkit variants`` flags) and its
arms (:class:`Arm`: one optimizer setting each)."""

from __future__ import annotations

from dataclasses import dataclass

from ..train.checks import check_number
from ..train.config import resolve_device
from ..train.trackers import resolve_trackers

STUDIES = ("large", "equal-memory", "rank-sweep", "hybrid")
DATASETS = {"mnist": 784, "cifar10": 3072}
ARM_KINDS = ("adamw", "muon", "lora_pre", "kronecker", "hybrid_kronecker")

STUDY_BOUNDS = {  # numeric StudyConfig fields (lists: each value), None-valued ones skipped
    "hidden": dict(integer=True, ge=1),
    "epochs": dict(integer=True, ge=1),
    "batch_size": dict(integer=True, ge=1),
    "lr": dict(gt=0),
    "adamw_lr": dict(gt=0),
    "momentum": dict(ge=0, lt=1),
    "rank": dict(integer=True, ge=1),
    "ranks": dict(integer=True, ge=1),
    "seeds": dict(integer=True, ge=0),
    "train_limit": dict(integer=True, ge=1),
    "threads": dict(integer=True, ge=1),
}


def _values(value) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


@dataclass
class StudyConfig:
    """Settings of one study run (the CLI flags)."""

    study: str
    dataset: str = "mnist"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (256, 128)
    epochs: int = 3
    batch_size: int = 256
    lr: float = 0.02
    adamw_lr: float = 1e-3
    momentum: float = 0.95
    rank: int = 16
    ranks: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    seeds: tuple[int, ...] = (0, 1)
    train_limit: int | None = None
    device: str = "auto"
    threads: int | None = None
    out: str | None = None  # None: runs/variants/<study>
    overwrite: bool = False  # replace the runs of an earlier study in ``out`` (else refused)
    trackers: tuple[str, ...] = ()  # experiment trackers of every run (default none)
    wandb_project: str = "muonkit"
    wandb_run_name: str | None = None  # the W&B group of the runs (None: the study's name)

    def __post_init__(self):
        for name, valid in (("study", STUDIES), ("dataset", tuple(DATASETS))):
            if getattr(self, name) not in valid:
                raise ValueError(
                    f"{name} must be one of {list(valid)}, got {getattr(self, name)!r}"
                )
        if not self.seeds or not self.ranks or not self.hidden:
            raise ValueError("--seeds, --ranks and --hidden need at least one value")
        for name, bounds in STUDY_BOUNDS.items():
            for value in _values(getattr(self, name)):
                check_number(f"--{name.replace('_', '-')}", value, **bounds)
        self.hidden, self.ranks, self.seeds = (
            tuple(self.hidden),
            tuple(self.ranks),
            tuple(self.seeds),
        )
        self.out = self.out or f"runs/variants/{self.study}"
        resolve_device(self.device)  # an unknown device fails before anything is written
        self.trackers = resolve_trackers(self.trackers)


@dataclass(frozen=True)
class Arm:
    """One optimizer setting of a study."""

    label: str
    kind: str  # one of ARM_KINDS
    rank: int | None = None

    @property
    def slug(self) -> str:
        return self.kind + (f"-r{self.rank}" if self.rank is not None else "")
