"""`muonkit variants <study>`: what the memory-saving Muon variants save, and what they cost.

An MLP classifier (:class:`muonlab.models.mlp.MLP`, no biases, so every parameter is a matrix
and each optimizer trains the whole model) is trained on MNIST or CIFAR-10 with several
optimizers ("arms"), each over several seeds. A study is nothing but its list of arms; one
runner trains them all with the one training loop (:mod:`muonlab.train`) and the report
module turns the metrics files into a table and a figure.

Studies:

* ``large``: AdamW (baseline), dense Muon, LoRAPreMuon (``--rank``), KroneckerMuon.
* ``equal-memory``: KroneckerMuon and LoRAPreMuon at the rank whose measured state is closest
  to Kronecker's (dense Muon as the reference).
* ``rank-sweep``: LoRAPreMuon at each of ``--ranks`` with KroneckerMuon and dense Muon as
  reference lines: final test accuracy against optimizer-state bytes.
* ``hybrid``: HybridKroneckerMuon (Kronecker momentum for the hidden layers, dense for the
  output layer) vs dense Muon vs LoRAPreMuon (``--rank``).
* ``tuned``: the arms of all four plus a mixing ablation, every LR swept on a held-out split,
  3 seeds, paired intervals against dense Muon, resumable, runs in their own processes
  (:mod:`muonlab.experiments.variant_tuned`).

In the four untuned studies every Muon-family arm shares ``--lr`` and ``--momentum``; AdamW
has ``--adamw-lr``; all use the loop's cosine LR decay to 10% and no gradient clipping. The
table's state bytes are the loop's measurement at the end of training (every tensor in
``optimizer.state``); each metrics file also holds a ``state`` record with the bytes per
parameter (the variants' ``state_bytes()``; tests check that both agree).

Outputs in ``--out``: ``runs/<NN>-<arm>-s<seed>/metrics.jsonl`` (the metrics files),
``table.md`` and ``<study>.png``.

Defaults are sized for a few minutes per study on 2 CPU cores (MNIST, 784 -> 256 -> 128 ->
10, 3 epochs, 2 seeds). Full-size settings (a GPU or a long CPU run):
``--dataset cifar10 --hidden 4096 2048 --epochs 20 --seeds 0 1 2`` and
``--dataset mnist --hidden 1024 512 --epochs 10 --seeds 0 1 2``.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..data.vision import ShuffledBatches, load_flat
from ..report.records import find_records
from ..report.variants import write_report
from ..train import TrainConfig, train
from ..train.files import METRICS, RunExistsError, finished_run, write_whole
from .runs import check_same_study, run_concurrently, say
from .variant_config import (
    ARM_KINDS,
    DATASETS,
    MAY_CHANGE,
    STUDIES,
    Arm,
    StudyConfig,
    settings,
)
from .variant_optimizers import (
    arm_lr,
    build_model,
    build_optimizer,
    per_param_state_bytes,
    study_arms,
)

__all__ = ["ARM_KINDS", "DATASETS", "STUDIES", "Arm", "StudyConfig", "run_arm", "run_study"]


@torch.no_grad()
def accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096):
    """(accuracy, mean cross-entropy) of ``model`` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        logits = model(xb)
        correct += (logits.argmax(1) == yb).sum().item()
        loss += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
    model.train(was_training)
    return correct / len(x), loss / len(x)


