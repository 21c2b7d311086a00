"""`muonkit finetune-study`: can Muon fine-tune a pretrained model, and which setup fails?

Two bases of one size are pretrained on the same tokens of a corpus that is not the task (the
bundled tinyshakespeare or a text file, byte tokenizer; its sha256 in ``study.json``): one
with AdamW, one with the Muon hybrid, each LR chosen by the edge-aware sweep of
:mod:`muonlab.experiments.sweep` (final validation loss, seed ``tune_seed``; the Muon base's
AdamW groups take the AdamW base's LR). The chosen run of each sweep is the base.

Each base is then fine-tuned on the generated word problems of :mod:`muonlab.data.tasks`
(``--task arithmetic``) by every arm of :data:`ARMS` that applies to it: the arm's LR is swept
(>= 5 factor-2 points around its centre, extended at an edge; seed ``tune_seed``; chosen by
the fine-tuning validation loss, held-out training problems, never the test problems), then
``report_seeds`` are trained at the chosen LR. The hybrids' AdamW groups (embedding, head)
take the LR the ``adamw`` arm chose on the same base (``muon-moonlight`` shares its swept
LR, as Moonlight's scaling is made for). Every fine-tuning run scores greedy exact match on
the test problems at its end (``predictions.jsonl``), the base's own validation loss at each
evaluation (``source_val``: forgetting) and the weight and update RMS of the hidden matrices.

Every run is its own process (:func:`muonlab.experiments.runs.run_isolated`) at ``threads``
torch threads, ``jobs`` at a time; a rerun of the same command skips finished runs and resumes
interrupted ones; its phases are replayed from the finished runs. The bases' checkpoints stay
local (git keeps the records, not ``ckpt.pt``): a study continued from a clone retrains each
chosen base whose checkpoint is missing and takes it only if its final validation loss is the
recorded one (:meth:`FinetuneStudy.regenerate_checkpoint`). Layout::

    OUT/study.json                          the settings (a rerun must match them)
    OUT/commands.txt                        every command that ran the study
    OUT/sweeps.json                         each sweep's grid, extensions and choice
    OUT/arms.json                           what each arm is (the report's words)
    OUT/task/train.txt                      the fine-tuning text (the task's training problems)
    OUT/task/test.jsonl                     the test problems, scored order (id, question, ...)
    OUT/bases/<base>/lr<lr>-s<seed>/        a pretraining run (ckpt.pt of its last step)
    OUT/regenerated/<base>/lr<lr>-s<seed>/  a chosen base retrained for its missing ckpt.pt
    OUT/ft/<base>/<arm>/lr<lr>-s<seed>/     a fine-tuning run (metrics, predictions.jsonl)
    OUT/runs.jsonl                          one line per finished fine-tuning run

:func:`muonlab.report.finetune.build_finetune_report` writes ``runs.jsonl``, ``report.md``
and the figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from muonkit import hardware
from muonkit.options import MuonOptions
from muonkit.registry import ADAMW, MUON

from ..data.tasks import Difficulty
from ..data.text import BUNDLED, bundled_text
from ..report.records import STUDY_TASK
from ..train.config import resolve_device
from ..train.files import append_line, write_whole
from ..train.finetune import BaseRun, Task
from ..train.gpt import load_gpt_data
from ..train.loop import CHECKPOINT, TrainConfig
from ..train.settings import check_settings, drop_unset, setting
from .runs import (
    RunSpec,
    SlotPool,
    check_same_study,
    final_val_loss,
    run_concurrently,
    run_isolated,
    say,
)
from .sweep import factor_grid, run_sweep

BASES = (ADAMW, MUON)


@dataclass(frozen=True)
class Arm:
    """One fine-tuning setup. ``optimizer``: "adamw" or "muon" (the hybrid); ``knob``: the
    option the swept LR sets ("lr", "muon_lr", or "shared" for lr = muon_lr); ``center``: the
    sweep's first grid centre; ``state``: the optimizer state it starts from
    (:data:`muonlab.train.finetune.STATES`); ``scaling``/``momentum_form``: the Muon groups'
    ``lr_scaling``/``momentum_form``; ``lora_rank``: > 0 trains LoRA adapters only;
    ``bases``: the bases it fine-tunes."""

    optimizer: str
    knob: str
    center: float
    state: str = "fresh"
    scaling: str | None = None
    momentum_form: str | None = None
    lora_rank: int = 0
    bases: tuple[str, ...] = BASES
    about: str = ""

    def options(self) -> dict:
        """The Muon groups' options of this arm (none for AdamW)."""
        if self.optimizer == ADAMW:
            return {}
        return {"lr_scaling": self.scaling, "momentum_form": self.momentum_form}


