"""LoRA-Pre: Muon with low-rank momentum.

Wang, Liang, He, Wang & Tan, "Taming Momentum: Rethinking Optimizer States Through Low-Rank
Approximation" (ICLR 2026, arXiv:2602.24283), Algorithm 2 (LoRA-Pre for Muon).

The EMA ``m <- m - (1 - beta) (m - g)`` is online gradient descent on ``1/2 ||m - g||_F^2``.
LoRA-Pre keeps m = m_B m_A with m_B (out x r) and m_A (r x in) and takes, per step, one
Newton-preconditioned step of that regression on each factor:

    m_B <- (1 - gamma) m_B + gamma g m_A^T (m_A m_A^T + lambda I)^-1
    m_A <- (1 - gamma) m_A + gamma (m_B^T m_B + lambda I)^-1 m_B^T g

With the factors spanning g, the product decays by (1 - gamma)^2 per step, so
``gamma = 1 - sqrt(momentum)`` gives the EMA rate of dense momentum (the paper's gamma1).
Square at full rank both steps are exact Newton steps and the product is exactly the EMA.

The product stands for Muon's momentum buffer B of ``momentum_form``: the regression target
is g for the EMA form and ``g / (1 - momentum)`` for the standard one (an EMA of
``g / (1 - mu)`` at rate mu is the heavy-ball sum ``B <- mu B + g``, also while mu changes).
The update to orthogonalize is then exactly Muon's (:func:`muonkit.functional.nesterov_updates`:
``g + mu B`` / ``lerp(g, B, mu)`` with Nesterov, B without), so at full rank LoRA-Pre is
dense Muon up to the compression. The paper's Algorithm 2 prints ``orth(g + mu m)`` with m
the EMA, which weighs the gradient 1/(1 - mu) times more than Muon; that mixing is
``mixing="gradient_heavy"`` (for ablations). Scaled and applied as in :mod:`muonkit.muon`.
State: (out + in) * r floats per matrix.

Our reading where the paper leaves room: ``lambda`` is a ridge relative to the Gram
matrix's mean diagonal (``ridge * tr/r``, plus a tiny absolute floor), so the r x r solves stay
defined on zero or rank-deficient gradients; after each step the factors are rebalanced so
that m_A has orthonormal rows and m_B carries the scale (:func:`rebalance_`; the product is
unchanged), so a long run of zero gradients decays m_B to zero without m_A losing rank; m_A
starts as random orthonormal rows and m_B as zero (a zero m_A would never move).

The factors are a momentum store (:class:`LowRankMomentum`, a
:class:`muonkit.muon.MomentumStore`): :class:`LoRAPreMuon` is Muon with it,
:class:`LoRAPreMuonWithAuxAdam` the Muon + AdamW hybrid with it.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..functional import matrix_shape, nesterov_updates
from ..hybrid import MuonWithAuxAdam
from ..muon import MUON_DEFAULTS, MomentumStore, MuonBase, identity
from ..options import (
    MuonOptions,
    MuonOptionValues,
    Unpack,
    check_seed,
    option_keywords,
    options_from_keywords,
)


def ridge_solve_right(X: Tensor, A: Tensor, ridge: float) -> Tensor:
    """``X A^T (A A^T + lambda I)^-1`` for A of shape (r, n); lambda relative to tr(A A^T)/r."""
    gram = A @ A.mT
    lam = ridge * gram.diagonal().mean() + 1e-30
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + lam * eye, A @ X.mT).mT


def rebalance_(B: Tensor, A: Tensor) -> None:
    """Rewrite the factors, product unchanged, so that A has orthonormal rows.

    With ``B = Q_B R_B``, ``A^T = Q_A R_A`` and ``R_B R_A^T = U S V^T``:
    ``B <- Q_B U S``, ``A <- V^T Q_A^T``. A then never loses rank or underflows (a direction
    whose momentum decays to zero can come back), and the solves against ``A A^T = I`` are
    perfectly conditioned, which keeps fp32 factor updates accurate over long runs.
    """
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.mT)
    U, S, Vh = torch.linalg.svd(Rb @ Ra.mT)
    B.copy_(Qb @ (U * S))
    A.copy_(Vh @ Qa.mT)


def lora_pre_update_(B: Tensor, A: Tensor, g: Tensor, gamma: float, ridge: float) -> None:
    """One regression step of the factors towards ``g`` (in place), then :func:`rebalance_`."""
    B.mul_(1 - gamma).add_(ridge_solve_right(g, A, ridge), alpha=gamma)
    A.mul_(1 - gamma).add_(ridge_solve_right(g.mT, B.mT, ridge).mT, alpha=gamma)
    rebalance_(B, A)


def random_orthonormal_rows(r: int, n: int, like: Tensor, generator: torch.Generator) -> Tensor:
    """r random orthonormal rows of length n (QR of a Gaussian matrix), in ``like``'s dtype."""
    gauss = torch.randn(n, r, dtype=torch.float32, device=like.device, generator=generator)
    q, _ = torch.linalg.qr(gauss)
    return q.mT.contiguous().to(like.dtype)


def check_whole_matrices(name: str, options: MuonOptions) -> None:
    """The compressed stores factor each parameter as one (out, in) matrix."""
    if options.ns_split != 1 or options.ns_batch_dims or options.transposed:
        raise ValueError(f"{name} supports ns_split=1, ns_batch_dims=0 and transposed=False only")


