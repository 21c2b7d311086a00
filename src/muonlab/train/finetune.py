"""Fine-tuning starts from a pretrained run: :class:`BaseRun` reads a finished ``muonkit train``
run (its config record and its final checkpoint), and the loaders put its weights
into the new model (:func:`load_base_weights`) and, as ``state`` asks, its optimizer state
into the new optimizer (:func:`load_base_state`).

``state``: ``"fresh"`` (the fine-tuning optimizer starts empty), ``"carry"`` (the base run's
optimizer state, when the fine-tuning optimizer is the same kind; its own hyperparameters,
e.g. a smaller LR, are kept), ``"from-adamw"`` (Muon's momentum from an AdamW base's moments:
:func:`muonkit.migrate_adamw_state`).

The fine-tuning run also scores the base's own validation set (``source_val_loss``), so
forgetting is measured: at step 0 it equals the base run's final ``val_loss``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from muonkit.registry import ADAMW

from ..data.text import fixed_batches, load_text
from ..report.records import read_text, records_exist, write_records
from .config import resolve_dtype
from .files import (
    CHECKPOINT,
    CHECKPOINT_DIR,
    METRICS,
    load_checkpoint,
    read_records,
    write_whole,
)
from .step import autocast_context, evaluate_batches, lm_loss

STATES = ("fresh", "carry", "from-adamw")

# the flags whose values a fine-tuning run takes from its base (its architecture and vocabulary)
BASE_FLAGS = {"preset": "preset", "tokenizer": "data.tokenizer", "block_size": "model.block_size",
              "rope": "model.rope", "untied": "model.tie_weights"}


@dataclass(frozen=True)
class BaseRun:
    """A finished pretraining run: ``record`` (its config line), ``checkpoint`` (its final
    state: model, optimizers), ``final_val_loss`` (its summary's)."""

    run_dir: Path
    record: dict
    checkpoint: dict
    final_val_loss: float | None

    @classmethod
    def load(cls, run_dir: str | Path) -> BaseRun:
        """Read ``run_dir``; a directory that holds no finished single-process run with a
        checkpoint of its last step is refused in one line saying what is missing."""
        run_dir = Path(run_dir)
        metrics = run_dir / METRICS
        if not records_exist(metrics):
            raise FileNotFoundError(f"--init-from {run_dir}: no {METRICS}; give the --out of a "
                                    "finished `muonkit train` run")
        records = read_records(metrics)
        record = next((r for r in records if r.get("kind") == "config"), None)
        summary = next((r for r in reversed(records) if r.get("kind") == "summary"), None)
        if record is None or "model" not in record.get("config", {}):
            raise ValueError(f"--init-from {run_dir}: not a `muonkit train` GPT run")
        if (run_dir / CHECKPOINT_DIR).exists() and not (run_dir / CHECKPOINT).exists():
            raise ValueError(f"--init-from {run_dir}: a multi-process (DCP) checkpoint; "
                             "fine-tuning starts from a single-process run's ckpt.pt")
        if not (run_dir / CHECKPOINT).exists():
            raise FileNotFoundError(f"--init-from {run_dir}: no checkpoint ({CHECKPOINT}); "
                                    "pretrain with --checkpoint-every N")
        checkpoint = load_checkpoint(run_dir / CHECKPOINT)
        steps = record["config"]["steps"]
        if summary is None or checkpoint["step"] != steps:
            raise ValueError(
                f"--init-from {run_dir}: its checkpoint is at step {checkpoint['step']}, not "
                f"its last step ({steps}); finish the run (--resume), with --checkpoint-every "
                "dividing --steps")
        return cls(run_dir, record, checkpoint, summary.get("final_val_loss"))

    @functools.cached_property
    def source_tokens(self):
        """The base run's own data (its validation split scores forgetting), read once."""
        data = self.settings["data"]
        return load_text(data["source"], data["tokenizer"])

    @property
    def optimizer(self) -> str:
        return self.record["optimizer"]

    @property
    def settings(self) -> dict:
        return self.record["config"]

    def setting(self, path: str):
        """A recorded setting by dotted path (e.g. ``"model.rope"``)."""
        value = self.settings
        for key in path.split("."):
            value = value[key]
        return value

    def flag_values(self) -> dict:
        """The base's value of each of :data:`BASE_FLAGS` as its flag takes it."""
        out = {flag: self.setting(path) for flag, path in BASE_FLAGS.items()}
        out["untied"] = not out["untied"]  # recorded as tie_weights
        return out


def check_base_flags(given: dict, base: BaseRun) -> dict:
    """The base's architecture flags, refusing any given (not None) that differs, in one line
    naming it: fine-tuning keeps the base's architecture and vocabulary."""
    values = base.flag_values()
    for flag, value in given.items():
        if value is not None and value != values[flag]:
            raise ValueError(f"--{flag.replace('_', '-')}: the base run {base.run_dir} has "
                             f"{values[flag]!r}, given {value!r}; fine-tuning keeps the base's "
                             "architecture and vocabulary (leave the flag out)")
    return values


def load_base_weights(base: BaseRun, model: nn.Module) -> None:
    """The base's final weights into ``model`` (built with the base's architecture)."""
    model.load_state_dict(base.checkpoint["model"])


def load_base_state(base: BaseRun, model: nn.Module, optimizer: torch.optim.Optimizer,
                    optimizer_name: str, state: str) -> None:
    """Per ``state``, the base's optimizer state into ``optimizer`` (the fine-tuning one, built
    over ``model``'s parameters, the same as the base's). ``from-adamw`` rebuilds the base's
    AdamW over ``model`` (its groups as the base had them), loads its state and migrates it."""
    if state not in STATES:
        raise ValueError(f"--state must be one of {list(STATES)}, got {state!r}")
    saved = base.checkpoint["optimizers"][0]
    if state == "carry":
        if base.optimizer != optimizer_name:
            raise ValueError(f"--state carry: the base run was trained with {base.optimizer}, "
                             f"the fine-tuning optimizer is {optimizer_name}; carry needs the "
                             "same kind (use --state fresh, or from-adamw from an AdamW base)")
        own = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(saved)
        for group, hyper in zip(optimizer.param_groups, own, strict=True):
            # the carried state with this run's groups exactly: this run's LRs and options,
            # and none of the base's additions (its schedule's initial_lr would set the LR)
            params = group["params"]
            group.clear()
            group.update(hyper, params=params)
        shard_state_like_params(optimizer)
    elif state == "from-adamw":
        if base.optimizer != ADAMW or optimizer_name == ADAMW:
            raise ValueError(f"--state from-adamw: needs an AdamW base and a Muon-family "
                             f"fine-tuning optimizer (base {base.optimizer}, fine-tuning "
                             f"{optimizer_name})")
        from muonkit import migrate_adamw_state
        from muonkit.registry import build_optimizer

        adamw = build_optimizer(ADAMW, model)
        adamw.load_state_dict(saved)
        shard_state_like_params(adamw)
        migrate_adamw_state(adamw, optimizer)


def shard_state_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Each whole state tensor of a sharded (DTensor: FSDP2, HSDP) parameter that has the
    parameter's shape (a momentum, Adam's moments) as a DTensor laid out as the parameter:
    ``load_state_dict`` of a single-process checkpoint gives every rank the whole tensors, the
    sharded step wants this rank's shard. Other state (a step count, NorMuon's per-row moment)
    stays whole on every rank, as the sharded step keeps it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for group in optimizer.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and not isinstance(value, DTensor) \
                        and value.shape == p.shape:
                    state[key] = distribute_tensor(value, p.device_mesh, p.placements,
                                                   src_data_rank=None)