class EpochRecorder:
    """The classifier's loss and evaluation for the loop, and the per-epoch records.

    ``loss_fn`` keeps each training batch's loss; ``on_eval`` (the loop evaluates once per
    epoch) writes an ``epoch`` record (mean training loss of the epoch, train and test
    accuracy, training time of the epoch) and, after the last epoch, a ``state`` record with
    the optimizer's state bytes per parameter.
    """

    def __init__(self, model, optimizer, data: dict, steps_per_epoch: int, steps: int):
        self.model, self.optimizer, self.data = model, optimizer, data
        self.steps_per_epoch, self.steps = steps_per_epoch, steps
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.losses: list[torch.Tensor] = []
        self.last_elapsed = 0.0

    def loss_fn(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        if model.training:
            self.losses.append(loss.detach())
        return loss

    def evaluate(self, model: nn.Module) -> dict:
        """Test accuracy; ``val_loss`` is the held-out split's loss where ``data`` has a
        "val" split (the tuned study chooses by it), else the test loss (untuned studies)."""
        test_acc, test_loss = accuracy_and_loss(model, *self.data["test"])
        if "val" not in self.data:
            return {"val_loss": test_loss, "test_acc": test_acc}
        val_acc, val_loss = accuracy_and_loss(model, *self.data["val"])
        return {"val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss,
                "test_acc": test_acc}

    def on_eval(self, step: int, record: dict, logger) -> None:
        if step == 0:
            return
        train_acc, _ = accuracy_and_loss(self.model, *self.data["train"])
        logger.write(
            dict(
                kind="epoch",
                step=step,
                epoch=step // self.steps_per_epoch,
                train_loss=torch.stack(self.losses).mean().item(),
                train_acc=train_acc,
                test_acc=record["test_acc"],
                epoch_time_s=record["elapsed_s"] - self.last_elapsed,
            )
        )
        self.losses.clear()
        self.last_elapsed = record["elapsed_s"]
        if step == self.steps:
            state = per_param_state_bytes(self.optimizer, self.names)
            logger.write(dict(kind="state", step=step, state_bytes=state))


def loop_config(arm: Arm, seed: int, cfg: StudyConfig, steps_per_epoch: int, out_dir: Path,
                **overrides) -> TrainConfig:
    """The training loop's settings of one (arm, seed): ``cfg.epochs`` epochs, one evaluation
    per epoch, cosine decay to 10%, no clipping."""
    return TrainConfig(
        steps=cfg.epochs * steps_per_epoch,
        eval_every=steps_per_epoch,
        grad_clip=0.0,
        decay="cosine",
        min_lr_ratio=0.1,
        out_dir=str(out_dir),
        run_name=f"{arm.slug}-s{seed}",
        device=cfg.device,
        progress=False,
        trackers=cfg.trackers,
        wandb_project=cfg.wandb_project,
        wandb_run_name=f"{cfg.study}/{out_dir.name}",
        wandb_group=cfg.wandb_run_name or cfg.study,
        seed=seed,
        **overrides,
    )


def train_arm(arm: Arm, cfg: StudyConfig, data: dict, loop: TrainConfig,
              lr: float | None = None) -> Path:
    """Train ``arm`` at ``lr`` (None: the study's) with the training loop and ``loop``'s
    settings (its seed seeds the model and the batch order), one evaluation per epoch
    (:class:`EpochRecorder`); returns the metrics file."""
    model = build_model(cfg, loop.seed)
    optimizer = build_optimizer(arm, model, cfg, lr)
    batches = ShuffledBatches(*data["train"], cfg.batch_size, loop.seed)
    recorder = EpochRecorder(model, optimizer, data, batches.batches_per_epoch, loop.steps)
    run_config = dict(
        study=asdict(cfg),
        kind=arm.kind,
        rank=arm.rank,
        mixing=arm.mixing,
        lr=arm_lr(arm, cfg) if lr is None else lr,
        params=sum(p.numel() for p in model.parameters()),
    )
    result = train(
        model, optimizer, batches, recorder.loss_fn, loop, evaluate=recorder.evaluate,
        on_eval=recorder.on_eval, optimizer_name=arm.label, run_config=run_config,
    )
    return result.metrics_path


def run_arm(arm: Arm, seed: int, cfg: StudyConfig, data: dict, out_dir: Path) -> Path:
    """Train one (arm, seed) of an untuned study at the study's LR; returns its metrics file.
    What an interrupted run left in ``out_dir`` is replaced."""
    steps_per_epoch = -(-len(data["train"][0]) // cfg.batch_size)
    overwrite = (out_dir / METRICS).exists()
    return train_arm(arm, cfg, data, loop_config(arm, seed, cfg, steps_per_epoch, out_dir,
                                                 overwrite=overwrite))


def run_study(cfg: StudyConfig, log: Callable[[str], None] = say) -> dict[str, Path]:
    """Train every arm of ``cfg.study`` over every seed; write the metrics files, the table
    and the figure under ``cfg.out``. Returns {"table": path, "figure": path, "runs": dir}."""
    out = Path(cfg.out)
    runs_dir, saved, study = out / "runs", out / "study.json", settings(cfg)
    earlier = find_records(runs_dir, "*/metrics.jsonl")
    if earlier and not cfg.overwrite:  # the same study continues; another one is refused
        if not saved.exists():
            raise RunExistsError(
                f"{out} already holds a study ({len(earlier)} runs in {runs_dir}) that recorded "
                "no settings; pass --overwrite to replace it, or choose another --out")
        check_same_study(saved, study, {"study": "the kind of study"}, may_change=MAY_CHANGE)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_flat(cfg.dataset, cfg.data_dir)
    if cfg.train_limit:
        data["train"] = tuple(t[: cfg.train_limit] for t in data["train"])
    if cfg.overwrite:
        shutil.rmtree(runs_dir, ignore_errors=True)  # runs of an earlier study would mix in
    runs_dir.mkdir(parents=True, exist_ok=True)
    write_whole(saved, json.dumps(study, indent=1))
    arms = study_arms(cfg, build_model(cfg, cfg.seeds[0]))

    def run(i: int, arm: Arm, seed: int) -> None:
        run_dir = runs_dir / f"{i:02d}-{arm.slug}-s{seed}"
        if finished_run(run_dir / METRICS) is not None:
            log(f"[{cfg.study}] {arm.label} seed {seed}: finished earlier, kept")
            return
        log(f"[{cfg.study}] {arm.label} seed {seed}")
        run_arm(arm, seed, cfg, data, run_dir)  # an interrupted one starts again

    # in this thread: Ctrl-C or SIGTERM stops the study (StudyInterrupted: how to continue)
    run_concurrently([functools.partial(run, i, arm, seed) for i, arm in enumerate(arms)
                      for seed in cfg.seeds], in_threads=False)
    return write_report(out, cfg.study, DATASETS[cfg.dataset])
