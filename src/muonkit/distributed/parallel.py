"""Wrap a model and its optimizer for data-parallel training: ``--parallel ddp|fsdp2``.

* ``"ddp"``: ``DistributedDataParallel`` (gradients all-reduced, averaged); a Muon optimizer
  becomes :class:`~muonkit.distributed.DistributedMuon` /
  :class:`~muonkit.distributed.DistributedMuonWithAuxAdam` (same param groups and state), so
  each matrix is orthogonalized on one rank.
* ``"fsdp2"``: ``fully_shard`` on every block of every ``nn.ModuleList`` (the transformer
  blocks), then on the root (embeddings, head, final norm), as in torchtitan; parameters
  become DTensors with Shard(0), and ``muonkit.Muon`` / ``MuonWithAuxAdam`` built *after*
  sharding take the distributed path by themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from ..hybrid import MuonWithAuxAdam
from ..muon import Muon
from .env import PARALLEL_MODES
from .muon import DistributedMuon, DistributedMuonWithAuxAdam, require_process_group


def check_mode(mode: str) -> None:
    if mode not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; valid: {list(PARALLEL_MODES)}")
    if mode != "none":
        require_process_group(f"parallel={mode!r}")


def parallelize(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """The model to train under ``mode`` (build the optimizer from the result for fsdp2)."""
    check_mode(mode)
    model.to(device)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block)
        fully_shard(model)
    return model


def distribute_optimizer(optimizer: torch.optim.Optimizer, mode: str) -> torch.optim.Optimizer:
    """Under ``"ddp"``, the distributed class of a Muon optimizer (fresh state, same groups);
    anything else is returned as is."""
    check_mode(mode)
    if mode != "ddp" or isinstance(optimizer, (DistributedMuon, DistributedMuonWithAuxAdam)):
        return optimizer
    if isinstance(optimizer, MuonWithAuxAdam):
        return DistributedMuonWithAuxAdam(optimizer.param_groups, nonfinite=optimizer.nonfinite)
    if isinstance(optimizer, Muon):
        return DistributedMuon(optimizer.param_groups, nonfinite=optimizer.nonfinite)
    return optimizer
