"""`muonkit compare`: AdamW vs the Muon hybrid on the same GPT, data order and token budget.

1. Optionally (``--lr-sweep``) each optimizer is tuned on shorter runs (``--sweep-steps``) of
   seed ``seeds[0]`` with the edge-aware sweep of :mod:`muonlab.experiments.sweep` (factor-2
   grids, extended past an edge up to ``--sweep-extend`` points, then ``--sweep-refine``
   rounds of finer points around a best inside the grid): AdamW over ``--adamw-lrs``;
   the hybrid over ``--muon-lrs`` (its matrix LR) at the aux LR, then, with ``--aux-lrs``,
   over the aux LR (its AdamW groups) at the chosen matrix LR. With ``--sweep-full-topk K``
   the best K settings of each optimizer are rerun at full length and the best of those is
   chosen; that run is the seed's compared run.
2. For every seed, both optimizers train the same model (same initial weights), on the same
   training batches in the same order, for the same number of steps, through
   :func:`muonlab.train.gpt.train_gpt` (the one loop), each in its own process at
   ``--threads`` threads, ``--jobs`` at a time, with a progress line per evaluation.
3. :func:`muonlab.report.compare.build_compare_report` writes ``report.md`` and
   ``curves.png`` from the runs' ``metrics.jsonl``.

``--no-isolate`` runs everything in this process (no progress lines; peak memory cumulative).
Every run logs to the ``--tracker`` choice in its own process; a W&B run is named after its
directory (``runs/muon-s0``, ``sweep/adamw-lr0.001``) and grouped under ``--wandb-run-name``
(default: the name of ``--out``).
The command line is :mod:`muonlab.cli.compare`.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from muonkit.hardware import machine_info
from muonkit.registry import ADAMW

from ..report.compare import build_compare_report
from ..train.files import write_whole
from ..train.gpt import FLAG_NAMES, GPTRunConfig
from ..train.settings import changed_from_default, check_settings, drop_unset, setting
from .runs import (
    RunSpec,
    SlotPool,
    check_same_study,
    default_threads,
    run_concurrently,
    run_in_process,
    run_isolated,
    say,
)
from .sweep import SweepResult, check_factor_grid, run_sweep, top_k


@dataclass
class CompareConfig:
    """The experiment's own settings; ``gpt``: the GPT run settings every run starts from
    (``muonkit train``'s model, data, schedule and optimizer options); ``command``: the command
    line recorded in settings.json."""

    gpt: GPTRunConfig = field(default_factory=GPTRunConfig)
    command: str | None = None
    out: str = setting("out", default="runs/compare")
    overwrite: bool = setting("overwrite")
    seeds: list[int] = setting("seeds")
    optimizers: list[str] = setting("optimizers")
    lr_sweep: bool = setting("lr_sweep")
    sweep_steps: int | None = setting("sweep_steps")
    adamw_lrs: list[float] = setting("adamw_lrs")
    muon_lrs: list[float] = setting("muon_lrs")
    aux_lr: float | None = setting("aux_lr")
    aux_lrs: list[float] | None = setting("aux_lrs")
    sweep_extend: int = setting("sweep_extend")
    sweep_refine: int = setting("sweep_refine")
    sweep_full_topk: int = setting("sweep_full_topk")
    threads: int | None = setting("threads")
    jobs: int = setting("jobs")
    isolate: bool = setting("isolate")

    # the settings only an LR sweep reads
    SWEEP_ONLY: ClassVar[tuple[str, ...]] = ("sweep_steps", "adamw_lrs", "muon_lrs", "aux_lrs",
                                             "sweep_extend", "sweep_refine", "sweep_full_topk")

    def __post_init__(self) -> None:
        check_settings(self)
        self.gpt.refuse_ignored(self.optimizers, "--optimizers")
        for name in ("adamw_lrs", "muon_lrs", "aux_lrs"):
            if getattr(self, name):
                try:
                    check_factor_grid(getattr(self, name))
                except ValueError as e:
                    raise ValueError(f"--{name.replace('_', '-')}: {e}") from None
        if not self.lr_sweep:
            ignored = changed_from_default(self, self.SWEEP_ONLY)
            if ignored:
                flag = "--" + ignored[0].replace("_", "-")
                raise ValueError(f"{flag} is a setting of the LR sweep: it takes effect only "
                                 "with --lr-sweep")
        steps = self.sweep_steps or max(1, self.gpt.steps // 4)
        if self.lr_sweep and steps <= self.gpt.warmup:
            raise ValueError(f"sweep runs must be longer than --warmup ({self.gpt.warmup} "
                             f"steps); they take {steps} (--sweep-steps, else --steps / 4)")


class Experiment:
    """Runs of one compare directory: one slot pool, every run in its own process."""

    def __init__(self, cfg: CompareConfig, log=say):
        self.cfg, self.log, self.out = cfg, log, Path(cfg.out)
        self.threads = cfg.threads or default_threads(cfg.jobs)
        self.pool = SlotPool(cfg.jobs if cfg.isolate else 1)

    def run(self, optimizer: str, out_dir: Path, seed: int, lr: float, muon_lr: float,
            aux_lr: float, priority: tuple = (0,), **changes) -> float:
        """One run; its final val loss (``inf`` if it diverged)."""
        gpt = self.cfg.gpt
        if optimizer == ADAMW:
            gpt = dataclasses.replace(gpt, lr=lr, progress=False)
        else:
            gpt = dataclasses.replace(gpt, lr=aux_lr, muon_lr=muon_lr, progress=False)
        train_cfg = gpt.train_config(
            optimizer, str(out_dir), seed, progress=False,
            wandb_run_name=f"{out_dir.parent.name}/{out_dir.name}",
            wandb_group=gpt.wandb_run_name or self.out.name, **changes,
        )
        spec = RunSpec(gpt.train_gpt_kwargs(optimizer, train_cfg), out_dir.name, self.threads)
        runner = run_isolated if self.cfg.isolate else run_in_process
        return self.pool.run(priority, runner, spec, self.log)

    def run_all(self, calls: list) -> list[float]:
        """Results of ``calls`` (each calls :meth:`run`): at once, ``jobs`` at a time, or,
        under ``--no-isolate``, one after another in this thread (where Ctrl-C stops them)."""
        return run_concurrently(calls, in_threads=self.cfg.isolate)


def _sweep_one(exp: Experiment, optimizer: str, base: dict, param: str, grid, steps: int):
    def evaluate(values):
        calls = []
        for v in values:
            lrs = {**base, param: v}
            name = _trial_name(optimizer, lrs)
            calls.append(lambda lrs=lrs, name=name: exp.run(
                optimizer, exp.out / "sweep" / name, exp.cfg.seeds[0], **lrs, steps=steps,
                eval_every=steps))
        losses = exp.run_all(calls)
        for v, loss in zip(values, losses, strict=True):
            exp.log(f"sweep {optimizer} {param}={v:g}: val loss {loss:.4f} after {steps} steps")
        return losses

    return run_sweep(grid, evaluate, max_extend=exp.cfg.sweep_extend,
                     refine=exp.cfg.sweep_refine, fit=exp.cfg.sweep_refine > 0)


def _trial_name(optimizer: str, lrs: dict) -> str:
    if optimizer == ADAMW:
        return f"adamw-lr{lrs['lr']:g}"
    return f"{optimizer}-lr{lrs['muon_lr']:g}-aux{lrs['aux_lr']:g}"


def tune(exp: Experiment) -> tuple[dict, dict]:
    """Each optimizer's chosen LRs, and what the sweeps found (for settings.json)."""
    cfg, gpt = exp.cfg, exp.cfg.gpt
    steps = cfg.sweep_steps or max(1, gpt.steps // 4)
    chosen = {ADAMW: {"lr": gpt.lr, "muon_lr": gpt.muon_lr, "aux_lr": gpt.lr}}
    record: dict = {}
    for optimizer in sorted(cfg.optimizers):  # adamw first: the hybrid's default aux LR
        lrs = dict(chosen[ADAMW])
        lrs["aux_lr"] = cfg.aux_lr if cfg.aux_lr is not None else chosen[ADAMW]["lr"]
        stages = [("lr", cfg.adamw_lrs)] if optimizer == ADAMW else [("muon_lr", cfg.muon_lrs)]
        if optimizer != ADAMW and cfg.aux_lrs:
            stages.append(("aux_lr", cfg.aux_lrs))
        trials: dict[tuple, float] = {}
        record[optimizer] = []
        for param, grid in stages:
            result: SweepResult = _sweep_one(exp, optimizer, lrs, param, grid, steps)
            lrs[param] = result.best
            trials.update({_key({**lrs, param: v}): loss for v, loss in result.losses.items()})
            record[optimizer].append({"param": param, **result.record()})
        if cfg.sweep_full_topk:
            lrs = full_length_pick(exp, optimizer, trials, record)
        chosen[optimizer] = lrs
    return {k: chosen[k] for k in cfg.optimizers}, record


def _key(lrs: dict) -> tuple:
    return (lrs["lr"], lrs["muon_lr"], lrs["aux_lr"])


def full_length_pick(exp: Experiment, optimizer: str, trials: dict, record: dict) -> dict:
    """Rerun the best ``sweep_full_topk`` settings at full length (seed ``seeds[0]``) and
    return the best of those; its run becomes that seed's compared run."""
    best = top_k(trials, exp.cfg.sweep_full_topk)
    names = [_trial_name(optimizer, dict(zip(("lr", "muon_lr", "aux_lr"), k))) for k in best]
    losses = exp.run_all([
        lambda k=k, n=n: exp.run(optimizer, exp.out / "sweep-full" / n, exp.cfg.seeds[0],
                                 *k) for k, n in zip(best, names)
    ])
    for n, loss in zip(names, losses, strict=True):
        exp.log(f"full-length {n}: val loss {loss:.4f}")
    pick = min(zip(losses, best))[1]
    record[f"{optimizer}_full"] = [{"name": n, "val_loss": loss}
                                   for n, loss in zip(names, losses)]
    compared = exp.out / "runs" / f"{optimizer}-s{exp.cfg.seeds[0]}"
    if not compared.exists():  # (a continued study copied it before it was interrupted)
        copying = exp.out / f".{compared.name}.copying"  # never a half copy in runs/
        shutil.rmtree(copying, ignore_errors=True)
        shutil.copytree(exp.out / "sweep-full" / names[best.index(pick)], copying)
        compared.parent.mkdir(exist_ok=True)
        copying.rename(compared)
    return dict(zip(("lr", "muon_lr", "aux_lr"), pick))


STUDY_FILE = "study.json"  # the settings that define a compare study, written at its start

# settings that do not change a study's results: a continued study may change them
RUNTIME_SETTINGS = ("command", "out", "threads", "jobs", "isolate", "overwrite", "progress",
                    "trackers", "wandb_project", "wandb_run_name", "device", "peak_flops")


def all_settings(cfg: CompareConfig) -> dict:
    """Every setting of ``cfg``, the GPT run's and the experiment's (``sweep_refine`` only
    when given, so a study begun before it records and continues as it did)."""
    own = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "gpt"}
    return {**dataclasses.asdict(cfg.gpt), **drop_unset(own, {"sweep_refine": 0})}


def study_identity(cfg: CompareConfig) -> dict:
    """The settings of ``cfg`` that define the study's results (JSON values)."""
    settings = {k: v for k, v in all_settings(cfg).items() if k not in RUNTIME_SETTINGS}
    return json.loads(json.dumps(settings, default=str))


def prepare_out(cfg: CompareConfig) -> Path:
    """The output directory. One that holds the same study (its ``study.json``) is continued:
    finished runs are kept, unfinished ones resume or start again. Another study there is
    refused, naming the settings that differ, unless ``overwrite`` (which deletes it)."""
    out = Path(cfg.out)
    old = [out / sub for sub in ("runs", "sweep", "sweep-full") if (out / sub).exists()]
    identity = study_identity(cfg)
    if old and not cfg.overwrite:
        other = "another compare experiment"
        remedy = "pass --overwrite to replace it, or choose another --out"
        if not (out / STUDY_FILE).exists():  # one begun before study.json was written
            raise ValueError(f"{out} already holds {other}; {remedy}")
        check_same_study(out / STUDY_FILE, identity, FLAG_NAMES, what=other, remedy=remedy)
        return out
    for path in old:
        shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)
    write_whole(out / STUDY_FILE, json.dumps(identity, indent=2))
    return out