def _muon(center: float, scaling: str = "keller", form: str = "standard", **kw) -> Arm:
    return Arm(MUON, kw.pop("knob", "muon_lr"), center, scaling=scaling, momentum_form=form,
               **kw)


ARMS = {
    ADAMW: Arm(ADAMW, "lr", 1e-3, about="AdamW (wd 0.1), fresh state"),
    "muon-kj": _muon(4e-3, about="Muon hybrid, KJ scaling max(1, out/in)^0.5, fresh state"),
    "muon-moonlight": _muon(1e-3, "moonlight", knob="shared", about="Muon hybrid, Moonlight "
                            "scaling 0.2 max(out, in)^0.5 sharing AdamW's LR, fresh state"),
    "muon-from-adamw": _muon(4e-3, state="from-adamw", bases=(ADAMW,),
                             about="Muon (KJ), momentum migrated from the AdamW base's moments"),
    "muon-carry": _muon(4e-3, state="carry", bases=(MUON,),
                        about="Muon (KJ), the Muon base's optimizer state carried over"),
    "notes-failed": _muon(5e-4, "max_dim", "ema", about="the notes' failed setup: EMA momentum "
                          "and max-dim scaling max(out, in)^0.5"),
    "ema-only": _muon(4e-3, "keller", "ema", about="the notes' first bug alone: EMA momentum"),
    "max-dim-only": _muon(5e-4, "max_dim", about="the notes' second bug alone: max-dim scaling"),
    "lora-adamw": Arm(ADAMW, "lr", 4e-3, lora_rank=8, about="LoRA rank 8 (alpha 8), AdamW"),
    "lora-muon": _muon(8e-3, lora_rank=8, about="LoRA rank 8 (alpha 8), Muon (KJ) on A and B"),
}

# `--quick`: a smoke study of a few minutes on a laptop (sizes of the flags left at default)
QUICK = dict(model_overrides={"n_layer": 1, "n_embd": 32, "n_head": 2}, block_size=256,
             batch_size=4, base_steps=30, steps=10, evals_per_run=1, eval_batches=2,
             task_train=200, task_test=20, task_max_steps=1, task_max_tokens=48, grid_points=2,
             sweep_extend=0, report_seeds=[1, 2])

