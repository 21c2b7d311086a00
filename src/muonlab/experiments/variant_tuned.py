"""`muonkit variants tuned`: the MNIST variant studies redone with every LR tuned (issue 17).

One study holds the arms of all four untuned studies (``large``, ``equal-memory``,
``rank-sweep``, ``hybrid``) and the mixing ablation: AdamW, dense Muon, KroneckerMuon,
HybridKroneckerMuon, LoRAPreMuon at ``--ranks``, ``--rank``, full rank and the rank whose
state matches Kronecker's, plus dense Muon and LoRA-Pre (full rank, ``--rank``) with
``mixing="gradient_heavy"`` (LoRA-Pre's printed mixing), so mixing and compression separate.

Choosing the LRs without the test set: the last ``val_size`` training examples are held out
(the rest train); every arm's LR comes from the edge-aware factor-2 sweep of
:mod:`muonlab.experiments.sweep` (``grid_points`` LRs centred on ``--lr`` / ``--adamw-lr``,
seed ``seeds[0]``, full length, extended past an edge up to ``sweep_extend`` points and
reported if still at an edge), choosing the lowest final held-out cross-entropy. The other
seeds then train at the chosen LR (the sweep's run is the first seed's run); the report gives
test accuracy and loss, mean +- std over seeds and the paired 95% t-interval of each arm's
difference to dense Muon (:mod:`muonlab.report.variant_tuned`).

Every run is its own process (:mod:`muonlab.experiments.runs`) at ``threads`` torch threads,
``jobs`` at a time; a rerun with the same ``--out`` skips finished runs (an unfinished one
starts again: a run is seconds); it may raise ``--sweep-extend``. Layout::

    OUT/study.json                       the settings (a rerun must match them)
    OUT/arms.json                        the arms and which untuned study each belongs to
    OUT/sweeps.json                      each arm's sweep: grid, losses, extensions, choice
    OUT/commands.txt                     every command that ran the study
    OUT/runs/<arm>/lr<lr>-s<seed>/       metrics.jsonl, sessions.jsonl (CPU time)
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

from muonkit.registry import ADAMW, KRONECKER, KRONECKER_HYBRID, LORAPRE, MUON, canonical_name

from ..data.vision import load_flat
from ..report.variant_tuned import write_report
from ..train import TrainConfig
from ..train.files import append_line, write_whole
from .runs import RunSpec, SlotPool, check_same_study, run_concurrently, run_isolated, say
from .sweep import factor_grid, run_sweep
from .variant_config import DATASETS, MAY_CHANGE, Arm, StudyConfig, settings
from .variant_optimizers import arm_lr, build_model, equal_memory_rank
from .variants import loop_config, train_arm

ENTRY = "muonlab.experiments.variant_tuned:train_run"


def load_split(cfg: StudyConfig) -> dict:
    """The dataset with the last ``val_size`` of the (``train_limit``-limited) training
    examples held out as "val"; "train" is the rest."""
    data = load_flat(cfg.dataset, cfg.data_dir)
    x, y = data["train"]
    n = min(len(x), cfg.train_limit or len(x))
    if cfg.val_size >= n:
        raise ValueError(f"--val-size {cfg.val_size} leaves no training examples of {n}")
    cut = n - cfg.val_size
    return {"train": (x[:cut], y[:cut]), "val": (x[cut:n], y[cut:n]), "test": data["test"]}


def train_run(*, study: StudyConfig, arm: Arm, lr: float, train_config: TrainConfig) -> None:
    """One run of the tuned study (the :class:`RunSpec` entry, called in a child process)."""
    train_arm(arm, study, load_split(study), train_config, lr)


def tuned_arms(cfg: StudyConfig) -> tuple[list[Arm], dict[str, list[str]]]:
    """(the arms, {untuned study or "mixing ablation": slugs of its arms})."""
    model = build_model(cfg, cfg.seeds[0])
    full = max(min(p.shape) for p in model.parameters())
    equal, _, _ = equal_memory_rank(model, cfg)
    ranks = sorted({*cfg.ranks, cfg.rank, equal, full})

    def lora(r: int, mixing: str = "momentum_form") -> Arm:
        notes = [n for n, v in (("full", full), ("equal memory", equal)) if r == v]
        notes += ["gradient-heavy"] if mixing == "gradient_heavy" else []
        label = f"LoRA-Pre r={r}" + (f" ({', '.join(notes)})" if notes else "")
        return Arm(label, LORAPRE, r, mixing)

    adamw, muon = Arm("AdamW", ADAMW), Arm("Muon", MUON)
    kron, hybrid = Arm("Kronecker", KRONECKER), Arm("Hybrid Kronecker", KRONECKER_HYBRID)
    muon_gh = Arm("Muon (gradient-heavy)", MUON, None, "gradient_heavy")
    ablation = [muon, muon_gh, lora(full), lora(full, "gradient_heavy"), lora(cfg.rank),
                lora(cfg.rank, "gradient_heavy")]
    arms = list(dict.fromkeys([adamw, muon, kron, hybrid, *(lora(r) for r in ranks),
                               *ablation[1::2]]))  # no duplicates (--rank may be full)
    groups = {
        "large": [adamw, muon, lora(cfg.rank), kron],
        "equal-memory": [muon, kron, lora(equal)],
        "rank-sweep": [muon, kron, *(lora(r) for r in ranks)],
        "hybrid": [muon, hybrid, lora(cfg.rank)],
        "mixing ablation": ablation,
    }
    return arms, {name: list(dict.fromkeys(a.slug for a in group))
                  for name, group in groups.items()}


def keep_former_slugs(arms: list[Arm], groups: dict[str, list[str]], out: Path
                      ) -> tuple[list[Arm], dict[str, list[str]]]:
    """``arms`` and ``groups`` with each arm that a study already in ``out`` ran under another
    slug (its ``arms.json``, written with the former kind names, "lora_pre-r16") keeping that
    slug, its directory: the same command continues the study."""
    path = out / "arms.json"
    if not path.exists():
        return arms, groups
    saved = {(canonical_name(a["kind"]), a["rank"], a["mixing"]): a["slug"]
             for a in json.loads(path.read_text())["arms"]}
    kept = [dataclasses.replace(a, folder=saved[(a.kind, a.rank, a.mixing)])
            if saved.get((a.kind, a.rank, a.mixing), a.slug) != a.slug else a for a in arms]
    renamed = {a.slug: b.slug for a, b in zip(arms, kept, strict=True)}
    return kept, {name: [renamed.get(s, s) for s in slugs] for name, slugs in groups.items()}


class TunedStudy:
    """The runs of one study directory: one thread per arm (its sweep, then its seeds),
    sharing one :class:`SlotPool` (sweep runs first, then the seeds, arms in order)."""

    def __init__(self, cfg: StudyConfig, arms: list[Arm], steps_per_epoch: int, log=say,
                 runner=None):
        self.cfg, self.arms, self.log = cfg, arms, log
        self.runner = runner or run_isolated  # tests pass runs.run_in_process
        self.out = Path(cfg.out)
        self.steps_per_epoch = steps_per_epoch
        self.pool = SlotPool(cfg.jobs)
        self.lock = threading.Lock()
        path = self.out / "sweeps.json"
        self.sweeps: dict = json.loads(path.read_text()) if path.exists() else {}

    def run(self, arm: Arm, lr: float, seed: int, phase: int) -> float:
        """Final held-out loss of one run (``inf`` if it diverged)."""
        out_dir = self.out / "runs" / arm.slug / f"lr{lr:g}-s{seed}"
        loop = loop_config(arm, seed, self.cfg, self.steps_per_epoch, out_dir)
        kwargs = dict(study=self.cfg, arm=arm, lr=lr, train_config=loop)
        spec = RunSpec(kwargs, f"{arm.slug} lr{lr:g} s{seed}", self.cfg.threads, entry=ENTRY)
        return self.pool.run((phase, self.arms.index(arm)), self.runner, spec, self.log)

    def arm(self, arm: Arm) -> None:
        """Sweep ``arm``'s LR on the first seed, then train the other seeds at the best."""
        cfg = self.cfg
        result = run_sweep(
            factor_grid(arm_lr(arm, cfg), cfg.grid_points),
            lambda lrs: run_concurrently(
                [lambda x=x: self.run(arm, x, cfg.seeds[0], 0) for x in lrs]),
            max_extend=cfg.sweep_extend, refine=cfg.sweep_refine, fit=cfg.sweep_refine > 0,
        )
        with self.lock:
            self.sweeps[arm.slug] = result.record()
            write_whole(self.out / "sweeps.json", json.dumps(self.sweeps, indent=1))
        run_concurrently(
            [lambda s=s: self.run(arm, result.best, s, 1) for s in cfg.seeds[1:]])
        self.log(f"{arm.label}: done at lr {result.best:g}")

    def run_all(self) -> None:
        run_concurrently([lambda a=a: self.arm(a) for a in self.arms])


