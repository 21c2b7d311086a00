"""QK-clip (MuonClip): cap each attention head's largest pre-softmax logit after each step.

Kimi Team, "Kimi K2: Open Agentic Intelligence" (arXiv 2507.20534, sec. 2.1, Algorithm 1):
after each optimizer step, every attention head h whose largest pre-softmax logit seen in the
step, ``S_max^h = max_{batch} max_{i,j} q_i . k_j / sqrt(d)``, exceeds a threshold ``tau`` has
its query rows and its key rows of the projection weights scaled by ``sqrt(gamma_h)``,
``gamma_h = tau / S_max^h``: the same inputs then give that head logits ``gamma_h`` times as
large, so its max is ``tau``. Heads at or below ``tau`` are left alone (K2 clips per head, and
only the heads that exceed); the values are never touched.

Rotary embeddings (RoPE) rotate each query and key by a position-dependent orthogonal matrix
after the projection; a linear map, so scaling the projection rows by ``sqrt(gamma)`` scales
the rotated q and k by ``sqrt(gamma)`` too and their dot product by ``gamma``: the rule holds
unchanged when every head has its own keys (K2's MLA shares a rotary key across heads and so
scales its rotary query by ``gamma`` instead; grouped-query attention is not covered here).

Pieces: :func:`clip_factors` (pure: gamma per head), :func:`qk_clip_` (one layer's rows, as
:class:`QKRows` says where they are: fused QKV or separate projections, biases included;
DTensor rows sharded by FSDP2 scaled shard by shard), and :class:`QKClip`, the thin hook that
runs it after each ``optimizer.step()`` for every layer of a model, the maxima reduced across
ranks first (DDP, FSDP2) so every rank scales alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .functional import any_dtensor


@dataclass(frozen=True)
class QKRows:
    """Where one attention layer's queries and keys come from.

    ``q``: the tensors whose rows give the queries (the weight, stored (out, in) as
    ``nn.Linear``'s, and its bias if any): head h's queries are rows ``q_offset + h *
    head_dim`` to ``q_offset + (h + 1) * head_dim``. ``k`` and ``k_offset`` likewise for the
    keys. A fused QKV projection ``(3C, C)`` names its weight in both, with ``q_offset=0`` and
    ``k_offset=C``; separate projections name their own tensors with offsets 0.
    """

    q: tuple[Tensor, ...]
    k: tuple[Tensor, ...]
    head_dim: int
    q_offset: int = 0
    k_offset: int = 0


def clip_factors(max_logits: Tensor, tau: float) -> Tensor:
    """``gamma_h``: ``tau / S_max^h`` for each head whose max logit exceeds ``tau``, else 1."""
    if not tau > 0:
        raise ValueError(f"qk_clip tau must be > 0, got {tau}")
    m = max_logits.detach().float()
    return torch.where(m > tau, tau / m, torch.ones_like(m))


def head_row_scales(factors: Tensor, head_dim: int) -> Tensor:
    """The scale of each query (or key) row: ``sqrt(gamma_h)`` on head h's ``head_dim`` rows."""
    return factors.sqrt().repeat_interleave(head_dim)


def local_rows(t: Tensor) -> tuple[Tensor, int]:
    """The rows this rank holds of ``t`` and the global index of the first: ``(t, 0)`` for a
    plain tensor; a DTensor's local tensor and its offset (Shard(0) over any mesh dims, as
    FSDP2 and HSDP hold parameters, holds consecutive rows)."""
    if not any_dtensor([t]):
        return t, 0
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    for placement in t.placements:
        if not (isinstance(placement, Replicate) or type(placement) is Shard):
            raise ValueError(f"qk_clip: a parameter of shape {tuple(t.shape)} is held as "
                             f"{tuple(t.placements)}; it supports Shard(d) and Replicate()")
    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return t.to_local(), offset[0]


@torch.no_grad()
def scale_rows_(t: Tensor, scales: Tensor, offset: int) -> None:
    """Multiply rows ``offset`` to ``offset + len(scales)`` of ``t`` by ``scales`` (on a
    DTensor, the rows of them this rank holds)."""
    local, start = local_rows(t)
    lo, hi = max(offset, start), min(offset + len(scales), start + local.shape[0])
    if lo >= hi:
        return
    part = scales[lo - offset : hi - offset].to(local.device, local.dtype)
    local[lo - start : hi - start].mul_(part.view(-1, *(1,) * (local.dim() - 1)))


@torch.no_grad()
def qk_clip_(rows: QKRows, max_logits: Tensor, tau: float) -> Tensor:
    """QK-clip one attention layer in place: scale the query and key rows of each head h whose
    ``max_logits[h]`` exceeds ``tau`` by ``sqrt(tau / max_logits[h])``; returns gamma per head
    (1 where untouched). ``max_logits`` must be the same on every rank (reduce it first)."""
    factors = clip_factors(max_logits, tau)
    if bool((factors < 1).any()):
        scales = head_row_scales(factors, rows.head_dim)
        for offset, tensors in ((rows.q_offset, rows.q), (rows.k_offset, rows.k)):
            for t in tensors:
                scale_rows_(t, scales, offset)
    return factors


def clip_layers(model: nn.Module) -> list[nn.Module]:
    """The QK-clip layers of ``model``: every module with ``qk_rows()`` and ``max_logits``.

    A QK-clip layer (e.g. :class:`muonlab.models.gpt.CausalSelfAttention`) computes, while
    its ``record_max_logits`` is True, the running max per head of its pre-softmax logits in
    ``max_logits`` (a tensor of shape (n_head,), None before any forward), which
    ``reset_max_logits()`` clears; ``qk_rows()`` gives its :class:`QKRows`.
    """
    return [m for m in model.modules() if hasattr(m, "qk_rows") and hasattr(m, "max_logits")]


def reduce_max_(values: Tensor, group=None) -> Tensor:
    """All-reduce ``values`` by max over the ranks of ``group`` (when torch.distributed runs)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=group)
    return values


class QKClip:
    """QK-clip every layer of ``model`` after each step of the optimizers it is attached to.

    ``QKClip(model, tau).attach(optimizer)``: turns on the layers' max-logit recording and
    registers a step post-hook that, after each ``optimizer.step()``, takes each layer's max
    logit per head over the forwards since the last step (every micro-batch), all-reduces it
    by max across ranks (``group``; DDP, FSDP2), clips (:func:`qk_clip_`) and clears them.
    ``last_max_logits``: the (layers, heads) maxima of the last step, before the clip.
    Pass the model itself, not its DDP wrapper (the same layers, either way).
    """

    def __init__(self, model: nn.Module, tau: float, group=None):
        clip_factors(torch.zeros(1), tau)  # checks tau
        self.layers = clip_layers(model)
        if not self.layers:
            raise ValueError(f"qk_clip: {type(model).__name__} has no attention layer that "
                             "reports its max logits (qk_rows() and max_logits)")
        self.tau, self.group = float(tau), group
        self.last_max_logits: Tensor | None = None
        for layer in self.layers:
            layer.record_max_logits = True

    def attach(self, optimizer: torch.optim.Optimizer):
        """Clip after each ``optimizer.step()``; returns the hook's handle (``.remove()``)."""
        return optimizer.register_step_post_hook(lambda *_: self.step())

    def step(self) -> Tensor | None:
        """Clip every layer by the max logits seen since the last call; returns them. None,
        doing nothing, when no layer ran a forward since then: torch runs the post-hooks of a
        step that calls a parent optimizer's patched step (``super().step()``) twice."""
        if all(layer.max_logits is None for layer in self.layers):
            return None
        maxima = torch.stack([max_logits(layer) for layer in self.layers])
        maxima = reduce_max_(maxima, self.group)
        for layer, m in zip(self.layers, maxima, strict=True):
            qk_clip_(layer.qk_rows(), m, self.tau)
            layer.reset_max_logits()
        self.last_max_logits = maxima
        return maxima


def max_logits(layer: nn.Module) -> Tensor:
    """The layer's max logit per head since its last reset; a ValueError when it saw none."""
    if layer.max_logits is None:
        raise ValueError(f"qk_clip: {type(layer).__name__} saw no forward since the last step "
                         "(its max logits are unknown)")
    return layer.max_logits.detach().float()
