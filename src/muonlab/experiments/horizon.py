"""`muonkit horizon`: does Muon's lead over AdamW survive longer training?

The same GPT, data and seeds are trained at several horizons (numbers of steps), each run
with its own full schedule (linear warmup over ``warmup_frac`` of the run, cosine decay to
``min_lr_ratio``; Muon momentum warmup over ``momentum_warmup_frac``): a short run is not a
prefix of a long one. Every contender (:data:`CONTENDERS`) is tuned at every horizon with the
edge-aware sweep of :mod:`muonlab.experiments.sweep` (a factor-2 grid centred on the previous
horizon's best, seed ``seeds[0]``, full length), then trained at the chosen LR with the other
seeds; the seed-0 sweep run at the chosen LR is the seed-0 run. The hybrids' AdamW groups take
the LR AdamW chose at the same horizon (or share the swept LR, or a fixed one).

Every run is its own process at ``threads`` torch threads, ``jobs`` at a time, horizons in
order; each logs weight and update RMS of the hidden matrices
(:class:`muonlab.experiments.rms.RMSMonitor`) and checkpoints, so a rerun with the same
``--out`` skips finished runs and resumes unfinished ones. Layout::

    OUT/study.json                          the settings (a rerun must match them)
    OUT/sweeps.json                         each sweep's grid, extensions and choice
    OUT/commands.txt                        every command that ran the study
    OUT/h<H>/<contender>/lr<lr>-s<seed>/    metrics.jsonl, sessions.jsonl (CPU time), ckpt.pt

:func:`muonlab.report.horizon.build_horizon_report` writes ``report.md`` and the figures.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from muonkit.options import MuonOptions

from ..data.text import BUNDLED
from ..train.checks import check_number
from ..train.config import resolve_device
from ..train.files import append_line, setting_name, write_whole
from ..train.gpt import load_gpt_data
from ..train.loop import TrainConfig
from ..train.trackers import resolve_trackers
from .runs import RunSpec, SlotPool, check_same_study, run_concurrently, run_isolated
from .sweep import factor_grid, run_sweep


@dataclass(frozen=True)
class Contender:
    """One optimizer setting. ``knob``: the option the swept LR sets ("lr" for AdamW,
    "muon_lr" for a hybrid, "shared" for lr = muon_lr); ``center``: the first horizon's grid
    centre (None: not tuned, ``options`` fixed); ``aux``: the hybrid's AdamW LR, "adamw" for
    the one AdamW chose at the same horizon, "shared" for the swept LR, or a number."""

    optimizer: str
    knob: str
    center: float | None
    options: dict
    aux: str | float = "adamw"
    about: str = ""


CONTENDERS = {
    "adamw": Contender("adamw", "lr", 8e-3, {}, about="nanoGPT's AdamW (wd 0.1)"),
    "muon": Contender("muon", "muon_lr", 0.02, {"muon_weight_decay": 0.0},
                      about="Muon hybrid, no weight decay on the Muon matrices"),
    "muon-wd": Contender("muon", "muon_lr", 0.02, {"muon_weight_decay": 0.1},
                         about="Muon hybrid, decoupled wd 0.1 x lr on the Muon matrices"),
    "muon-moonlight": Contender(
        "muon", "shared", 8e-3, {"lr_scaling": "moonlight", "muon_weight_decay": 0.1},
        aux="shared", about="Muon with lr_scaling='moonlight' sharing AdamW's LR, wd 0.1"),
    "normuon": Contender("normuon", "muon_lr", 0.02, {"muon_weight_decay": 0.1},
                         about="NorMuon hybrid (Li et al. 2025), decoupled wd 0.1 x lr"),
    "muon-seed": Contender(
        "muon", "muon_lr", None, {"muon_lr": 0.02, "momentum": 0.95, "muon_weight_decay": 0.0},
        aux=3e-4, about="the seed study's Muon: lr 0.02, momentum 0.95, aux AdamW 3e-4, no wd"),
}


# Bounds of the numeric settings (:func:`muonlab.train.checks.check_number`).
BOUNDS = {
    **{k: {"ge": 1, "integer": True} for k in (
        "horizons", "batch_size", "block_size", "eval_batches", "evals_per_run", "grid_points",
        "jobs", "threads")},
    "seeds": {"ge": 0, "integer": True}, "sweep_extend": {"ge": 0, "integer": True},
    "warmup_frac": {"ge": 0, "le": 1}, "momentum_warmup_frac": {"ge": 0, "le": 1},
    "min_lr_ratio": {"ge": 0, "le": 1}, "grad_clip": {"ge": 0},
}


@dataclass
class HorizonConfig:
    """The study's settings (everything but ``RUNTIME``: ``out``, ``jobs``, ``threads``,
    ``contenders`` and the trackers, must match on a rerun into the same ``out``). Every run
    logs to ``trackers`` (default none); W&B runs are grouped under ``wandb_run_name`` (None:
    the name of ``out``). ``muon_options``: :class:`muonkit.MuonOptions` of every Muon-family
    contender (the ``--ns-*`` flags; a contender's own options win). ``table``: the contenders
    a study of this kind can run (a subclass runs another table, e.g. the variant study of
    :mod:`muonlab.experiments.variants_gpt`)."""

    table: ClassVar[dict[str, Contender]] = CONTENDERS

    out: str = "runs/horizon"
    horizons: list[int] = field(default_factory=lambda: [250, 800, 2500])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    contenders: list[str] = field(default_factory=lambda: list(CONTENDERS))
    preset: str = "tiny"
    data: str = BUNDLED
    batch_size: int = 12
    block_size: int | None = None
    model_overrides: dict = field(default_factory=dict)
    eval_batches: int = 20
    evals_per_run: int = 10
    warmup_frac: float = 0.05
    momentum_warmup_frac: float = 0.15
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grid_points: int = 3
    sweep_extend: int = 2
    device: str = "cpu"
    jobs: int = 1
    threads: int = 1
    trackers: tuple[str, ...] = ()
    wandb_project: str = "muonkit"
    wandb_run_name: str | None = None
    muon_options: dict = field(default_factory=dict)

    RUNTIME = ("out", "jobs", "threads", "contenders", "trackers", "wandb_project",
               "wandb_run_name")
    # how messages name a setting whose flag is not "--" + its name (files.setting_name)
    FLAG_NAMES: ClassVar[dict[str, str]] = {"study": "the kind of study"}

    def __post_init__(self) -> None:
        for name, bounds in BOUNDS.items():
            values = getattr(self, name)
            for value in values if isinstance(values, list) else [values]:
                if value is not None:
                    check_number(f"--{name.replace('_', '-')}", value, **bounds)
        resolve_device(self.device)  # an unknown device fails before anything is written
        self.trackers = resolve_trackers(self.trackers)
        unknown = sorted(set(self.contenders) - set(self.table))
        if unknown:
            raise ValueError(f"unknown contender(s) {unknown}; valid: {list(self.table)}")
        horizons = setting_name("horizons", self.FLAG_NAMES)
        if len(self.horizons) < 1 or min(self.horizons) < self.evals_per_run:
            raise ValueError(f"{horizons} must be at least "
                             f"{setting_name('evals_per_run', self.FLAG_NAMES)} "
                             f"({self.evals_per_run}), got {self.horizons}")
        if sorted(self.horizons) != list(self.horizons):
            raise ValueError(f"{horizons} must be increasing, got {self.horizons}")
        if not self.seeds or self.jobs < 1 or self.threads < 1 or self.grid_points < 1:
            raise ValueError("need >= 1 seed, jobs >= 1, threads >= 1, grid_points >= 1")
        MuonOptions(**self.muon_options)

    def study(self) -> dict:
        """The settings that define the study's results (``muon_options`` only where they
        change a default, so a study begun before the ``--ns-*`` flags continues)."""
        kept = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in (*self.RUNTIME, "muon_options")}
        changed = MuonOptions.changes(self.muon_options)
        return {**kept, "muon_options": changed} if changed else kept

    def train_config(self, steps: int, seed: int, out_dir: Path, muon: bool) -> TrainConfig:
        every = max(1, steps // self.evals_per_run)
        return TrainConfig(
            steps=steps, warmup_steps=round(self.warmup_frac * steps), decay="cosine",
            min_lr_ratio=self.min_lr_ratio, grad_clip=self.grad_clip,
            momentum_warmup_steps=round(self.momentum_warmup_frac * steps) if muon else 0,
            eval_every=every, checkpoint_every=2 * every, out_dir=str(out_dir),
            run_name=f"{out_dir.parent.name}-{out_dir.name}-h{steps}", device=self.device,
            progress=False, seed=seed, trackers=self.trackers, wandb_project=self.wandb_project,
            wandb_group=self.wandb_run_name or Path(self.out).name,
        )


def run_dir(out: Path, horizon: int, name: str, lr: float, seed: int) -> Path:
    return out / f"h{horizon}" / name / f"lr{lr:g}-s{seed}"


def optimizer_options(c: Contender, lr: float, aux_lr: float | None,
                      muon_options: dict | None = None) -> dict:
    """:func:`muonlab.train.gpt.gpt_optimizer` options of contender ``c`` at swept LR ``lr``;
    ``muon_options`` go to a Muon-family contender (its own options win)."""
    opts = {"lr": lr, "betas": (0.9, 0.95), "weight_decay": 0.1}
    if c.optimizer == "adamw":
        return opts
    opts.update({**(muon_options or {}), **c.options})
    if c.center is not None:
        opts["muon_lr"] = lr
    opts["lr"] = lr if c.aux == "shared" else (c.aux if isinstance(c.aux, float) else aux_lr)
    return opts


class Study:
    """The runs of one study directory; contenders run in threads sharing one slot pool."""

    def __init__(self, cfg: HorizonConfig, log=print):
        self.cfg, self.log, self.out = cfg, log, Path(cfg.out)
        self.pool = SlotPool(cfg.jobs)
        self.lock = threading.Lock()
        self.adamw_lr: dict[int, float] = {}
        self.adamw_ready = {h: threading.Event() for h in cfg.horizons}
        path = self.out / "sweeps.json"
        self.sweeps: dict = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, h: int, lr: float, seed: int, aux: float | None, phase: int) -> float:
        c, cfg = self.cfg.table[name], self.cfg
        out_dir = run_dir(self.out, h, name, lr, seed)
        kwargs = dict(
            optimizer=c.optimizer, preset=cfg.preset, data=cfg.data, batch_size=cfg.batch_size,
            block_size=cfg.block_size, eval_batches=cfg.eval_batches,
            model_overrides=dict(cfg.model_overrides),
            optimizer_options=optimizer_options(c, lr, aux, cfg.muon_options),
            train_config=cfg.train_config(h, seed, out_dir, c.optimizer != "adamw"),
        )
        spec = RunSpec(kwargs, f"h{h} {name} lr{lr:g} s{seed}", cfg.threads, log_rms=True)
        priority = (cfg.horizons.index(h), phase, cfg.contenders.index(name))
        return self.pool.run(priority, run_isolated, spec, self.log)

    def contender(self, name: str) -> None:
        """Every horizon of one contender, in order (AdamW's failure releases the waiters)."""
        try:
            self._contender(name)
        finally:
            if name == "adamw":
                for event in self.adamw_ready.values():
                    event.set()

    def _contender(self, name: str) -> None:
        c, cfg = self.cfg.table[name], self.cfg
        center = c.center
        for h in cfg.horizons:
            aux = None
            if c.optimizer != "adamw" and c.aux == "adamw":
                self.adamw_ready[h].wait()
                if h not in self.adamw_lr:
                    raise RuntimeError(f"{name} at h{h}: AdamW's sweep (its aux LR) failed")
                aux = self.adamw_lr[h]
            if center is None:
                lr = c.options["muon_lr"]
            else:
                result = run_sweep(
                    factor_grid(center, cfg.grid_points),
                    lambda lrs, h=h, aux=aux: run_concurrently(
                        [lambda x=x: self.run(name, h, x, cfg.seeds[0], aux, 0) for x in lrs]),
                    max_extend=cfg.sweep_extend,
                )
                lr = center = result.best
                self._record(h, name, {**dataclasses.asdict(result), "note": result.describe(),
                                       "aux_lr": aux})
            if name == "adamw":
                self.adamw_lr[h] = lr
                self.adamw_ready[h].set()
            seeds = cfg.seeds[1:] if center is not None else cfg.seeds
            run_concurrently(
                [lambda s=s, h=h, lr=lr, aux=aux: self.run(name, h, lr, s, aux, 1) for s in seeds])
            self.log(f"h{h} {name}: done at lr {lr:g}")

    def _record(self, h: int, name: str, entry: dict) -> None:
        with self.lock:
            self.sweeps.setdefault(str(h), {})[name] = entry
            path = self.out / "sweeps.json"
            write_whole(path, json.dumps(self.sweeps, indent=1, default=str))

    def run_all(self) -> None:
        names = list(self.cfg.contenders)
        if any(self.cfg.table[n].aux == "adamw" for n in names) and "adamw" not in names:
            names.insert(0, "adamw")  # the hybrids' aux LR comes from AdamW's sweep
        self.cfg.contenders = names
        run_concurrently([lambda n=n: self.contender(n) for n in names])


def prepare_out(cfg: HorizonConfig, command: str) -> Path:
    """Check the data; create ``out`` or check that it holds this study (same settings); log
    the command."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file")
    # bad data, or a batch that does not fit it, fails here, before anything is written
    load_gpt_data(cfg.data, preset=cfg.preset, batch_size=cfg.batch_size,
                  block_size=cfg.block_size, model_overrides=cfg.model_overrides)
    saved = out / "study.json"
    study = json.loads(json.dumps(cfg.study()))
    check_same_study(saved, study, cfg.FLAG_NAMES)
    out.mkdir(parents=True, exist_ok=True)
    write_whole(saved, json.dumps(study, indent=1))
    asked = out / "contenders.json"  # every contender any invocation asked for (the report's rows)
    names = set(json.loads(asked.read_text())) if asked.exists() else set()
    names |= set(cfg.contenders) | {"adamw"}
    write_whole(asked, json.dumps(sorted(names)))
    append_line(out / "commands.txt", command)
    return out