def source_evaluator(base: BaseRun, model: nn.Module, dtype: str):
    """``on_eval`` for the loop: after each evaluation, ``model``'s loss on the base's own
    validation batches (same data, seed, batch size and count as the base run, autocast as
    ``dtype`` resolves on the model's device) as a ``source_val`` record."""
    settings = base.settings
    batches = fixed_batches(base.source_tokens.val, settings["batch_size"],
                            settings["model"]["block_size"], settings["eval_batches"],
                            seed=settings["val_seed"])

    def on_eval(step: int, record: dict, logger) -> None:
        device = next(model.parameters()).device
        precision = resolve_dtype(dtype, device)
        loss = evaluate_batches(model, loss_fn=lm_loss, batches=batches, device=device,
                                autocast=lambda: autocast_context(device, precision))["val_loss"]
        logger.write({"kind": "source_val", "step": step, "source_val_loss": loss})

    return on_eval


TASKS = ("arithmetic", "gsm8k")


@dataclass(frozen=True)
class Task:
    """A question-answering task a fine-tuning run trains on and is scored by: ``train`` and
    ``test`` problems (:mod:`muonlab.data.tasks`), greedy answers of up to
    ``max_new_tokens`` tokens; ``score_start``: also score the test problems at step 0 (a
    study that fine-tunes one base many times scores its start once, not in every run);
    ``source``: where the problems come from (the generator's seed and difficulty, or the
    GSM8K directory), recorded with the run."""

    name: str
    train: list
    test: list
    max_new_tokens: int = 128
    score_start: bool = True
    source: dict = field(default_factory=dict)

    @classmethod
    def make(cls, name: str, data: str | None, seed: int, n_train: int, n_test: int,
             max_new_tokens: int, difficulty=None, score_start: bool = True) -> Task:
        """``arithmetic``: the generated problems' seeded splits (``difficulty``: a
        :class:`muonlab.data.tasks.Difficulty`, None: its default); ``gsm8k``: ``data`` is a
        directory with GSM8K's ``train.jsonl`` and ``test.jsonl`` (the first ``n_test`` test
        problems are scored)."""
        from ..data.tasks import Difficulty, read_gsm8k, task_splits

        if name == "arithmetic":
            if data is not None:
                raise ValueError("--task-data is for --task gsm8k; arithmetic is generated")
            difficulty = difficulty or Difficulty()
            train, test = task_splits(seed, n_train, n_test, difficulty)
            source = {"seed": seed, "difficulty": dataclasses.asdict(difficulty)}
        elif name == "gsm8k":
            if data is None:
                raise ValueError("--task gsm8k needs --task-data DIR (train.jsonl, test.jsonl)")
            train = read_gsm8k(Path(data) / "train.jsonl")[:n_train]
            test = read_gsm8k(Path(data) / "test.jsonl")[:n_test]
            source = {"data": str(data)}
        else:
            raise ValueError(f"--task must be one of {list(TASKS)}, got {name!r}")
        return cls(name, train, test, max_new_tokens, score_start, source)

    def write_training_text(self, path: Path) -> Path:
        """The training problems as one text file (prompt, answer, blank line each), written
        only when its content differs (a rerun leaves it as it was)."""
        from ..data.tasks import example_text

        text = "".join(example_text(p) for p in self.train)
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            own = path.with_name(f"{path.name}.{os.getpid()}")  # torchrun's ranks write at once
            write_whole(own, text)
            os.replace(own, path)
        return path

    def write_test_problems(self, path: Path) -> None:
        """The test problems as JSONL, one line per problem in the scored order (``id,
        question, answer, gold``): a study writes them once, so its packed predictions can
        leave the questions out (:func:`muonlab.report.records.read_predictions`); written
        only when its content differs, in the form it is stored in (packed with the study:
        :func:`muonlab.report.records.write_records`)."""
        text = "".join(json.dumps({"id": p.id, "question": p.question, "answer": p.answer,
                                   "gold": p.gold}) + "\n" for p in self.test)
        if not records_exist(path) or read_text(path) != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_records(path, text)


