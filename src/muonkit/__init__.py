"""muonkit: the Muon optimizer, its AdamW hybrid, distributed and memory-saving variants,
and the experiments that compare them with AdamW.

(``orthogonalize`` is not re-exported here: ``muonkit.orthogonalize`` is the module.)"""

from .hybrid import MuonWithAuxAdam, hybrid_param_groups, split_params
from .muon import Muon, NonFiniteGradientError
from .options import MuonOptions
from .orthogonalize import newton_schulz, polar
from .scaling import lr_scale

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
