"""Checkpoints of model + optimizer with torch.distributed.checkpoint (DCP).

``torch.distributed.checkpoint.state_dict.get_state_dict`` gives the model and optimizer
state keyed by parameter name (FQN), with DTensors for FSDP2-sharded tensors; DCP writes
each shard once (replicated tensors are deduplicated) and reads them back into whatever
layout the loading job has, so a checkpoint saved on W ranks loads on any other world size,
and into DDP, FSDP2 or a single process alike. Works without a process group too.

DCP loads only the keys the fresh optimizer already has, so param-group options added after
construction (``initial_lr`` of :func:`muonkit.schedules.apply_schedules`) would be lost: the
groups' options are saved whole in ``param_groups.pt`` and restored after loading, as
``Optimizer.load_state_dict`` does.

A write that fails on one rank (a full disk) raises the same ``OSError`` on every rank, so no
rank waits for a peer that stopped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

GROUPS_FILE = "param_groups.pt"


def _optimizer_list(optimizers) -> list[torch.optim.Optimizer]:
    return [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def write_error(error: BaseException) -> OSError | None:
    """The ``OSError`` behind ``error`` (a full disk), or None: ``error`` itself, what it was
    raised from or while handling (``torch.save`` turns a failed write into a RuntimeError), or
    a rank's failure inside DCP's ``CheckpointException`` (raised on every rank when one
    rank's write fails)."""
    return _write_failure(error, _rank())[1]


def _write_failure(error: BaseException, rank: int) -> tuple[int, OSError | None]:
    """(the rank whose write failed, its ``OSError``) behind ``error`` raised on ``rank``: a
    ``CheckpointException`` names the ranks that failed, an error raised by
    :func:`_all_ranks_wrote` carries its ``rank``; (rank, None) when no ``OSError`` is behind
    it."""
    if isinstance(error, OSError):
        return getattr(error, "rank", rank), error
    if isinstance(error, CheckpointException):
        for failed_rank, (failure, _) in error.failures.items():
            found = _write_failure(failure, failed_rank)
            if found[1] is not None:
                return found
    for cause in (error.__cause__, error.__context__):
        if cause is not None:
            found = _write_failure(cause, rank)
            if found[1] is not None:
                return found
    return rank, None


def _all_ranks_wrote(error: BaseException | None) -> None:
    """Meet every rank (a barrier) and learn whether any failed to write; if one did, raise its
    ``OSError`` (errno and reason, naming the rank whose write failed) on every rank.
    ``error``: what this rank's write raised (its ``OSError`` is found by :func:`write_error`)."""
    rank, failure = _write_failure(error, _rank()) if error is not None else (_rank(), None)
    mine = None if failure is None else (
        rank, failure.errno, getattr(failure, "reason", failure.strerror or str(failure)))
    if not _distributed():
        if failure is not None:
            raise failure
        return
    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, mine)
    failed = next((r for r in reports if r is not None), None)
    if failed is not None:
        rank, code, reason = failed
        raised = OSError(code, f"{reason} (rank {rank})")
        raised.rank, raised.reason = rank, reason  # for a caller that gathers it again
        raise raised


def save_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizers, extra: dict | None = None
) -> None:
    """Save model + optimizer(s) state (and small picklable ``extra`` values) to directory
    ``path``; call on every rank. A rank's failed write raises ``OSError`` on every rank."""
    model_sd, optim_sd = get_state_dict(model, optimizers)
    error = None
    try:
        dcp.save(
            {"model": model_sd, "optimizer": optim_sd, "extra": dict(extra or {})},
            checkpoint_id=str(path),
        )
        if _rank() == 0:
            groups = [
                [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
                for opt in _optimizer_list(optimizers)
            ]
            torch.save(groups, Path(path) / GROUPS_FILE)
    except (Exception, CheckpointException) as e:
        if write_error(e) is None:
            raise
        error = e
    _all_ranks_wrote(error)


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizers, extra: dict | None = None
) -> dict[str, Any]:
    """Load what :func:`save_checkpoint` wrote into ``model`` and ``optimizers`` (in place,
    resharding as needed); call on every rank. ``extra`` names the keys to read back (with
    defaults); returns them."""
    model_sd, optim_sd = get_state_dict(model, optimizers)
    state = {"model": model_sd, "optimizer": optim_sd, "extra": dict(extra or {})}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    saved = torch.load(Path(path) / GROUPS_FILE, weights_only=False)
    for opt, groups in zip(_optimizer_list(optimizers), saved, strict=True):
        for group, options in zip(opt.param_groups, groups, strict=True):
            group.update(options)
    return state["extra"]


def save_train_state(
    path: str | os.PathLike, model: torch.nn.Module, optimizers, rank_state: dict
) -> None:
    """A training checkpoint of a multi-rank run, directory ``path``; call on every rank.

    Model and optimizers as :func:`save_checkpoint`; ``rank_state`` (this rank's batch-sampler
    and RNG states, step counters) goes to ``path/rank{r}.pt``. Written to ``path.tmp`` and
    renamed by rank 0, so a crash mid-save leaves the previous checkpoint whole; a failed write
    on any rank (a full disk) removes ``path.tmp`` and raises ``OSError`` on every rank.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if _rank() == 0 and tmp.exists():  # left by a crash mid-save
        shutil.rmtree(tmp)
    dist.barrier()
    error = None
    try:
        save_checkpoint(tmp, model, optimizers)
        torch.save(rank_state, tmp / f"rank{_rank()}.pt")
    except Exception as e:
        if write_error(e) is None:
            raise
        error = e
    try:
        _all_ranks_wrote(error)
    except OSError:
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()  # no rank goes on before the partial checkpoint is gone
        raise
    if _rank() == 0:  # the old checkpoint goes only once the new one has its name
        old = path.with_name(path.name + ".old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_train_state(path: str | os.PathLike, model: torch.nn.Module, optimizers) -> dict:
    """Load :func:`save_train_state`'s directory into ``model``/``optimizers``; returns this
    rank's ``rank_state``. The sampler/RNG states are per rank, so the world size must be the
    one that saved (:func:`load_checkpoint` reads the model/optimizer part on any world size).
    """
    path = Path(path)
    saved = len(list(path.glob("rank*.pt")))
    if saved != dist.get_world_size():
        raise ValueError(
            f"checkpoint {path} was saved by {saved} ranks, this job has "
            f"{dist.get_world_size()}: resume a training run with the same --nproc_per_node "
            "(muonkit.distributed.load_checkpoint loads its model/optimizer on any world size)"
        )
    load_checkpoint(path, model, optimizers)
    return torch.load(path / f"rank{_rank()}.pt", map_location="cpu", weights_only=False)
