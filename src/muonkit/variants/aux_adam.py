"""The memory-saving variants as the Muon part of the Muon + AdamW hybrid.

Each class is :class:`muonkit.hybrid.MuonWithAuxAdam` with the variant's momentum on the
``use_muon`` groups (see :class:`muonkit.hybrid.VariantWithAuxAdam`): embeddings, the head,
norm gains and biases are trained by the same AdamW groups as in the dense hybrid. Build the
groups with :func:`muonkit.hybrid.hybrid_param_groups`, passing the variant's options (e.g.
``rank=4``) with the Muon options. A Kronecker group with ``dense_momentum`` listing all its
parameters keeps dense Muon momentum for them (the "hybrid Kronecker" of the GPT study:
:func:`dense_momentum_groups` makes such groups).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ..hybrid import VariantWithAuxAdam, param_picker
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


def dense_momentum_groups(
    model: nn.Module,
    groups: list[dict],
    dense: Sequence[str] | Callable[[str, Tensor], bool],
) -> list[dict]:
    """``groups`` (of :func:`muonkit.hybrid.hybrid_param_groups`) with the matrices that
    ``dense`` picks (parameter names of ``model``, or a predicate ``(name, param) -> bool``)
    moved out of each Muon group into a group of their own (role "muon_dense", right after
    the rest of its group) whose ``dense_momentum`` lists them all: there
    :class:`KroneckerMuonWithAuxAdam` keeps dense Muon momentum."""
    picked = param_picker(dense)
    ids = {id(p) for name, p in model.named_parameters() if picked(name, p)}
    out = []
    for g in groups:
        if not g["use_muon"]:
            out.append(g)
            continue
        rest = [p for p in g["params"] if id(p) not in ids]
        kept = [p for p in g["params"] if id(p) in ids]
        if rest:
            out.append({**g, "params": rest})
        if kept:
            out.append({**g, "params": kept, "role": "muon_dense",
                        "dense_momentum": list(range(len(kept)))})
    return out
