"""Muon variants, each a momentum store or a post step of the one Muon step
(:class:`muonkit.muon.MomentumStore`, :class:`muonkit.muon.PostStep`), not a class tree.

* :class:`LoRAPreMuon`: low-rank factors m_B (out x r), m_A (r x in) of the momentum (the
  store :class:`LowRankMomentum`).
* :class:`KroneckerMuon`: a Kronecker product of two small factors (the store
  :class:`KroneckerMomentum`, dense on the matrices its groups list under ``dense_momentum``).
* :class:`HybridKroneckerMuon`: Kronecker momentum on hidden layers, dense on the output layer.
* :class:`NorMuon` / :class:`NorMuonWithAuxAdam`: not a memory saver but a Muon variant (Li et
  al. 2025): per-row second-moment normalization after Newton-Schulz (one extra vector; the
  post step :class:`RowNormalization`).
* :class:`LoRAPreMuonWithAuxAdam` / :class:`KroneckerMuonWithAuxAdam`: the variants as the
  Muon part of the one Muon + AdamW hybrid (:class:`muonkit.hybrid.MuonWithAuxAdam` with the
  variant's store).

All orthogonalize the full (reconstructed) update with Muon's Newton-Schulz and share Muon's
validation, LR scaling, weight decay and non-finite policy (:class:`muonkit.muon.MuonBase`).
A store and a post step compose: a subclass of :class:`muonkit.Muon`'s base (or of the hybrid)
may set both.
"""

from ..hybrid import register_group_options
from .kronecker import (
    KRONECKER_MOMENTUM,
    HybridKroneckerMuon,
    KroneckerMomentum,
    KroneckerMuon,
    KroneckerMuonWithAuxAdam,
    dense_momentum_groups,
    kronecker_shapes,
    nearest_kronecker,
)
from .lowrank import LOW_RANK_MOMENTUM, LoRAPreMuon, LoRAPreMuonWithAuxAdam, LowRankMomentum
from .normuon import ROW_NORMALIZATION, NorMuon, NorMuonWithAuxAdam, RowNormalization

# the group options the variants add to MuonOptions' (hybrid_param_groups accepts them too)
GROUP_OPTIONS = frozenset(
    {*LOW_RANK_MOMENTUM.group_defaults, *KRONECKER_MOMENTUM.group_defaults,
     *ROW_NORMALIZATION.group_defaults, "dense_momentum"}
)
register_group_options(GROUP_OPTIONS)

__all__ = [
    "HybridKroneckerMuon",
    "KroneckerMomentum",
    "KroneckerMuon",
    "KroneckerMuonWithAuxAdam",
    "LoRAPreMuon",
    "LoRAPreMuonWithAuxAdam",
    "LowRankMomentum",
    "NorMuon",
    "NorMuonWithAuxAdam",
    "RowNormalization",
    "dense_momentum_groups",
    "kronecker_shapes",
    "nearest_kronecker",
]
