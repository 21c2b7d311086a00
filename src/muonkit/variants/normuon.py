"""NorMuon: Muon with neuron-wise (per-row) normalization of the orthogonalized update.

Li, Liu, Wang, Zhao, Wang & Chen, "NorMuon: Making Muon more efficient and scalable"
(arXiv:2510.05491, ICLR 2026), Algorithm 1, and the authors' reference ``normuon.py``. For each
matrix W (out x in) with gradient G, after Muon's momentum and Newton-Schulz step O:

    v <- beta2 v + (1 - beta2) mean_j(O_ij^2)        (one second moment per row / neuron)
    N <- O / (sqrt(v) + eps)                        (rows divided by their RMS estimate)
    N <- N * ||O||_F / ||N||_F                      (back to O's norm: Muon's LR carries over)
    W <- W * (1 - lr * weight_decay) - lr * lr_scale(shape) * N

Orthogonalization equalizes singular values but leaves rows (neurons) with very different
update sizes; the per-row second moment evens them out, as Adam does per coordinate, at the
cost of one ``out``-vector per matrix (kept in fp32). The rescale to ``||O||_F`` follows the
reference code, so every LR rule of :mod:`muonkit.scaling` means what it means for Muon; the
paper's own scaling, ``0.2 sqrt(out * in) / ||N||_F``, is ``lr_scaling="moonlight"`` with an
exact polar factor (``ns_coefficients="svd"``), which the tests check. With ``ns_split`` the
rescale is per row block (each block was orthogonalized on its own).

Everything else (momentum forms, Nesterov, Newton-Schulz options, LR rules, decoupled weight
decay, the NaN/inf policy, ``state_dict``) is :class:`muonkit.Muon`'s, and so is the
distributed path (DTensor / FSDP2 / TP, and DDP through ``DistributedNorMuon``): the rank that
orthogonalizes a whole matrix (its owner) also normalizes its rows, with the whole row-moment
vector, before the result is scattered back to the shards; the vector (``out`` floats, kept
whole on every rank) is then copied from the owner to every rank in one all-reduce per group
(:class:`muonkit.muon.BoundPostStep`), so checkpoints hold the same state on every rank.

The row normalization is a post step (:class:`RowNormalization`, a
:class:`muonkit.muon.PostStep`): :class:`NorMuon` is Muon with it, :class:`NorMuonWithAuxAdam`
the hybrid with it, and any momentum store composes with it (a subclass setting both).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional import matrix_shape
from ..hybrid import MuonWithAuxAdam
from ..muon import MUON_DEFAULTS, BoundPostStep, MuonBase, PostStep
from ..options import (
    MuonOptions,
    MuonOptionValues,
    Unpack,
    option_keywords,
    options_from_keywords,
)

NORMUON_DEFAULTS = {"beta2": 0.95, "eps": 1e-8}
STATE_KEY = "row_second_moment"


def neuron_normalize(orth: Tensor, v: Tensor, beta2: float, eps: float, split: int = 1) -> Tensor:
    """NorMuon's step on one orthogonalized update ``orth``: update the per-row second moment
    ``v`` (shape (out,), in place) and return the row-normalized update, rescaled per row
    block to the Frobenius norm ``orth`` had."""
    out_dim, in_dim = matrix_shape(orth.shape)
    o = orth.reshape(out_dim, in_dim).float()
    v.lerp_(o.square().mean(dim=1), 1.0 - beta2)
    n = o / (v.sqrt() + eps).unsqueeze(1)
    o_blocks, n_blocks = o.reshape(split, -1, in_dim), n.reshape(split, -1, in_dim)
    norm_o = torch.linalg.vector_norm(o_blocks, dim=(1, 2), keepdim=True)
    norm_n = torch.linalg.vector_norm(n_blocks, dim=(1, 2), keepdim=True)
    return (n_blocks * (norm_o / (norm_n + eps))).reshape(orth.shape).to(orth.dtype)


class RowNormalization(PostStep):
    """NorMuon's post step: :func:`neuron_normalize` of each orthogonalized update, with the
    row moment ``row_second_moment`` (``out`` floats, fp32) of each parameter in its state;
    group options ``beta2`` and ``eps``."""

    group_defaults = NORMUON_DEFAULTS

    def validate(self, group: dict, options: MuonOptions) -> None:
        if options.ns_batch_dims:
            raise ValueError("NorMuon supports ns_batch_dims=0 only (no stacked experts yet)")
        if options.transposed:  # its per-row (output neuron) rescale would take the input dim
            raise ValueError("NorMuon supports transposed=False only (weights stored (out, in))")
        if not 0.0 <= group["beta2"] < 1.0:
            raise ValueError(f"beta2 must be in [0, 1), got {group['beta2']}")
        if not group["eps"] > 0:
            raise ValueError(f"eps must be > 0, got {group['eps']}")

    def bind(
        self, optimizer: MuonBase, group: dict, params: list[Tensor], options: MuonOptions
    ) -> BoundPostStep:
        moments = []
        for p in params:
            state = optimizer.state[p]
            if STATE_KEY not in state:
                state[STATE_KEY] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
            moments.append(state[STATE_KEY])
        beta2, eps, split = group["beta2"], group["eps"], options.ns_split

        def normalize(k: int, orth: Tensor) -> Tensor:
            return neuron_normalize(orth, moments[k], beta2, eps, split)

        return BoundPostStep(normalize, moments)


ROW_NORMALIZATION = RowNormalization()


@option_keywords()
class NorMuon(MuonBase):
    """NorMuon for matrix parameters (see the module docstring).

    Args:
        params: matrices (conv kernels flattened to (shape[0], -1)) or param groups.
        lr: learning rate (0.02, as :class:`muonkit.Muon`).
        beta2: EMA rate of the per-row second moment (0.95, the paper's default).
        eps: added to the row RMS and to the norm of the rescale (1e-8).
        nonfinite, options, **option_values: as :class:`muonkit.Muon` (``ns_batch_dims`` 0 and
            ``transposed`` False only).

    State per matrix: ``momentum_buffer`` (as Muon) and ``row_second_moment`` (out floats,
    fp32).
    """

    post_step = ROW_NORMALIZATION

    def __init__(
        self,
        params,
        lr: float = 0.02,
        *,
        beta2: float = 0.95,
        eps: float = 1e-8,
        nonfinite: str = "raise",
        options: MuonOptions | None = None,
        **option_values: Unpack[MuonOptionValues],
    ):
        chosen = options_from_keywords(self, options, option_values)
        defaults = dict(MUON_DEFAULTS, lr=lr, beta2=beta2, eps=eps, **chosen.as_dict())
        super().__init__(params, defaults, nonfinite=nonfinite)


class NorMuonWithAuxAdam(MuonWithAuxAdam):
    """The hybrid with NorMuon on its ``use_muon`` groups (which also take ``beta2`` and
    ``eps``, defaults 0.95 and 1e-8) and AdamW on the others; build the groups with
    :func:`muonkit.hybrid_param_groups`."""

    post_step = ROW_NORMALIZATION
