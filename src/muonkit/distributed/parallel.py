"""Wrap a model and its optimizer for data-parallel training: ``--parallel ddp|fsdp2``.

* ``"ddp"``: ``DistributedDataParallel`` (gradients all-reduced, averaged); a Muon optimizer
  becomes :class:`~muonkit.distributed.DistributedMuon` /
  :class:`~muonkit.distributed.DistributedMuonWithAuxAdam` (same param groups and state), so
  each matrix is orthogonalized on one rank.
* ``"fsdp2"``: ``fully_shard`` on every block of every ``nn.ModuleList`` (the transformer
  blocks), then on the root (embeddings, head, final norm), as in torchtitan, on FSDP2's
  default 1-D mesh; parameters become DTensors with Shard(0), and ``muonkit.Muon`` /
  ``MuonWithAuxAdam`` built *after* sharding take the distributed path by themselves.
* ``"hsdp"``: the same ``fully_shard`` calls on a 2-D ``(replicate, shard)`` mesh of
  ``replicate`` groups of W / replicate ranks (placements ``(Replicate(), Shard(0))``): FSDP2
  shards within a group and all-reduces gradients across groups. Put the replicate dim across
  nodes (torchrun numbers the ranks node by node, so the default does).
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


def hsdp_mesh(device: torch.device, replicate: int):
    """The 2-D ``(replicate, shard)`` device mesh of HSDP over all ranks."""
    from torch.distributed.device_mesh import init_device_mesh

    world = torch.distributed.get_world_size()
    if replicate < 1 or world % replicate:
        raise ValueError(
            f"--replicate {replicate} must be >= 1 and divide the number of ranks ({world})"
        )
    return init_device_mesh(
        device.type, (replicate, world // replicate), mesh_dim_names=("replicate", "shard")
    )


def parallelize(
    model: nn.Module, mode: str, device: torch.device, replicate: int = 1
) -> nn.Module:
    """The model to train under ``mode`` (build the optimizer from the result for fsdp2 and
    hsdp; ``replicate``: the number of HSDP replica groups)."""
    if replicate != 1 and mode != "hsdp":
        raise ValueError(f"--replicate {replicate} applies to --parallel hsdp, not {mode!r}")
    check_mode(mode)
    model.to(device)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if mode in ("fsdp2", "hsdp"):
        from torch.distributed.fsdp import fully_shard

        mesh = hsdp_mesh(device, replicate) if mode == "hsdp" else None
        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
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
