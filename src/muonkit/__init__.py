"""muonkit: the Muon optimizer, its AdamW hybrid, distributed and memory-saving variants,
and the experiments that compare them with AdamW.

(``orthogonalize`` is not re-exported here: ``muonkit.orthogonalize`` is the module.)"""

from . import muon as _muon
from .hybrid import MuonWithAuxAdam, hybrid_param_groups, split_params
from .muon import Muon, NonFiniteGradientError
from .options import MuonOptions
from .orthogonalize import newton_schulz, polar
from .scaling import lr_scale


def _distributed_step(params):
    """The distributed step strategy for a group holding DTensors (FSDP2, HSDP, TP, EP),
    imported only when one appears, so the core never imports ``muonkit.distributed``."""
    from .functional import any_dtensor

    if not any_dtensor(params):
        return None
    from .distributed.muon import ShardedStep

    return ShardedStep()


_muon.register_step_strategy(_distributed_step)

__all__ = [
    "Muon",
    "MuonOptions",
    "MuonWithAuxAdam",
    "NonFiniteGradientError",
    "hybrid_param_groups",
    "lr_scale",
    "newton_schulz",
    "polar",
    "split_params",
]
__version__ = "0.1.0"
