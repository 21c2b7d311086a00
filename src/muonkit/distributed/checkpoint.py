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
    :func:`all_ranks_wrote` carries its ``rank``; (rank, None) when no ``OSError`` is behind
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


def all_ranks_wrote(error: BaseException | None) -> None:
    """Meet every rank (a barrier) and learn whether any failed to write; if one did, raise its
    ``OSError`` (errno and reason, naming the rank whose write failed) on every rank, so no rank
    waits on a peer that stopped. ``error``: what this rank's write raised, or None (its
    ``OSError`` is found by :func:`write_error`). Call it on every rank after writing files of
    your own beside a checkpoint (per-rank sampler or RNG states)."""
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
    all_ranks_wrote(error)


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
