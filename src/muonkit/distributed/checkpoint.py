"""Checkpoints of model + optimizer with torch.distributed.checkpoint (DCP).

``torch.distributed.checkpoint.state_dict.get_state_dict`` gives the model and optimizer
state keyed by parameter name (FQN), with DTensors for FSDP2-sharded tensors; DCP writes
each shard once (replicated tensors are deduplicated) and reads them back into whatever
layout the loading job has, so a checkpoint saved on W ranks loads on any other world size,
and into DDP, FSDP2 or a single process alike. Works without a process group too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict


def save_checkpoint(
    path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict | None = None
) -> None:
    """Save model + optimizer state (and small picklable ``extra`` values) to directory
    ``path``; call on every rank."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save(
        {"model": model_sd, "optimizer": optim_sd, "extra": dict(extra or {})},
        checkpoint_id=path,
    )


def load_checkpoint(
    path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict | None = None
) -> dict[str, Any]:
    """Load what :func:`save_checkpoint` wrote into ``model`` and ``optimizer`` (in place,
    resharding as needed); call on every rank. ``extra`` names the keys to read back (with
    defaults); returns them."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd, "extra": dict(extra or {})}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    return state["extra"]
