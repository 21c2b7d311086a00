"""Wrap a model and its optimizer for data-parallel training: ``--parallel ddp|fsdp2``.

* ``"ddp"``: ``DistributedDataParallel`` (gradients all-reduced, averaged); a Muon or NorMuon
  optimizer becomes its class of :mod:`muonkit.distributed` (``DistributedMuon``,
  ``DistributedMuonWithAuxAdam``, ``DistributedNorMuon(WithAuxAdam)``: same param groups, so
  each matrix is orthogonalized on one rank); the memory-saving variants run unchanged (see
  :mod:`muonkit.registry`).
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

from .. import registry
from ..muon import Muon, MuonBase
from ..variants import NorMuon
from . import muon as distributed_muon
from .muon import DistributedMuon, DistributedNorMuon, require_process_group

# the distributed classes by the exact class they replace under DDP (registry.OptimizerSpec
# names the hybrids'; the plain optimizers are here for users who build their own)
DDP_CLASSES: dict[type, type] = {
    Muon: DistributedMuon,
    NorMuon: DistributedNorMuon,
    **{
        spec.hybrid: getattr(distributed_muon, spec.ddp_class)
        for spec in registry.OPTIMIZERS.values()
        if spec.ddp_class is not None
    },
}


def check_mode(mode: str) -> None:
    registry.check_known_mode(mode)
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
    """The optimizer to step under ``mode``, keeping its class and its math.

    Under ``"ddp"`` a Muon-family class with a distributed form (:data:`DDP_CLASSES`) is rebuilt
    as that form (fresh state, the same param groups); any other optimizer is returned as is:
    DDP gives every rank the same averaged gradients, so an optimizer whose step is
    deterministic (AdamW, the memory-saving variants) takes the same step on every rank. A
    registry optimizer that cannot run under ``mode`` is refused
    (:func:`muonkit.registry.check_optimizer_parallel`), as is a subclass of a Muon class that has a
    distributed form (rebuilding it as the parent would drop what the subclass changes).
    Under ``"fsdp2"``/``"hsdp"`` the optimizer, built on the sharded parameters, is returned
    as is (Muon and NorMuon take the sharded step by themselves)."""
    check_mode(mode)
    registry.check_optimizer_parallel(optimizer, mode)
    if mode != "ddp" or isinstance(optimizer, tuple(DDP_CLASSES.values())):
        return optimizer
    cls = type(optimizer)
    if cls in DDP_CLASSES:
        return DDP_CLASSES[cls](optimizer.param_groups, nonfinite=optimizer.nonfinite)
    if registry.spec_of(optimizer) is None and isinstance(optimizer, MuonBase) and any(
        isinstance(optimizer, base) for base in DDP_CLASSES
    ):
        raise TypeError(
            f"distribute_optimizer: {cls.__name__} subclasses a Muon optimizer with a "
            "distributed form but has none of its own; build its distributed class yourself "
            "or step it unchanged (each rank repeats the step)"
        )
    return optimizer