def run_compare(cfg: CompareConfig, log=say) -> dict[str, Path]:
    """The whole experiment; returns the report's paths. The data is loaded and checked
    once first (:func:`muonlab.train.gpt.load_gpt_data`), so bad data or a batch that does not
    fit it fails before anything is written or replaced."""
    cfg.gpt.load_data()
    out = prepare_out(cfg)
    exp = Experiment(cfg, log)
    info_start = machine_info()
    gpt = cfg.gpt
    aux = cfg.aux_lr if cfg.aux_lr is not None else gpt.lr
    chosen = {o: {"lr": gpt.lr, "muon_lr": gpt.muon_lr, "aux_lr": gpt.lr if o == ADAMW else aux}
              for o in cfg.optimizers}
    sweeps: dict = {}
    if cfg.lr_sweep:
        tuned, sweeps = tune(exp)
        chosen.update(tuned)
    calls, names = [], []
    for i, seed in enumerate(cfg.seeds):
        for optimizer in cfg.optimizers:
            run_dir = out / "runs" / f"{optimizer}-s{seed}"  # a finished one is skipped
            calls.append(lambda o=optimizer, d=run_dir, s=seed, p=(i,): exp.run(
                o, d, s, **chosen[o], priority=p))
            names.append(run_dir.name)
    for name, loss in zip(names, exp.run_all(calls), strict=True):
        log(f"{name}: final val loss {loss:.4f}")
    settings = {
        "command": cfg.command or "muonkit " + shlex.join(sys.argv[1:]),
        "chosen_lr": {k: chosen[k]["lr" if k == ADAMW else "muon_lr"] for k in cfg.optimizers},
        "chosen": {k: chosen[k] for k in cfg.optimizers},
        "sweeps": sweeps,
        "threads_per_run": exp.threads if cfg.isolate else torch.get_num_threads(),
        "jobs": cfg.jobs,
        "machine_start": info_start,
        "machine_end": machine_info(),
        "args": all_settings(cfg),
    }
    write_whole(out / "settings.json", json.dumps(settings, indent=2, default=str))
    return build_compare_report(out)
