"""The variants' Muon + AdamW hybrids, by their former module path.

There is one hybrid mechanism, :class:`muonkit.hybrid.MuonWithAuxAdam`, whose subclasses pick a
momentum store or a post step; each variant's hybrid lives beside the variant
(:mod:`muonkit.variants.lowrank`, :mod:`muonkit.variants.kronecker`). Import them from
:mod:`muonkit.variants`.
"""

from .kronecker import KroneckerMuonWithAuxAdam, dense_momentum_groups
from .lowrank import LoRAPreMuonWithAuxAdam

__all__ = ["KroneckerMuonWithAuxAdam", "LoRAPreMuonWithAuxAdam", "dense_momentum_groups"]
