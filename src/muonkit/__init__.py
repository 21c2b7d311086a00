"""muonkit: the Muon optimizer, its AdamW hybrid, distributed and memory-saving variants,
and the experiments that compare them with AdamW."""

from .hybrid import MuonWithAuxAdam, hybrid_param_groups, split_params
from .muon import Muon, NonFiniteGradientError
from .orthogonalize import newton_schulz, orthogonalize, polar
from .scaling import lr_scale

__all__ = [
    "Muon",
    "MuonWithAuxAdam",
    "NonFiniteGradientError",
    "hybrid_param_groups",
    "lr_scale",
    "newton_schulz",
    "orthogonalize",
    "polar",
    "split_params",
]
__version__ = "0.1.0"