@dataclass
class FinetuneStudyConfig:
    """The study's settings (everything but ``RUNTIME`` must match on a rerun into ``out``).

    Bases: ``preset`` with ``block_size`` and ``model_overrides``, ``base_steps`` steps of
    ``batch_size`` sequences of ``data`` (byte tokenizer), LR sweeps centred on
    ``base_adamw_lr`` / ``base_muon_lr``. Fine-tuning: ``steps`` steps on ``task_train``
    problems of at most ``task_max_steps`` reasoning steps (split seed ``task_seed``), scored
    on ``task_test`` problems (answers of up to ``task_max_tokens`` tokens). Both phases:
    linear warmup over ``warmup_frac``, cosine decay to 0.1, ``evals_per_run`` evaluations of
    ``eval_batches`` batches; sweeps of ``grid_points`` factor-2 points, ``sweep_extend`` more
    at each edge, then ``sweep_refine`` rounds around a best inside the grid. Every run:
    ``muon_options`` (:class:`muonkit.MuonOptions`, the ``--ns-*`` flags) in its Muon groups,
    QK-clip at ``qk_clip`` (None: off)."""

    out: str = setting("out", default="runs/finetune-study")
    data: str = setting("data", help="pretraining corpus: 'tinyshakespeare' or a text file "
                        "(byte tokenizer; its sha256 is recorded)")
    arms: list[str] = setting("arms", default=tuple(ARMS), choices=tuple(ARMS))
    preset: str = setting("preset")
    block_size: int = setting("block_size", default=256)
    model_overrides: dict = field(default_factory=dict)
    batch_size: int = setting("batch_size", default=8)
    base_steps: int = setting("base_steps")
    base_adamw_lr: float = setting("base_adamw_lr")
    base_muon_lr: float = setting("base_muon_lr")
    steps: int = setting("steps", default=500, help="fine-tuning steps")
    warmup_frac: float = setting("warmup_frac")
    evals_per_run: int = setting("evals_per_run", default=2)
    eval_batches: int = setting("eval_batches", default=6)
    task_seed: int = setting("task_seed")
    task_train: int = setting("task_train", default=2000)
    task_test: int = setting("task_test")
    task_max_steps: int = setting("task_max_steps", default=1)
    task_max_number: int = setting("task_max_number", default=10)
    task_max_tokens: int = setting("task_max_tokens", default=64)
    tune_seed: int = setting("tune_seed", default=0)
    report_seeds: list[int] = setting("report_seeds")
    grid_points: int = setting("grid_points", default=5,
                               help="factor-2 LR grid size of every sweep")
    sweep_extend: int = setting("sweep_extend")
    sweep_refine: int = setting("sweep_refine")
    device: str = setting("device", default="cpu")
    jobs: int = setting("jobs")
    threads: int = setting("threads", default=1)
    muon_options: dict = field(default_factory=dict)
    qk_clip: float | None = setting("qk_clip")

    RUNTIME: ClassVar[tuple[str, ...]] = ("out", "arms", "jobs", "threads")
    FLAG_NAMES: ClassVar[dict[str, str]] = {
        "corpus_sha256": "--data (its contents)",
        "machine_class": "the machine class (device, CPU or GPU, --threads)"}
    # what a study.json written before a setting existed held
    ABSENT: ClassVar[dict] = {"task_max_number": 50}

    def __post_init__(self) -> None:
        check_settings(self)
        resolve_device(self.device)
        MuonOptions(**self.muon_options)
        if self.tune_seed in self.report_seeds:
            raise ValueError(f"--report-seeds must differ from --tune-seed "
                             f"({self.tune_seed}), got {self.report_seeds}")
        for name, steps in (("--base-steps", self.base_steps), ("--steps", self.steps)):
            if steps < self.evals_per_run:
                raise ValueError(f"{name} ({steps}) must be at least --evals-per-run "
                                 f"({self.evals_per_run})")

    def difficulty(self) -> Difficulty:
        return Difficulty(max_steps=self.task_max_steps, max_number=self.task_max_number)

    def study(self) -> dict:
        """The settings that define the study's results, the corpus's sha256 and the machine
        class its runs compute on (:func:`muonkit.hardware.machine_class`, ``threads``
        included: a base retrained on another class would not be the same weights)
        (``muon_options`` only where they change a default, ``qk_clip`` and ``sweep_refine``
        only when given, so a study begun before those flags continues)."""
        kept = drop_unset({k: v for k, v in dataclasses.asdict(self).items()
                           if k not in (*self.RUNTIME, "muon_options", "qk_clip")},
                          {"sweep_refine": 0})
        kept.update(tokenizer="byte", corpus_sha256=corpus_sha256(self.data))
        changed = MuonOptions.changes(self.muon_options)
        kept.update(drop_unset({"muon_options": changed, "qk_clip": self.qk_clip},
                               {"muon_options": {}, "qk_clip": None}))
        kept["machine_class"] = hardware.machine_class(resolve_device(self.device), self.threads)
        return kept

    def study_json(self) -> str:
        """``OUT/study.json``'s text: :meth:`study` as JSON (a rerun must match it)."""
        return json.dumps(self.study(), indent=1)

    def train_config(self, steps: int, seed: int, out_dir: Path, muon: bool,
                     checkpoint: bool) -> TrainConfig:
        """A run's loop settings; ``checkpoint``: save its last step (a base, which the
        fine-tuning runs start from); a fine-tuning run keeps no checkpoint (interrupted, it
        starts again)."""
        every = max(1, steps // self.evals_per_run)
        return TrainConfig(
            steps=steps, warmup_steps=round(self.warmup_frac * steps), decay="cosine",
            min_lr_ratio=0.1, grad_clip=1.0,
            momentum_warmup_steps=round(0.15 * steps) if muon else 0,
            eval_every=every, checkpoint_every=steps if checkpoint else 0,
            out_dir=str(out_dir), run_name=f"{out_dir.parent.name}-{out_dir.name}",
            device=self.device, progress=False, seed=seed, trackers=(),
        )


def corpus_sha256(data: str) -> str:
    """sha256 of the pretraining corpus's bytes (the bundled text's UTF-8 bytes)."""
    raw = bundled_text().encode() if data == BUNDLED else Path(data).read_bytes()
    return hashlib.sha256(raw).hexdigest()


def base_dir(out: Path, base: str, lr: float, seed: int) -> Path:
    return out / "bases" / base / f"lr{lr:g}-s{seed}"


def regenerated_dir(out: Path, base: str, lr: float, seed: int) -> Path:
    return out / "regenerated" / base / f"lr{lr:g}-s{seed}"


def ft_dir(out: Path, base: str, arm: str, lr: float, seed: int) -> Path:
    return out / "ft" / base / arm / f"lr{lr:g}-s{seed}"


def task_text(out: Path) -> Path:
    return out / "task" / "train.txt"


def task_test(out: Path) -> Path:
    """The study's test problems (packed predictions take their questions from it)."""
    return out / STUDY_TASK


def applicable(arms: list[str], base: str) -> list[str]:
    """The arms of ``arms`` that fine-tune ``base``, ``adamw`` first (the hybrids take its
    LR for their AdamW groups)."""
    names = [ADAMW, *[a for a in arms if a != ADAMW]]
    return [a for a in names if base in ARMS[a].bases]


def optimizer_options(arm: Arm, lr: float, aux_lr: float, muon_options: dict | None = None
                      ) -> dict:
    """:func:`muonlab.train.gpt.gpt_optimizer` options of ``arm`` at swept LR ``lr``;
    ``muon_options`` go to a Muon arm (the arm's own options win)."""
    opts = {"lr": lr, "betas": (0.9, 0.95), "weight_decay": 0.1}
    if arm.optimizer == ADAMW:
        return opts
    return {**opts, **(muon_options or {}), **arm.options(), "muon_lr": lr, "momentum": 0.95,
            "muon_weight_decay": 0.0, "lr": lr if arm.knob == "shared" else aux_lr}


def train_finetune(base_run: str, task: Task, state: str, **kwargs):
    """A fine-tuning run in a study's child process: ``train_gpt`` from the base run in
    ``base_run`` (read here, not sent through the pipe), on ``task``."""
    from ..train.gpt import train_gpt

    return train_gpt(base=BaseRun.load(base_run), task=task, state=state, **kwargs)


FINETUNE_ENTRY = "muonlab.experiments.finetune_study:train_finetune"


class FinetuneStudy:
    """The runs of one study directory: the bases' sweeps, then each base's arms in threads
    sharing one slot pool."""

    def __init__(self, cfg: FinetuneStudyConfig, log=say):
        self.cfg, self.log, self.out = cfg, log, Path(cfg.out)
        self.pool = SlotPool(cfg.jobs)
        self.lock = threading.Lock()
        path = self.out / "sweeps.json"
        self.sweeps: dict = json.loads(path.read_text()) if path.exists() else {}
        self.task = Task.make("arithmetic", None, cfg.task_seed, cfg.task_train, cfg.task_test,
                              cfg.task_max_tokens, cfg.difficulty(), score_start=False)

    def _run(self, spec: RunSpec, priority: tuple) -> float:
        return self.pool.run(priority, run_isolated, spec, self.log)

    def run_base(self, base: str, lr: float, aux: float | None, out_dir: Path | None = None
                 ) -> float:
        """The pretraining run of ``base`` at ``lr`` (its sweep point; ``out_dir``: elsewhere
        than its own directory)."""
        cfg = self.cfg
        out_dir = out_dir or base_dir(self.out, base, lr, cfg.tune_seed)
        opts = {"lr": lr, "betas": (0.9, 0.95), "weight_decay": 0.1}
        if base == MUON:
            opts.update(cfg.muon_options, lr=aux, muon_lr=lr, momentum=0.95,
                        muon_weight_decay=0.0)
        kwargs = dict(
            optimizer=base, preset=cfg.preset, data=cfg.data, tokenizer="byte",
            batch_size=cfg.batch_size, block_size=cfg.block_size,
            eval_batches=cfg.eval_batches, model_overrides=dict(cfg.model_overrides),
            optimizer_options=opts, qk_clip=cfg.qk_clip,
            train_config=cfg.train_config(cfg.base_steps, cfg.tune_seed, out_dir, base == MUON,
                                          checkpoint=True),
        )
        spec = RunSpec(kwargs, f"base {base} lr{lr:g}", cfg.threads, log_rms=True)
        return self._run(spec, (0,))

    def run_ft(self, base: str, name: str, lr: float, seed: int, aux: float) -> float:
        cfg, arm = self.cfg, ARMS[name]
        out_dir = ft_dir(self.out, base, name, lr, seed)
        kwargs = dict(
            base_run=str(self.bases[base]), task=self.task, state=arm.state,
            optimizer=arm.optimizer, data=str(task_text(self.out)), tokenizer="byte",
            batch_size=cfg.batch_size, eval_batches=cfg.eval_batches,
            optimizer_options=optimizer_options(arm, lr, aux, cfg.muon_options),
            lora_rank=arm.lora_rank, qk_clip=cfg.qk_clip,
            train_config=cfg.train_config(cfg.steps, seed, out_dir, arm.optimizer != ADAMW,
                                          checkpoint=False),
        )
        spec = RunSpec(kwargs, f"{base} {name} lr{lr:g} s{seed}", cfg.threads, log_rms=True,
                       entry=FINETUNE_ENTRY)
        role = 0 if seed == cfg.tune_seed else 1
        return self._run(spec, (1, role, BASES.index(base), list(ARMS).index(name)))

    def _sweep(self, key: str, center: float, evaluate) -> float:
        result = run_sweep(factor_grid(center, self.cfg.grid_points), evaluate,
                           max_extend=self.cfg.sweep_extend, refine=self.cfg.sweep_refine,
                           fit=self.cfg.sweep_refine > 0)
        with self.lock:
            self.sweeps[key] = result.record()
            write_whole(self.out / "sweeps.json", json.dumps(self.sweeps, indent=1, default=str))
        return result.best

    def tune_bases(self) -> None:
        """The AdamW base's sweep, then the Muon base's (its AdamW groups at AdamW's LR)."""
        cfg, self.bases = self.cfg, {}
        adamw = self._sweep("base/adamw", cfg.base_adamw_lr, lambda lrs: run_concurrently(
            [lambda x=x: self.run_base(ADAMW, x, None) for x in lrs]))
        muon = self._sweep("base/muon", cfg.base_muon_lr, lambda lrs: run_concurrently(
            [lambda x=x: self.run_base(MUON, x, adamw) for x in lrs]))
        for base, lr, aux in ((ADAMW, adamw, None), (MUON, muon, adamw)):
            self.bases[base] = base_dir(self.out, base, lr, cfg.tune_seed)
            if not (self.bases[base] / CHECKPOINT).exists():
                self.regenerate_checkpoint(base, lr, aux)

    def regenerate_checkpoint(self, base: str, lr: float, aux: float | None) -> None:
        """Give the chosen ``base`` (finished, its ``ckpt.pt`` missing: a study continued from
        a clone) its checkpoint: the run again in ``OUT/regenerated/`` with the same
        settings, taken only if its final val loss is the recorded one to 1e-6 (the same
        weights: a run is deterministic on one machine class); otherwise refused in one line
        naming both losses, and nothing is taken."""
        recorded_dir = self.bases[base]
        scratch = regenerated_dir(self.out, base, lr, self.cfg.tune_seed)
        self.log(f"base {base} lr{lr:g}: its {CHECKPOINT} is not here; training it again")
        again = self.run_base(base, lr, aux, out_dir=scratch)
        recorded = final_val_loss(recorded_dir)
        if not abs(again - recorded) <= 1e-6 * abs(recorded):
            raise ValueError(
                f"the {base} base retrained for its missing {CHECKPOINT} ends at val loss "
                f"{again:.6f}, its record in {recorded_dir} at {recorded:.6f}: this machine "
                "(or --threads) computes differently from the one that trained it; continue "
                f"the study there (with its {CHECKPOINT}), or start another --out")
        os.replace(scratch / CHECKPOINT, recorded_dir / CHECKPOINT)
        shutil.rmtree(scratch)
        with contextlib.suppress(OSError):  # OUT/regenerated/<base>/ and OUT/regenerated/
            os.removedirs(scratch.parent)

    def arm(self, base: str, name: str, aux: float | None) -> float:
        """One arm on one base: its LR sweep on the tuning seed, then the report seeds."""
        lr = self._sweep(f"{base}/{name}", ARMS[name].center, lambda lrs: run_concurrently(
            [lambda x=x: self.run_ft(base, name, x, self.cfg.tune_seed, aux) for x in lrs]))
        aux = lr if aux is None else aux  # the adamw arm: its own LR
        run_concurrently([lambda s=s: self.run_ft(base, name, lr, s, aux)
                          for s in self.cfg.report_seeds])
        self.log(f"{base} base, {name}: done at lr {lr:g}")
        return lr

    def fine_tune(self, base: str) -> None:
        first, *rest = applicable(self.cfg.arms, base)
        aux = self.arm(base, first, None)
        run_concurrently([lambda n=n: self.arm(base, n, aux) for n in rest])

    def run_all(self) -> None:
        self.tune_bases()
        run_concurrently([lambda b=b: self.fine_tune(b) for b in BASES])


def check_continues(saved: Path, cfg: FinetuneStudyConfig) -> None:
    """Refuse (one line naming each differing flag) to continue the study whose ``study.json``
    is ``saved`` with other settings than ``cfg``'s; settings it predates count as
    ``cfg.ABSENT`` says, and one begun before the machine class was pinned continues on any
    class (and is pinned to this one from then on)."""
    unpinned = saved.exists() and "machine_class" not in json.loads(saved.read_text())
    check_same_study(saved, cfg.study(), cfg.FLAG_NAMES, absent=cfg.ABSENT,
                     may_change=["machine_class"] if unpinned else [])


def prepare_out(cfg: FinetuneStudyConfig, command: str) -> Path:
    """Check the corpus; create ``out`` or check that it holds this study (same settings);
    write the task's training text and test problems; log the command."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file")
    # a bad corpus, or a batch that does not fit it or the task's text, fails before anything
    # is written
    load_gpt_data(cfg.data, "byte", cfg.preset, cfg.batch_size, cfg.block_size,
                  cfg.model_overrides)
    task = Task.make("arithmetic", None, cfg.task_seed, cfg.task_train, cfg.task_test,
                     cfg.task_max_tokens, cfg.difficulty())
    with tempfile.TemporaryDirectory() as scratch:
        load_gpt_data(str(task.write_training_text(Path(scratch) / "train.txt")), "byte",
                      cfg.preset, cfg.batch_size, cfg.block_size, cfg.model_overrides)
    study = cfg.study_json()
    check_continues(out / "study.json", cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_whole(out / "study.json", study)
    task.write_training_text(task_text(out))
    task.write_test_problems(task_test(out))
    write_whole(out / "arms.json", json.dumps({k: a.about for k, a in ARMS.items()}, indent=1))
    append_line(out / "commands.txt", command)
    return out
