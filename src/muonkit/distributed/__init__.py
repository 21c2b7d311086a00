"""Muon under torch.distributed: torchrun setup, DDP and FSDP2 (DTensor), DCP checkpoints.

- :func:`compute_init` / :func:`compute_cleanup`: process group from torchrun's environment.
  :func:`init_process_group` for a group set up by hand (it first imports what would
  otherwise hold the group past ``destroy_process_group``).
- :class:`DistributedMuon`, :class:`DistributedMuonWithAuxAdam` (and the NorMuon forms
  :class:`DistributedNorMuon`, :class:`DistributedNorMuonWithAuxAdam`): for DDP (replicated
  parameters): each matrix is orthogonalized on one owner rank, results sent to every rank.
- ``muonkit.Muon`` / ``muonkit.MuonWithAuxAdam`` over DTensor parameters (FSDP2's
  ``fully_shard`` on 1-D or HSDP meshes, tensor parallel, FSDP x TP, expert parallel) take
  :class:`ShardedStep` by themselves: whole matrices on their owners through all-to-all and
  back; see :mod:`muonkit.distributed.muon`, :mod:`.plan` and :mod:`.layout`.
- :func:`muonkit.distributed.parallel.parallelize`: DDP, FSDP2 or HSDP for a model.
- :func:`save_checkpoint`, :func:`load_checkpoint`: DCP, any world size on load.
- :func:`spawn`: run a function in N local gloo processes with a hard timeout.

Names load on first use (torch.distributed.tensor and .checkpoint take ~0.6 s to import, and
the train loop imports :mod:`muonkit.distributed.env` on every run).
"""

import importlib

_MUON = "muon"  # the module muon.py, not an optimizer name
_EXPORTS = {
    "DistributedMuon": _MUON,
    "DistributedMuonWithAuxAdam": _MUON,
    "DistributedNorMuon": _MUON,
    "DistributedNorMuonWithAuxAdam": _MUON,
    "ShardedStep": _MUON,
    "assign_owners": "layout",
    "shard_rows": "layout",
    "compute_cleanup": "env",
    "compute_init": "env",
    "free_port": "env",
    "init_process_group": "env",
    "spawn": "env",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
