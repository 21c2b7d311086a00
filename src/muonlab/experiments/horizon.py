"""`muonkit horizon`: does Muon's lead over AdamW survive longer training?

The same GPT, data and seeds are trained at several horizons (numbers of steps, or token
budgets in tokens per parameter, ``tokens_per_param``, from which the steps follow: tokens per
parameter x parameters / (batch size x block size), rounded; ``study.json`` records both),
each run with its own full schedule (linear warmup over ``warmup_frac`` of the run, cosine decay to
``min_lr_ratio``; Muon momentum warmup over ``momentum_warmup_frac``): a short run is not a
prefix of a long one. Every contender (:data:`CONTENDERS`) is tuned at every horizon with the
edge-aware sweep of :mod:`muonlab.experiments.sweep` (a factor-2 grid centred on the previous
horizon's best, seed ``tune_seed``, full length), then trained at the chosen LR with the
report ``seeds``, held out: no report seed chose an LR, and each run records its ``role``
(``"tune"`` or ``"report"``) in its config line. (``tune_seed=None``, the variant study's
form: ``seeds[0]`` tunes, and its sweep run at the chosen LR is also its reported run.) The
hybrids' AdamW groups take the LR AdamW chose at the same horizon (or share the swept LR, or a
fixed one). Opt-in (recorded in ``study.json`` only when given): ``sweep_refine`` rounds of
refinement around each best (:class:`muonlab.experiments.sweep.EdgeAwareSweep`), and
two-dimensional sweeps (:class:`muonlab.experiments.sweep.EdgeAwareSweep2D`): LR x
``muon_weight_decay`` over ``wd_grid`` for the tuned Muon contenders, LR x beta2 over
``beta2_grid`` for AdamW (their runs in ``lr<lr>-wd<w>-s<seed>`` / ``lr<lr>-b2<b>-s<seed>``),
and per-group AdamW LRs (``group_lrs``, :meth:`Study.sweep_groups`): after the LR (and knob)
is chosen, the LR of each named AdamW group (embedding, head, vectors) is swept as a multiplier
of the LR it takes, one group at a time (runs ``lr<lr>-emb<m>-vec<m>-s<seed>``, x1 omitted).
``study.json`` pins the machine class (:func:`muonkit.hardware.machine_class`:
device, CPU model and ISA or GPU, threads): a study is continued only on its own class.

:func:`plan_text` (``muonkit horizon --plan``) lists the runs a study will start and estimates
its CPU time from a few steps of each optimizer timed on this machine, before anything runs.

Every run is its own process at ``threads`` torch threads, ``jobs`` at a time, horizons in
order; each logs weight and update RMS of the hidden matrices
(:class:`muonlab.experiments.rms.RMSMonitor`) and checkpoints, so a rerun with the same
``--out`` skips finished runs and resumes unfinished ones; it may add report seeds after the
study's own, which run at the chosen LRs, and longer horizons after the study's last
(:func:`extended`). Layout::

    OUT/study.json                          the settings (a rerun must match them)
    OUT/sweeps.json                         each sweep's grid, extensions and choice
    OUT/commands.txt                        every command that ran the study
    OUT/h<H>/<contender>/lr<lr>-s<seed>/    metrics.jsonl, sessions.jsonl (CPU time), ckpt.pt
                                            (lr<lr>-wd<w>-s<seed>, lr<lr>-b2<b>-s<seed>: 2-D;
                                            lr<lr>-emb<m>-s<seed>...: group LRs)

:func:`muonlab.report.horizon.build_horizon_report` writes ``report.md`` and the figures.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from muonkit import hardware
from muonkit.hybrid import MUON_ROLE, classify_params
from muonkit.options import MuonOptions
from muonkit.registry import ADAMW, MUON, NORMUON

from ..data.text import TokenBatches
from ..models.gpt import GPT, GPTConfig
from ..train.config import resolve_device
from ..train.files import append_line, setting_name, write_whole
from ..train.gpt import gpt_optimizer, load_gpt_data
from ..train.loop import TrainConfig
from ..train.settings import GROUP_LABELS, check_settings, drop_unset, setting
from ..train.step import lm_loss
from ..train.trackers import resolve_trackers
from .runs import RunSpec, SlotPool, check_same_study, run_concurrently, run_isolated, say
from .sweep import factor_grid, geometric_ratio, run_sweep, run_sweep_2d


@dataclass(frozen=True)
class Contender:
    """One optimizer setting. ``knob``: the option the swept LR sets ("lr" for AdamW,
    "muon_lr" for a hybrid, "shared" for lr = muon_lr); ``center``: the first horizon's grid
    centre (None: not tuned, ``options`` fixed); ``aux``: the hybrid's AdamW LR, "adamw" for
    the one AdamW chose at the same horizon, "shared" for the swept LR, or a number;
    ``momentum_warmup``: a Muon-family contender's momentum follows the study's warmup
    (False: its ``momentum`` option holds from the first step)."""

    optimizer: str
    knob: str
    center: float | None
    options: dict
    aux: str | float = ADAMW
    about: str = ""
    momentum_warmup: bool = True


CONTENDERS = {
    ADAMW: Contender(ADAMW, "lr", 8e-3, {}, about="nanoGPT's AdamW (wd 0.1)"),
    MUON: Contender(MUON, "muon_lr", 0.02, {"muon_weight_decay": 0.0},
                      about="Muon hybrid, no weight decay on the Muon matrices"),
    "muon-wd": Contender(MUON, "muon_lr", 0.02, {"muon_weight_decay": 0.1},
                         about="Muon hybrid, decoupled wd 0.1 x lr on the Muon matrices"),
    "muon-moonlight": Contender(
        MUON, "shared", 8e-3, {"lr_scaling": "moonlight", "muon_weight_decay": 0.1},
        aux="shared", about="Muon with lr_scaling='moonlight' sharing AdamW's LR, wd 0.1"),
    NORMUON: Contender(NORMUON, "muon_lr", 0.02, {"muon_weight_decay": 0.1},
                         about="NorMuon hybrid (Li et al. 2025), decoupled wd 0.1 x lr"),
    "muon-seed": Contender(
        MUON, "muon_lr", None, {"muon_lr": 0.02, "momentum": 0.95, "muon_weight_decay": 0.0},
        aux=3e-4, about="the seed study's Muon: lr 0.02, momentum 0.95, aux AdamW 3e-4, no wd"),
}


@dataclass(frozen=True)
class Knob:
    """The second knob of a two-dimensional sweep: the optimizer ``option`` it sets, the
    ``label`` of its runs' directories, its ``name`` in reports, its grid ``values``, the
    ``limit`` its grid is never extended to, and the ``floor``: the least it can be."""

    option: str
    label: str
    name: str
    values: tuple[float, ...]
    limit: float | None = None
    floor: float | None = None


@dataclass
class HorizonConfig:
    """The study's settings (everything but ``RUNTIME``: ``out``, ``jobs``, ``threads``,
    ``contenders`` and the trackers, must match on a rerun into the same ``out``, and so must
    the machine class, threads included). ``tokens_per_param`` (None: ``horizons`` are the
    steps): the horizons as token budgets; :func:`token_budget` sets ``horizons`` from them.
    ``tune_seed`` chooses the LRs, ``seeds`` are reported (None: ``seeds[0]`` does both). Every run
    logs to ``trackers`` (default none); W&B runs are grouped under ``wandb_run_name`` (None:
    the name of ``out``). ``muon_options``: :class:`muonkit.MuonOptions` of every Muon-family
    contender (the ``--ns-*`` flags; a contender's own options win). ``qk_clip``: QK-clip's
    tau in every run (None: off). ``table``: the contenders a study of this kind can run (a
    subclass runs another table, e.g. the variant study of
    :mod:`muonlab.experiments.variants_gpt`)."""

    table: ClassVar[dict[str, Contender]] = CONTENDERS

    out: str = setting("out", default="runs/horizon")
    horizons: list[int] = setting("horizons")
    tokens_per_param: list[float] | None = setting("tokens_per_param")
    tune_seed: int | None = setting("tune_seed")
    seeds: list[int] = setting("seeds", default=(1, 2, 3, 4, 5))
    contenders: list[str] = setting("contenders", default=tuple(CONTENDERS),
                                    choices=tuple(CONTENDERS))
    preset: str = setting("preset")
    data: str = setting("data")
    batch_size: int = setting("batch_size")
    block_size: int | None = setting("block_size")
    model_overrides: dict = field(default_factory=dict)
    eval_batches: int = setting("eval_batches")
    evals_per_run: int = setting("evals_per_run")
    warmup_frac: float = setting("warmup_frac")
    momentum_warmup_frac: float = setting("momentum_warmup_frac")
    min_lr_ratio: float = setting("min_lr_ratio")
    grad_clip: float = setting("grad_clip")
    grid_points: int = setting("grid_points")
    sweep_extend: int = setting("sweep_extend")
    device: str = setting("device", default="cpu")
    jobs: int = setting("jobs")
    threads: int = setting("threads", default=1)
    trackers: tuple[str, ...] = ()
    wandb_project: str = "muonkit"
    wandb_run_name: str | None = None
    muon_options: dict = field(default_factory=dict)
    qk_clip: float | None = setting("qk_clip")
    sweep_refine: int = setting("sweep_refine")
    wd_grid: list[float] | None = setting("wd_grid")
    beta2_grid: list[float] | None = setting("beta2_grid")
    group_lrs: list[str] | None = setting("group_lrs")

    RUNTIME = ("out", "jobs", "threads", "contenders", "trackers", "wandb_project",
               "wandb_run_name")
    # settings of the study that `muonkit horizon` does not take as flags (their defaults hold)
    NOT_FLAGS = ("warmup_frac", "momentum_warmup_frac", "min_lr_ratio", "grad_clip")
    # how messages name a setting whose flag is not "--" + its name (files.setting_name)
    FLAG_NAMES: ClassVar[dict[str, str]] = {
        "study": "the kind of study",
        "machine_class": "the machine class (device, CPU or GPU, --threads)"}

    def __post_init__(self) -> None:
        check_settings(self)
        resolve_device(self.device)  # an unknown device fails before anything is written
        self.trackers = resolve_trackers(self.trackers)
        unknown = sorted(set(self.contenders) - set(self.table))
        if unknown:
            raise ValueError(f"unknown contender(s) {unknown}; valid: {list(self.table)}")
        self.check_horizons()
        if self.tokens_per_param is not None and (
                not self.tokens_per_param
                or sorted(set(self.tokens_per_param)) != list(self.tokens_per_param)):
            raise ValueError(f"--tokens-per-param must be increasing, got {self.tokens_per_param}")
        if not self.seeds or self.jobs < 1 or self.threads < 1 or self.grid_points < 1:
            raise ValueError("need >= 1 seed, jobs >= 1, threads >= 1, grid_points >= 1")
        if self.group_lrs is not None and len(set(self.group_lrs)) != len(self.group_lrs):
            raise ValueError(f"--group-lrs names a group twice: {self.group_lrs}")
        if self.tune_seed is not None and self.tune_seed in self.seeds:
            raise ValueError(f"--tune-seed {self.tune_seed} is also in --seeds {self.seeds}: the "
                             "seed that chooses the LRs is not reported; give report seeds "
                             "without it")
        MuonOptions(**self.muon_options)

    def check_horizons(self) -> None:
        horizons = setting_name("horizons", self.FLAG_NAMES)
        if self.tokens_per_param is not None:
            horizons = "--tokens-per-param (in steps)"
        if len(self.horizons) < 1 or min(self.horizons) < self.evals_per_run:
            raise ValueError(f"{horizons} must be at least "
                             f"{setting_name('evals_per_run', self.FLAG_NAMES)} "
                             f"({self.evals_per_run}), got {self.horizons}")
        if sorted(set(self.horizons)) != list(self.horizons):
            raise ValueError(f"{horizons} must be increasing, got {self.horizons}")

    @property
    def tuning_seed(self) -> int:
        """The seed of the LR sweeps."""
        return self.seeds[0] if self.tune_seed is None else self.tune_seed

    def role(self, seed: int) -> str | None:
        """What a run of ``seed`` is for: "tune" or "report" (None: ``tune_seed`` is None, and
        ``seeds[0]``'s runs do both)."""
        if self.tune_seed is None:
            return None
        return "tune" if seed == self.tune_seed else "report"

    def report_seeds_after_sweep(self, tuned: bool) -> list[int]:
        """The seeds still to run at the chosen LR once the sweep is done."""
        return self.seeds[1:] if tuned and self.tune_seed is None else list(self.seeds)

    def machine_class(self) -> dict:
        """The machine class the study's runs compute on (pinned in ``study.json``)."""
        return hardware.machine_class(resolve_device(self.device), self.threads)

    def study(self) -> dict:
        """The settings that define the study's results and the machine class they are
        computed on (``muon_options`` only where they change a default, so a study begun
        before the ``--ns-*`` flags continues; ``tokens_per_param``, ``tune_seed``,
        ``qk_clip``, ``sweep_refine``, ``wd_grid``, ``beta2_grid`` and ``group_lrs`` only when
        given)."""
        unset = {**dict.fromkeys(("tokens_per_param", "tune_seed", "qk_clip", "wd_grid",
                                  "beta2_grid", "group_lrs")), "sweep_refine": 0}
        kept = drop_unset({k: v for k, v in dataclasses.asdict(self).items()
                           if k not in (*self.RUNTIME, "muon_options")}, unset)
        changed = MuonOptions.changes(self.muon_options)
        kept["machine_class"] = self.machine_class()
        return {**kept, "muon_options": changed} if changed else kept

    def knob(self, name: str) -> Knob | None:
        """The second knob contender ``name`` is swept over (None: an LR sweep, or none)."""
        c = self.table[name]
        if c.center is None:
            return None
        if c.optimizer == ADAMW:
            return None if self.beta2_grid is None else Knob(
                "beta2", "b2", "beta2", tuple(self.beta2_grid), limit=1.0)
        return None if self.wd_grid is None else Knob(
            "muon_weight_decay", "wd", "muon weight decay", tuple(self.wd_grid), floor=0.0)

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


def steps_for_tokens(tokens_per_param: float, params: int, tokens_per_step: int) -> int:
    """Optimizer steps that train ``params`` parameters on ``tokens_per_param`` tokens each
    at ``tokens_per_step`` tokens a step (rounded, at least 1)."""
    return max(1, round(tokens_per_param * params / tokens_per_step))


def token_budget(cfg: HorizonConfig, model: GPTConfig, gpt: GPT, train_tokens: int) -> dict:
    """The parameters of the study's GPT ``gpt`` (:meth:`GPT.num_params`, as its runs record
    them), its tokens per step, the tokens per parameter of each horizon and the passes over
    the ``train_tokens`` of the training split it makes; with ``cfg.tokens_per_param`` sets
    ``cfg.horizons`` to their steps first."""
    params = gpt.num_params()
    per_step = cfg.batch_size * model.block_size
    if cfg.tokens_per_param is not None:
        cfg.horizons = [steps_for_tokens(t, params, per_step) for t in cfg.tokens_per_param]
        cfg.check_horizons()
    return {"params": params, "tokens_per_step": per_step,
            "horizon_tokens_per_param": [round(h * per_step / params, 4) for h in cfg.horizons],
            "horizon_epochs": [round(h * per_step / train_tokens, 4) for h in cfg.horizons]}


def group_multipliers(groups: dict[str, float] | None) -> dict[str, float]:
    """The group-LR multipliers that change a run (x1 is the run without it), in
    :data:`GROUP_LABELS` order."""
    groups = groups or {}
    return {r: groups[r] for r in GROUP_LABELS if groups.get(r, 1.0) != 1.0}


def groups_suffix(groups: dict[str, float] | None, sep: str = "-") -> str:
    """The run-directory suffix of :func:`group_multipliers` (``-emb2-vec0.5``; ``sep`` " ":
    a run's label)."""
    return "".join(f"{sep}{GROUP_LABELS[r]}{m:g}" for r, m in group_multipliers(groups).items())


def groups_words(groups: dict[str, float] | None) -> str:
    """``", embedding LR x2"`` for each of :func:`group_multipliers`."""
    return "".join(f", {r} LR x{m:g}" for r, m in group_multipliers(groups).items())


def run_dir(out: Path, horizon: int, name: str, lr: float, seed: int,
            knob: tuple[Knob, float] | None = None,
            groups: dict[str, float] | None = None) -> Path:
    """A run's directory; a two-dimensional sweep's runs also name their ``knob`` value, a
    group-LR sweep's its multipliers other than 1 (``-emb2-vec0.5``)."""
    second = "" if knob is None else f"-{knob[0].label}{knob[1]:g}"
    second += groups_suffix(groups)
    return out / f"h{horizon}" / name / f"lr{lr:g}{second}-s{seed}"


def optimizer_options(c: Contender, lr: float, aux_lr: float | None,
                      muon_options: dict | None = None,
                      knob: tuple[Knob, float] | None = None,
                      groups: dict[str, float] | None = None) -> dict:
    """:func:`muonlab.train.gpt.gpt_optimizer` options of contender ``c`` at swept LR ``lr``;
    ``muon_options`` go to a Muon-family contender (its own options win); ``knob``: the
    value of a two-dimensional sweep's second knob (it wins over the contender's own);
    ``groups``: multipliers of the AdamW LR (AdamW's own, or the hybrid's aux LR) that set
    the ``embedding_lr``, ``head_lr``, ``vector_lr`` of those groups."""
    opts = {"lr": lr, "betas": (0.9, 0.95), "weight_decay": 0.1}
    if c.optimizer != ADAMW:
        opts.update({**(muon_options or {}), **c.options})
        if c.center is not None:
            opts["muon_lr"] = lr
        opts["lr"] = (lr if c.aux == "shared" else
                      c.aux if isinstance(c.aux, float) else aux_lr)
    if knob is not None:
        option, value = knob[0].option, knob[1]
        opts.update({"betas": (0.9, value)} if option == "beta2" else {option: value})
    for role, m in group_multipliers(groups).items():
        opts[f"{role}_lr"] = opts["lr"] * m
    return opts


class Study:
    """The runs of one study directory; contenders run in threads sharing one slot pool."""

    def __init__(self, cfg: HorizonConfig, log=say):
        self.cfg, self.log, self.out = cfg, log, Path(cfg.out)
        self.pool = SlotPool(cfg.jobs)
        self.lock = threading.Lock()
        self.adamw_lr: dict[int, float] = {}
        self.adamw_ready = {h: threading.Event() for h in cfg.horizons}
        path = self.out / "sweeps.json"
        self.sweeps: dict = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, h: int, lr: float, seed: int, aux: float | None, phase: int,
            knob: tuple[Knob, float] | None = None,
            groups: dict[str, float] | None = None) -> float:
        c, cfg = self.cfg.table[name], self.cfg
        out_dir = run_dir(self.out, h, name, lr, seed, knob, groups)
        kwargs = dict(
            optimizer=c.optimizer, preset=cfg.preset, data=cfg.data, batch_size=cfg.batch_size,
            block_size=cfg.block_size, eval_batches=cfg.eval_batches,
            model_overrides=dict(cfg.model_overrides),
            optimizer_options=optimizer_options(c, lr, aux, cfg.muon_options, knob, groups),
            train_config=cfg.train_config(h, seed, out_dir,
                                          c.optimizer != ADAMW and c.momentum_warmup),
            qk_clip=cfg.qk_clip,
        )
        if cfg.role(seed) is not None:
            kwargs["role"] = cfg.role(seed)
        second = "" if knob is None else f" {knob[0].label}{knob[1]:g}"
        second += groups_suffix(groups, " ")
        spec = RunSpec(kwargs, f"h{h} {name} lr{lr:g}{second} s{seed}", cfg.threads,
                       log_rms=True)
        priority = (cfg.horizons.index(h), phase, cfg.contenders.index(name))
        return self.pool.run(priority, run_isolated, spec, self.log)

    def contender(self, name: str) -> None:
        """Every horizon of one contender, in order (AdamW's failure releases the waiters)."""
        try:
            self._contender(name)
        finally:
            if name == ADAMW:
                for event in self.adamw_ready.values():
                    event.set()

    def _contender(self, name: str) -> None:
        c, cfg = self.cfg.table[name], self.cfg
        center = c.center
        group_centers = dict.fromkeys(cfg.group_lrs or (), 1.0)
        for h in cfg.horizons:
            aux = None
            if c.optimizer != ADAMW and c.aux == ADAMW:
                self.adamw_ready[h].wait()
                if h not in self.adamw_lr:
                    raise RuntimeError(f"{name} at h{h}: AdamW's sweep (its aux LR) failed")
                aux = self.adamw_lr[h]
            chosen = None  # (the second knob, its chosen value) of a two-dimensional sweep
            if center is None:
                lr = c.options["muon_lr"]
            elif (knob := cfg.knob(name)) is None:
                result = run_sweep(
                    factor_grid(center, cfg.grid_points),
                    lambda lrs, h=h, aux=aux: run_concurrently(
                        [lambda x=x: self.run(name, h, x, cfg.tuning_seed, aux, 0) for x in lrs]),
                    max_extend=cfg.sweep_extend, refine=cfg.sweep_refine,
                    fit=cfg.sweep_refine > 0,
                )
                lr = center = result.best
                self._record(h, name, {**result.record(), "aux_lr": aux})
            else:
                result = run_sweep_2d(
                    factor_grid(center, cfg.grid_points), knob.values, knob.name,
                    lambda pairs, h=h, aux=aux, knob=knob: run_concurrently(
                        [lambda x=x, v=v: self.run(name, h, x, cfg.tuning_seed, aux, 0, (knob, v))
                         for x, v in pairs]),
                    max_extend=cfg.sweep_extend, knob_max=knob.limit, knob_min=knob.floor,
                    refine=cfg.sweep_refine,
                    fit=True,
                )
                lr = center = result.best
                chosen = (knob, result.best_knob)
                self._record(h, name, {**result.record(), "option": knob.option,
                                       "label": knob.label, "aux_lr": aux})
            if name == ADAMW:
                self.adamw_lr[h] = lr
                self.adamw_ready[h].set()
            groups = {}
            if center is not None:
                groups = self.sweep_groups(name, h, lr, aux, chosen, group_centers)
                group_centers = groups
            seeds = cfg.report_seeds_after_sweep(center is not None)
            run_concurrently([lambda s=s, h=h, lr=lr, aux=aux, chosen=chosen, groups=groups:
                              self.run(name, h, lr, s, aux, 1, chosen, groups) for s in seeds])
            second = "" if chosen is None else f", {chosen[0].name} {chosen[1]:g}"
            second += groups_words(groups)
            self.log(f"h{h} {name}: done at lr {lr:g}{second}")

    def sweep_groups(self, name: str, h: int, lr: float, aux: float | None,
                     chosen: tuple[Knob, float] | None,
                     centers: dict[str, float]) -> dict[str, float]:
        """Coordinate descent over ``cfg.group_lrs`` at the chosen LR (and knob): each
        group's LR multiplier swept edge-aware on a factor-2 grid of ``grid_points`` (made
        odd) centred on ``centers[role]`` (the previous horizon's choice, 1 at the first: the
        LR sweep's own best run), the groups before it at their chosen multipliers, those
        after it at their centres.
        Returns the chosen multipliers (empty: none swept)."""
        cfg, groups = self.cfg, dict(centers)
        for role in cfg.group_lrs or ():
            result = run_sweep(
                factor_grid(centers[role], cfg.grid_points | 1),
                lambda ms, role=role: run_concurrently(
                    [lambda m=m: self.run(name, h, lr, cfg.tuning_seed, aux, 0, chosen,
                                          {**groups, role: m}) for m in ms]),
                max_extend=cfg.sweep_extend, refine=cfg.sweep_refine,
                fit=cfg.sweep_refine > 0,
            )
            groups[role] = result.best
            with self.lock:
                entry = self.sweeps[str(h)][name]
                entry.setdefault("groups", {})[role] = {
                    **result.record(what=f"{role} LR multiplier"),
                    "others": {r: m for r, m in groups.items() if r != role}}
                entry["best_groups"] = dict(groups)
            self._record(h, name, entry)
        return groups

    def _record(self, h: int, name: str, entry: dict) -> None:
        with self.lock:
            self.sweeps.setdefault(str(h), {})[name] = entry
            path = self.out / "sweeps.json"
            write_whole(path, json.dumps(self.sweeps, indent=1, default=str))

    def run_all(self) -> None:
        names = self.cfg.contenders = contenders_to_run(self.cfg)
        run_concurrently([lambda n=n: self.contender(n) for n in names])


def contenders_to_run(cfg: HorizonConfig) -> list[str]:
    """The contenders asked for, AdamW first when a hybrid takes its LR."""
    names = list(cfg.contenders)
    if any(cfg.table[n].aux == ADAMW for n in names) and ADAMW not in names:
        names.insert(0, ADAMW)  # the hybrids' aux LR comes from AdamW's sweep
    return names


def check_data(cfg: HorizonConfig) -> dict:
    """Read and check the data (bad data, or a batch that does not fit it, fails here, before
    anything is written); :func:`token_budget` of the study's GPT (setting the horizons of a
    study in tokens per parameter)."""
    tokens, model = load_gpt_data(cfg.data, preset=cfg.preset, batch_size=cfg.batch_size,
                                  block_size=cfg.block_size, model_overrides=cfg.model_overrides)
    with torch.device("meta"):  # shapes only: no weights are made
        gpt = GPT(model)
    check_group_roles(cfg.group_lrs or (), gpt)
    return token_budget(cfg, model, gpt, len(tokens.train))


def check_group_roles(roles, gpt: GPT) -> None:
    """Refuse a ``--group-lrs`` role the GPT has no parameters of (a head tied to the
    embedding trains as the embedding)."""
    present = {role for _, _, role in classify_params(gpt)}
    for role in roles:
        if role not in present:
            why = " (its head is tied to the embedding)" if role == "head" else ""
            raise ValueError(f"--group-lrs {role}: the model has no {role} parameters{why}; "
                             f"its AdamW groups are {', '.join(sorted(present - {MUON_ROLE}))}")


def extended(saved: Path, cfg: HorizonConfig) -> list[str]:
    """The settings of the study in ``saved`` (its ``study.json``) that ``cfg`` continues with
    values added after its own, in their order: report seeds (``seeds``: they run at each
    contender's chosen LR) and horizons (``horizons``, or ``tokens_per_param`` and the
    ``horizons`` they set: each new one tuned around the last one's best, as the study's own
    were). The tuning seed, the sweeps and every finished run stay what they were."""
    if not saved.exists():
        return []
    old = json.loads(saved.read_text())
    length = "horizons" if cfg.tokens_per_param is None else "tokens_per_param"
    grown = [key for key in ("seeds", length)
             if isinstance(was := old.get(key), list) and getattr(cfg, key)[:len(was)] == was]
    return grown + (["horizons"] if "tokens_per_param" in grown else [])


def prepare_out(cfg: HorizonConfig, command: str) -> Path:
    """Check the data; create ``out`` or check that it holds this study (same settings, same
    machine class; report seeds and longer horizons may be added, :func:`extended`, and
    ``study.json`` then records them all); log the command."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file")
    budget = check_data(cfg)
    saved = out / "study.json"
    study = json.loads(json.dumps({**cfg.study(), **budget}))
    added = extended(saved, cfg)  # the budget: derived from the rest
    check_same_study(saved, study, cfg.FLAG_NAMES, may_change=[*budget, *added],
                     remedy="rerun with the study's settings to continue it (more --seeds "
                     "and longer horizons may follow its own), or use another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_whole(saved, json.dumps(study, indent=1))
    asked = out / "contenders.json"  # every contender any invocation asked for (the report's rows)
    names = set(json.loads(asked.read_text())) if asked.exists() else set()
    names |= set(cfg.contenders) | {ADAMW}
    write_whole(asked, json.dumps(sorted(names)))
    append_line(out / "commands.txt", command)
    return out


@dataclass(frozen=True)
class PlannedCell:
    """The runs one contender will start at one horizon: ``tune`` sweep runs (its grid),
    up to ``extension`` more where a sweep's best sits at an edge, and ``report`` runs."""

    horizon: int
    name: str
    tune: int
    extension: int
    report: int


def planned_cells(cfg: HorizonConfig) -> list[PlannedCell]:
    """Every (horizon, contender) cell of the study and its runs. A sweep extends past one
    edge only (once extended downwards, its best is the new lowest LR or inside the grid), so
    at most ``sweep_extend`` runs more, and ``2 x sweep_refine`` refinement runs. A
    two-dimensional sweep runs its LR grid x its knob's values; an LR extension runs every
    knob value, a knob extension (a geometric grid) every LR; a refinement, LRs at the best
    knob value. ``group_lrs``: each group's multiplier grid (odd, centred on its last
    choice) but its centre, a run already (at a later horizon the first group's may not be:
    counted as one more), extended and refined like an LR."""
    cells = []
    for h in cfg.horizons:
        for name in contenders_to_run(cfg):
            tuned = cfg.table[name].center is not None
            tune, more = (cfg.grid_points, cfg.sweep_extend + 2 * cfg.sweep_refine) if tuned \
                else (0, 0)
            if (knob := cfg.knob(name)) is not None:
                knob_more = cfg.sweep_extend if geometric_ratio(knob.values) else 0
                values, lrs = len(knob.values), cfg.grid_points + cfg.sweep_extend
                tune, more = cfg.grid_points * values, (
                    cfg.sweep_extend * (values + knob_more) + knob_more * lrs
                    + 2 * cfg.sweep_refine)
            if tuned and cfg.group_lrs:  # each centre is a run already (but see below)
                tune += ((cfg.grid_points | 1) - 1) * len(cfg.group_lrs)
                more += (cfg.sweep_extend + 2 * cfg.sweep_refine) * len(cfg.group_lrs)
                more += h != cfg.horizons[0]  # the last horizon's choices at this LR
            cells.append(PlannedCell(h, name, tune, more,
                                     len(cfg.report_seeds_after_sweep(tuned))))
    return cells


def measure_step_seconds(cfg: HorizonConfig, name: str, steps: int = 3) -> float:
    """Seconds of one training step (forward, backward, clipping, optimizer step) of contender
    ``name``'s optimizer on the study's GPT and batch, at ``cfg.threads`` torch threads on
    ``cfg.device``: the mean of ``steps`` steps after one untimed step. On a CPU, the
    process's CPU time / threads (what the step takes on a machine that runs nothing else: a
    busy machine's wall clock would count its waiting); on a GPU, the wall clock."""
    tokens, model_config = load_gpt_data(
        cfg.data, preset=cfg.preset, batch_size=cfg.batch_size, block_size=cfg.block_size,
        model_overrides=cfg.model_overrides)
    device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(0)
        model = GPT(model_config).to(device)
        c = cfg.table[name]
        opt = gpt_optimizer(model, c.optimizer, **optimizer_options(
            c, c.center or c.options.get("muon_lr", 1e-3), 1e-3, cfg.muon_options))
        batches = TokenBatches(tokens.train, cfg.batch_size, model_config.block_size)
        cuda = device.type == "cuda"
        now = time.perf_counter if cuda else time.process_time
        clock = 0.0
        for i in range(steps + 1):
            x, y = (t.to(device) for t in batches.next_batch())
            if cuda:
                torch.cuda.synchronize(device)
            start = now()
            lm_loss(model, (x, y)).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(device)
            clock += (now() - start) if i else 0.0
    finally:
        torch.set_num_threads(threads)
    return clock / steps / (1 if cuda else cfg.threads)


def plan_text(cfg: HorizonConfig, budget: dict, step_seconds: dict[str, float]) -> str:
    """The study's runs, per horizon and contender, and their estimated time: each run's
    steps x the measured seconds per step of its optimizer (``step_seconds``, by optimizer
    name), plus its evaluations (``evals_per_run + 1`` of ``eval_batches`` forward passes, a
    forward taken as a third of a step); CPU time = wall time x ``threads``."""
    cells = planned_cells(cfg)
    lines = [f"plan: preset {cfg.preset}, {budget['params']:,} parameters, "
             f"{budget['tokens_per_step']:,} tokens per step, tune seed {cfg.tuning_seed}, "
             f"report seeds {cfg.seeds}, {cfg.threads} thread(s) per run, {cfg.jobs} at a time",
             "  steps  tokens/param  epochs  contender        tune runs  report runs  h per run"]
    per_param = dict(zip(cfg.horizons, budget["horizon_tokens_per_param"], strict=True))
    epochs = dict(zip(cfg.horizons, budget["horizon_epochs"], strict=True))
    evals = (cfg.evals_per_run + 1) * cfg.eval_batches / 3
    wall = {"runs": 0, "more": 0, "s": 0.0, "more_s": 0.0}
    for cell in cells:
        run_s = (cell.horizon + evals) * step_seconds[cfg.table[cell.name].optimizer]
        wall["runs"] += cell.tune + cell.report
        wall["more"] += cell.extension
        wall["s"] += (cell.tune + cell.report) * run_s
        wall["more_s"] += cell.extension * run_s
        tune = f"{cell.tune} (+{cell.extension})" if cell.extension else str(cell.tune)
        lines.append(f"  {cell.horizon:>5}  {per_param[cell.horizon]:>12.4g}  "
                     f"{epochs[cell.horizon]:>6.3g}  {cell.name:<15}  "
                     f"{tune:>9}  {cell.report:>11}  {run_s / 3600:>9.2f}")
    cpu, more = (wall[k] * cfg.threads / 3600 for k in ("s", "more_s"))
    timed = ", ".join(f"{k} {v:.3f}" for k, v in sorted(step_seconds.items()))
    lines += [
        f"seconds per step measured here ({timed}; on a CPU its CPU time / threads) at "
        f"{cfg.threads} thread(s) on {cfg.device}; the loop's own work per step (records, "
        "schedules) is not in it: a lower bound",
        f"runs: {wall['runs']} (up to {wall['runs'] + wall['more']} with every sweep "
        f"extension); estimated CPU time {cpu:.1f} h (up to {cpu + more:.1f} h), wall time "
        f"{wall['s'] / 3600 / cfg.jobs:.1f} h at --jobs {cfg.jobs}",
    ]
    return "\n".join(lines)


def plan(cfg: HorizonConfig, steps: int = 3) -> str:
    """:func:`plan_text` of ``cfg`` with each of its optimizers timed for ``steps`` steps."""
    budget = check_data(cfg)
    names = {cfg.table[n].optimizer: n for n in contenders_to_run(cfg)}
    step_seconds = {opt: measure_step_seconds(cfg, name, steps) for opt, name in names.items()}
    return plan_text(cfg, budget, step_seconds)
