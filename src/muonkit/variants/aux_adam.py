"""The memory-saving variants as the Muon part of the Muon + AdamW hybrid.

Each class is :class:`muonkit.hybrid.MuonWithAuxAdam` with the variant's momentum on the
``use_muon`` groups (see :class:`muonkit.hybrid.VariantWithAuxAdam`): embeddings, the head,
norm gains and biases are trained by the same AdamW groups as in the dense hybrid. Build the
groups with :func:`muonkit.hybrid.hybrid_param_groups`, passing the variant's options (e.g.
``rank=4``) with the Muon options. A Kronecker group with ``dense_momentum`` listing all its
parameters keeps dense Muon momentum for them (the "hybrid Kronecker" of the GPT study).
"""

from __future__ import annotations

from ..hybrid import VariantWithAuxAdam
from .kronecker import KroneckerMuon
from .lowrank import LoRAPreMuon


class LoRAPreMuonWithAuxAdam(VariantWithAuxAdam, LoRAPreMuon):
    """LoRA-Pre (:class:`muonkit.variants.LoRAPreMuon`, rank-``rank`` momentum factors) on
    the Muon groups, AdamW on the others."""

    variant_defaults = dict(rank=16, gamma1=None, ridge=1e-6, seed=0)


class KroneckerMuonWithAuxAdam(VariantWithAuxAdam, KroneckerMuon):
    """Kronecker-factored momentum (:class:`muonkit.variants.KroneckerMuon`) on the Muon
    groups, AdamW on the others."""

    variant_defaults = dict(power_iters=2, min_savings=4.0, seed=0)