class LowRankMomentum(MomentumStore):
    """LoRA-Pre's store (module docstring): ``lowrank_B`` (out x r) and ``lowrank_A`` (r x in)
    per matrix, in the parameter's dtype; group options ``rank``, ``gamma1``, ``ridge``,
    ``seed``. The factors track Muon's buffer of the group's ``momentum_form``, and the update
    read from them is Muon's (:func:`muonkit.functional.nesterov_updates`)."""

    group_defaults = dict(rank=16, gamma1=None, ridge=1e-6, seed=0)

    def validate(self, optimizer, group, options):
        check_whole_matrices("LoRAPreMuon", options)
        if not isinstance(group["rank"], int) or group["rank"] < 1:
            raise ValueError(f"rank must be an int >= 1, got {group['rank']!r}")
        gamma = group["gamma1"]
        if gamma is not None and not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma1 must be in (0, 1], got {gamma}")
        if not group["ridge"] > 0:
            raise ValueError(f"ridge must be > 0, got {group['ridge']}")
        check_seed(group["seed"])
        for p in group["params"]:
            limit = min(matrix_shape(p.shape))
            if group["rank"] > limit:
                warnings.warn(
                    f"LoRAPreMuon: rank {group['rank']} > min(out, in) = {limit} for a "
                    f"parameter of shape {tuple(p.shape)}; using rank {limit}",
                    stacklevel=5,  # where the group is added
                )

    @staticmethod
    def factors(optimizer: MuonBase, group: dict, p: Tensor) -> tuple[Tensor, Tensor]:
        """p's factors (B zero, A random orthonormal rows at the first step)."""
        state = optimizer.state[p]
        if "lowrank_B" not in state:
            out_dim, in_dim = matrix_shape(p.shape)
            r = min(group["rank"], out_dim, in_dim)
            state["lowrank_B"] = torch.zeros(out_dim, r, dtype=p.dtype, device=p.device)
            state["lowrank_A"] = random_orthonormal_rows(
                r, in_dim, p, optimizer._generator(group, p)
            )
        return state["lowrank_B"], state["lowrank_A"]

    def updates(self, optimizer, group, params, grads, options, view=identity):
        mu = options.momentum
        gamma = group["gamma1"] if group["gamma1"] is not None else 1.0 - mu**0.5
        target_scale = 1.0 if options.momentum_form == "ema" else 1.0 / (1.0 - mu)
        updates = []
        for p, g in zip(params, grads):
            B, A = self.factors(optimizer, group, p)
            dtype = torch.promote_types(p.dtype, torch.float32)  # solves in fp32 or better
            B32, A32 = B.to(dtype), A.to(dtype)
            g2 = g.reshape(B.shape[0], A.shape[1]).to(dtype)
            lora_pre_update_(B32, A32, g2 * target_scale, gamma, group["ridge"])
            if B32 is not B:
                B.copy_(B32)
                A.copy_(A32)
            (u,) = nesterov_updates([g2], [B32 @ A32], options)
            updates.append(u.reshape(p.shape))
        return updates


LOW_RANK_MOMENTUM = LowRankMomentum()


@option_keywords(momentum=0.9)
class LoRAPreMuon(MuonBase):
    """Muon whose momentum is held as rank-``rank`` factors (LoRA-Pre, see module docstring).

    Args:
        params: matrices (conv kernels flattened to (shape[0], -1)) or param groups.
        lr: learning rate (0.02, as :class:`muonkit.Muon`).
        rank: r; clamped (with a warning) to min(out, in) per matrix.
        gamma1: factor step; None gives 1 - sqrt(momentum).
        ridge: relative ridge of the r x r solves (1e-6).
        seed: seeds the random initial ``lowrank_A`` (drawn from a generator of the
            optimizer's own, never the global RNG; see :meth:`MuonBase._generator`).
        nonfinite, options, **option_values: as :class:`muonkit.Muon`, with ``momentum`` 0.9
            (mu of Muon's momentum, whose buffer the factors track); ``ns_split`` 1,
            ``ns_batch_dims`` 0 and ``transposed`` False only.

    State per matrix: ``lowrank_B`` (out x r) and ``lowrank_A`` (r x in), in the parameter's
    dtype (as Muon's momentum buffer); the factor updates and solves run in float32 (float64
    for float64 parameters), so fp16/bf16 parameters work.
    """

    store = LOW_RANK_MOMENTUM

    def __init__(
        self,
        params,
        lr: float = 0.02,
        *,
        rank: int = 16,
        gamma1: float | None = None,
        ridge: float = 1e-6,
        seed: int = 0,
        nonfinite: str = "raise",
        options: MuonOptions | None = None,
        **option_values: Unpack[MuonOptionValues],
    ):
        chosen = options_from_keywords(self, options, option_values)
        defaults = dict(
            MUON_DEFAULTS, lr=lr, rank=rank, gamma1=gamma1, ridge=ridge, seed=seed,
            **chosen.as_dict(),
        )
        super().__init__(params, defaults, nonfinite=nonfinite)


class LoRAPreMuonWithAuxAdam(MuonWithAuxAdam):
    """LoRA-Pre (:class:`LoRAPreMuon`, rank-``rank`` momentum factors) on the Muon groups,
    AdamW on the others (the hybrid with :class:`LowRankMomentum`)."""

    store = LOW_RANK_MOMENTUM
