"""Muon under torch.distributed: torchrun setup, DDP and FSDP2 (DTensor), DCP checkpoints.

- :func:`compute_init` / :func:`compute_cleanup`: process group from torchrun's environment.
- :class:`DistributedMuon`, :class:`DistributedMuonWithAuxAdam`: for DDP (replicated
  parameters): each matrix is orthogonalized on one owner rank, results all-gathered.
- ``muonkit.Muon`` / ``muonkit.MuonWithAuxAdam`` over DTensor parameters (after FSDP2's
  ``fully_shard``) orthogonalize whole matrices across ranks by themselves (all-to-all to the
  owner and back); see :mod:`muonkit.distributed.muon`.
- :func:`save_checkpoint`, :func:`load_checkpoint`: DCP, any world size on load.
- :func:`spawn`: run a function in N local gloo processes with a hard timeout.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .env import compute_cleanup, compute_init, free_port, spawn
from .muon import DistributedMuon, DistributedMuonWithAuxAdam, assign_owners, shard_rows

__all__ = [
    "DistributedMuon",
    "DistributedMuonWithAuxAdam",
    "assign_owners",
    "compute_cleanup",
    "compute_init",
    "free_port",
    "load_checkpoint",
    "save_checkpoint",
    "shard_rows",
    "spawn",
]
