"""Memory-saving Muon variants: the momentum matrix is stored compressed.

* :class:`LoRAPreMuon`: low-rank factors m_B (out x r), m_A (r x in) of the momentum.
* :class:`KroneckerMuon`: a Kronecker product of two small factors.
* :class:`HybridKroneckerMuon`: Kronecker momentum on hidden layers, dense on the output layer.
* :class:`NorMuon` / :class:`NorMuonWithAuxAdam`: not a memory saver but a Muon variant (Li et
  al. 2025): per-row second-moment normalization after Newton-Schulz (one extra vector).
* :class:`LoRAPreMuonWithAuxAdam` / :class:`KroneckerMuonWithAuxAdam`: the variants as the
  Muon part of the Muon + AdamW hybrid (:mod:`muonkit.variants.aux_adam`).

All orthogonalize the full (reconstructed) update with Muon's Newton-Schulz and share Muon's
validation, LR scaling, weight decay and non-finite policy (:class:`muonkit.muon.MuonBase`).
"""

from ..hybrid import register_group_options
from .aux_adam import KroneckerMuonWithAuxAdam, LoRAPreMuonWithAuxAdam, dense_momentum_groups
from .kronecker import HybridKroneckerMuon, KroneckerMuon, kronecker_shapes, nearest_kronecker
from .lowrank import LoRAPreMuon
from .normuon import NORMUON_DEFAULTS, NorMuon, NorMuonWithAuxAdam

# the group options the variants add to MuonOptions' (hybrid_param_groups accepts them too)
GROUP_OPTIONS = frozenset(
    {*LoRAPreMuonWithAuxAdam.variant_defaults, *KroneckerMuonWithAuxAdam.variant_defaults,
     *NORMUON_DEFAULTS, "dense_momentum"}
)
register_group_options(GROUP_OPTIONS)

__all__ = [
    "HybridKroneckerMuon",
    "KroneckerMuon",
    "KroneckerMuonWithAuxAdam",
    "LoRAPreMuon",
    "LoRAPreMuonWithAuxAdam",
    "NorMuon",
    "NorMuonWithAuxAdam",
    "dense_momentum_groups",
    "kronecker_shapes",
    "nearest_kronecker",
]