def task_evaluator(task: Task, model: nn.Module, tokens, out_dir: Path | None, steps: int,
                   write: bool = True):
    """``on_eval``: at step 0 (if ``task.score_start``) and at the last step, greedy
    exact-match accuracy on the task's test problems (a ``task_eval`` record; predictions in
    ``OUT/predictions.jsonl``, the step-0 ones in ``OUT/predictions-step0.jsonl``).
    Under torchrun every rank decodes the same problems with the same whole weights (an FSDP2
    model's forward is a collective; :func:`unsharded` gathers them for the cached decoding)
    and only the rank that has ``write`` (rank 0) writes the predictions."""
    from .task_eval import evaluate_task

    scored = (0, steps) if task.score_start else (steps,)

    def on_eval(step: int, record: dict, logger) -> None:
        if step not in scored or out_dir is None:
            return
        path = out_dir / ("predictions.jsonl" if step == steps else f"predictions-step{step}.jsonl")
        with unsharded(model):
            result = evaluate_task(model, tokens.encode, tokens.decode, task.test,
                                   path if write else None, task.max_new_tokens)
        logger.write({"kind": "task_eval", "step": step, "task": task.name, **result,
                      "predictions": path.name})

    return on_eval


@contextlib.contextmanager
def unsharded(model: nn.Module):
    """``model``'s FSDP2 modules (if any) hold their whole parameters inside (all-gathered on
    every rank on entry, sharded again on exit), so that methods other than ``forward`` (the
    key/value-cached decoding) read whole weights; any other model is left as it is."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.unshard()
    try:
        yield
    finally:
        for module in sharded:
            module.reshard()