def prepare_out(cfg: StudyConfig, arms: list[Arm], groups: dict, command: str) -> Path:
    """Create ``out`` or check that it holds this study (same settings); write the arms and
    log the command."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file")
    saved, study = out / "study.json", settings(cfg)
    check_same_study(saved, study, {"study": "the kind of study"}, may_change=MAY_CHANGE)
    out.mkdir(parents=True, exist_ok=True)
    write_whole(saved, json.dumps(study, indent=1))
    table = [{k: v for k, v in dataclasses.asdict(a).items() if k != "folder"} | {"slug": a.slug}
             for a in arms]
    write_whole(out / "arms.json", json.dumps({"arms": table, "groups": groups}, indent=1))
    append_line(out / "commands.txt", command)
    return out


def run_tuned(cfg: StudyConfig, command: str = "", log=say, runner=None) -> dict[str, Path]:
    """Run (or continue) the tuned study in ``cfg.out``, then write its report; returns the
    report's paths. The data is loaded here first, so a missing dataset fails before anything
    is written."""
    if cfg.overwrite:
        raise ValueError("the tuned study continues an earlier run in --out (finished runs "
                         "are kept); choose another --out to start afresh, not --overwrite")
    train_size = len(load_split(cfg)["train"][0])
    arms, groups = keep_former_slugs(*tuned_arms(cfg), Path(cfg.out))
    out = prepare_out(cfg, arms, groups, command)
    steps_per_epoch = -(-train_size // cfg.batch_size)
    TunedStudy(cfg, arms, steps_per_epoch, log, runner).run_all()
    return write_report(out, DATASETS[cfg.dataset])
