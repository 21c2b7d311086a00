"""Settings of a variant study (:class:`StudyConfig`, the ``muonkit variants`` flags) and its
arms (:class:`Arm`: one optimizer setting each)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from muonkit.options import MuonOptions
from muonkit.registry import OPTIMIZER_NAMES, canonical_name

from ..train.config import resolve_device
from ..train.settings import changed_from_default, check_settings, drop_unset, setting
from ..train.trackers import resolve_trackers

STUDIES = ("large", "equal-memory", "rank-sweep", "hybrid", "tuned")
MIXINGS = ("momentum_form", "gradient_heavy")  # the Muon family's ``mixing`` option
DATASETS = {"mnist": 784, "cifar10": 3072}
ARM_KINDS = OPTIMIZER_NAMES  # an arm's kind is a registry name (muonkit.registry)

# Defaults that depend on the study: the tuned study's LRs are the centres of its grids
# (AdamW's nearer the 3e-3..1e-2 that issue 17 measured), and it runs 3 seeds.
STUDY_DEFAULTS = {
    "tuned": dict(adamw_lr=8e-3, seeds=(0, 1, 2)),
    None: dict(adamw_lr=1e-3, seeds=(0, 1)),
}


@dataclass
class StudyConfig:
    """Settings of one study run (the CLI flags). ``adamw_lr`` and ``seeds`` default by study
    (:data:`STUDY_DEFAULTS`). The tuned study (:mod:`muonlab.experiments.variant_tuned`) takes
    ``lr``/``adamw_lr`` as grid centres and also uses ``jobs``, ``grid_points``,
    ``sweep_extend``, ``sweep_refine`` and ``val_size``; the others ignore them.
    ``muon_options``: further :class:`muonkit.MuonOptions` of every Muon-family arm (the
    ``--ns-*`` flags)."""

    study: str = setting("study", choices=STUDIES)
    dataset: str = setting("dataset", choices=tuple(sorted(DATASETS)))
    data_dir: str | None = setting("data_dir")
    hidden: tuple[int, ...] = setting("hidden")
    epochs: int = setting("epochs")
    batch_size: int = setting("batch_size", default=256)
    lr: float = setting("mlp_lr")
    adamw_lr: float | None = setting("adamw_lr")
    momentum: float = setting("momentum")
    rank: int = setting("rank")
    ranks: tuple[int, ...] = setting("ranks")
    seeds: tuple[int, ...] | None = setting("seeds", default=None)
    train_limit: int | None = setting("train_limit")
    device: str = setting("device")
    threads: int | None = setting("threads")
    out: str | None = setting("out")  # None: runs/variants/<study>
    overwrite: bool = setting("overwrite")  # replace the runs of an earlier study in ``out``
    trackers: tuple[str, ...] = ()  # experiment trackers of every run (default none)
    wandb_project: str = "muonkit"
    wandb_run_name: str | None = None  # the W&B group of the runs (None: the study's name)
    jobs: int = setting("jobs")  # runs at once (tuned)
    grid_points: int = setting("grid_points")  # factor-2 LR grid size per arm (tuned)
    sweep_extend: int = setting("sweep_extend")  # max points added past each edge (tuned)
    sweep_refine: int = setting("sweep_refine")  # refinement rounds (tuned and gpt)
    val_size: int = setting("val_size")  # examples held out to choose the LRs (tuned)
    muon_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.study is None:
            raise ValueError(f"which study? one of {', '.join(STUDIES)}")
        check_settings(self)
        defaults = STUDY_DEFAULTS.get(self.study, STUDY_DEFAULTS[None])
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.hidden, self.ranks, self.seeds = (
            tuple(self.hidden),
            tuple(self.ranks),
            tuple(self.seeds),
        )
        self.out = self.out or f"runs/variants/{self.study}"
        if self.study != "tuned":
            ignored = changed_from_default(self, ("grid_points", "sweep_extend", "sweep_refine"))
            if ignored:
                raise ValueError(f"--{ignored[0].replace('_', '-')} is a setting of the LR "
                                 f"sweeps of `muonkit variants tuned`; the {self.study} study "
                                 "runs fixed LRs")
        resolve_device(self.device)  # an unknown device fails before anything is written
        self.trackers = resolve_trackers(self.trackers)
        own = sorted({"momentum", "mixing"} & set(self.muon_options))
        if own:
            raise ValueError(f"muon_options {own}: set by --momentum and the arms")
        MuonOptions(**self.muon_options)


@dataclass(frozen=True)
class Arm:
    """One optimizer setting of a study (``mixing``: the Muon family's momentum mixing)."""

    label: str
    kind: str  # a registry name (ARM_KINDS); a former spelling (records) is read as it
    rank: int | None = None
    mixing: str = "momentum_form"  # one of MIXINGS; ignored by AdamW
    folder: str | None = None  # the name an older study's directories gave it (its slug then)

    def __post_init__(self):
        object.__setattr__(self, "kind", canonical_name(self.kind))
        if self.kind not in ARM_KINDS:
            raise ValueError(f"optimizer kind must be one of {list(ARM_KINDS)}, "
                             f"got {self.kind!r}")

    @property
    def slug(self) -> str:
        if self.folder is not None:
            return self.folder
        rank = f"-r{self.rank}" if self.rank is not None else ""
        return self.kind + rank + ("-gh" if self.mixing == "gradient_heavy" else "")


# Not saved in study.json: where and how the runs execute, and where they are logged.
RUNTIME = ("out", "data_dir", "jobs", "threads", "overwrite", "trackers", "wandb_project",
           "wandb_run_name")
# Saved but may differ on a rerun (a larger cap continues the sweeps, reusing finished runs).
MAY_CHANGE = ("sweep_extend",)


def settings(cfg: StudyConfig) -> dict:
    """The settings that define the study's results (JSON types; ``muon_options`` only where
    they change a default and ``sweep_refine`` only when given, so a study begun before those
    flags continues)."""
    kept = drop_unset({k: v for k, v in dataclasses.asdict(cfg).items()
                       if k not in (*RUNTIME, "muon_options")}, {"sweep_refine": 0})
    changed = MuonOptions.changes(cfg.muon_options)
    return json.loads(json.dumps({**kept, "muon_options": changed} if changed else kept))
