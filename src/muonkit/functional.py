"""The functional core of Muon: one update as pure functions on lists of tensors.

Keller Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024),
https://kellerjordan.github.io/posts/muon/. For each weight matrix W with gradient G:

    B <- momentum rule(B, G)                 (standard or EMA form, below)
    U <- G + mu B   (Nesterov)   or   B       (classic momentum)
    O <- orthogonalize(U)                    (Newton-Schulz ~ polar factor of U)
    W <- W * (1 - lr * weight_decay)         (decoupled weight decay, as AdamW)
    W <- W - lr * lr_scale(shape) * O

Momentum forms:

* ``"standard"``: ``B <- mu B + G``; Nesterov ``U = G + mu B``. The heavy-ball sum of
  torch.optim.SGD and Muon's paper pseudo-code; the buffer grows to ~G / (1 - mu).
* ``"ema"``: ``B <- (1 - mu) G + mu B`` (``B.lerp_(G, 1 - mu)``); Nesterov
  ``U = G.lerp(B, mu)``. The form of Keller Jordan's muon.py (2025) and torch.optim.Muon.

The EMA buffer is the standard one times (1 - mu), so fed to an un-normalized update the
standard form would take steps 1/(1 - mu) times larger (20x at mu = 0.95). Newton-Schulz
normalizes its input by the Frobenius norm, so for constant mu both forms give the same
orthogonalized update up to the ``eps`` of that normalization; they differ when mu changes
over time (momentum warmup) and in the size of the buffer a reader sees in state.

``mixing="gradient_heavy"`` (an ablation, not Muon) orthogonalizes ``U = G + mu M`` with M the
EMA of the gradients (``B`` in the EMA form, ``(1 - mu) B`` in the standard one): the current
gradient weighs 1/(1 - mu) times more than in Muon's Nesterov update (20x at mu = 0.95). It is
the mixing LoRA-Pre's Algorithm 2 prints, kept so studies can separate it from compression.

The math lives here, in functions on lists of tensors (``momentum_update_``,
``orthogonalize_updates``, ``lr_scales``, ``apply_updates_``, and ``orthogonalize_and_apply_``
joining the last three), each taking the update options as one
:class:`muonkit.options.MuonOptions`. :mod:`muonkit.muon` (``Muon``, the step strategies), the
hybrid, the variants and the distributed step all call these functions; none keeps math of its
own.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from .options import MOMENTUM_FORMS, MuonOptions
from .orthogonalize import orthogonalize
from .scaling import lr_scale

DEFAULT_OPTIONS = MuonOptions()


def momentum_update_(
    bufs: list[Tensor], grads: list[Tensor], options: MuonOptions = DEFAULT_OPTIONS
) -> list[Tensor]:
    """Update momentum buffers in place and return the tensors to orthogonalize.

    See the module docstring for the two forms (``options.momentum_form``). The returned list
    may alias ``bufs`` (no Nesterov): callers must not modify it in place.
    """
    if not bufs:
        return []
    momentum, form = options.momentum, options.momentum_form
    if form == "standard":
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
    elif form == "ema":
        torch._foreach_lerp_(bufs, grads, 1.0 - momentum)
    else:
        raise ValueError(f"unknown momentum_form {form!r}; valid: {MOMENTUM_FORMS}")
    return nesterov_updates(grads, bufs, options)


def nesterov_updates(
    grads: Sequence[Tensor], bufs: Sequence[Tensor], options: MuonOptions
) -> list[Tensor]:
    """The tensors to orthogonalize from the gradients and the updated momentum buffers of
    ``options.momentum_form``: the buffers themselves without Nesterov; with it
    ``G + mu B`` (standard) / ``lerp(G, B, mu)`` (ema), or under
    ``mixing="gradient_heavy"`` ``G + mu M`` with M the gradients' EMA (module docstring).
    A store that rebuilds its buffer each step (LoRA-Pre) reads its update with this. May
    alias ``bufs``."""
    mu = options.momentum
    if not options.nesterov:
        return list(bufs)
    if options.mixing == "gradient_heavy":
        ema_scale = mu if options.momentum_form == "ema" else mu * (1.0 - mu)
        return list(torch._foreach_add(grads, bufs, alpha=ema_scale))
    if options.momentum_form == "standard":
        return list(torch._foreach_add(grads, bufs, alpha=mu))
    return list(torch._foreach_lerp(grads, bufs, mu))


def matrix_shape(
    shape: Sequence[int], batch_dims: int = 0, transposed: bool = False
) -> tuple[int, int]:
    """The (out, in) matrix a parameter of ``shape`` is orthogonalized as: (shape[b], rest),
    after ``b = batch_dims`` leading dims that index independent matrices (MoE experts);
    ``transposed`` (a weight stored ``(..., in, out)``, as GPT-2's Conv1D): (shape[-1],
    shape[-2])."""
    if transposed:
        return int(shape[-1]), int(shape[-2])
    return int(shape[batch_dims]), int(math.prod(shape[batch_dims + 1 :]))


def orthogonalize_updates(
    updates: Sequence[Tensor], options: MuonOptions = DEFAULT_OPTIONS
) -> list[Tensor]:
    """Orthogonalize each update; same-shape matrices go through one batched call.

    Tensors of 3 or more dims (e.g. conv kernels (out, in, kh, kw)) are orthogonalized as the
    (shape[0], -1) matrix and reshaped back; with ``options.ns_batch_dims = b`` the first b
    dims index independent matrices (an ``(E, out, in)`` stack of E experts: E matrices
    ``(out, in)``), each orthogonalized on its own. ``options.ns_split`` cuts each matrix into that
    many equal row blocks that are orthogonalized separately: 3 for a fused QKV projection
    (Q, K and V are separate linear maps), ``3 * n_head`` per attention head. The ``ns_*``
    options choose how Newton-Schulz is evaluated (see
    :func:`muonkit.orthogonalize.newton_schulz`). With ``options.transposed`` each update is
    stored ``(..., in, out)``: its transpose is the matrix orthogonalized and split (the polar
    factor of a transpose is the transpose of the polar factor; the row blocks are not).
    Returns new tensors of the inputs' shapes.
    """
    k, b = options.ns_split, options.ns_batch_dims
    transposed = options.transposed
    updates = [u.mT for u in updates] if transposed else updates
    blocks: list[Tensor] = []
    per_update: list[int] = []
    for u in updates:
        out_dim, in_dim = matrix_shape(u.shape, b)
        parts = u.reshape(-1, out_dim // k, in_dim).unbind(0)
        blocks.extend(parts)
        per_update.append(len(parts))
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, m in enumerate(blocks):
        by_shape[(tuple(m.shape), m.dtype, m.device)].append(i)
    ns = (
        options.ns_coefficients,
        options.ns_steps,
        options.ns_dtype,
        options.ns_gram,
        options.ns_compile,
        options.ns_precondition,
    )
    done: list[Tensor] = [None] * len(blocks)  # type: ignore[list-item]
    for idx in by_shape.values():
        if len(idx) == 1:
            results = [orthogonalize(blocks[idx[0]], *ns)]
        else:
            results = orthogonalize(torch.stack([blocks[i] for i in idx]), *ns).unbind(0)
        for i, o in zip(idx, results):
            done[i] = o
    out, start = [], 0
    for u, n in zip(updates, per_update):
        parts = done[start : start + n]
        out.append((parts[0] if n == 1 else torch.stack(parts)).reshape(u.shape))
        start += n
    return [o.mT for o in out] if transposed else out


def block_shape(
    shape: Sequence[int], split: int = 1, batch_dims: int = 0, transposed: bool = False
) -> tuple[int, int]:
    """The (out, in) shape of one orthogonalized block of a parameter cut into ``split`` row
    blocks (of each matrix after ``batch_dims`` leading dims, transposed first when stored
    ``(in, out)``): what the LR rule sees."""
    out_dim, in_dim = matrix_shape(shape, batch_dims, transposed)
    return out_dim // split, in_dim


def options_block_shape(shape: Sequence[int], options: MuonOptions) -> tuple[int, int]:
    """:func:`block_shape` of ``shape`` under ``options`` (split, batch dims, transposed)."""
    return block_shape(shape, options.ns_split, options.ns_batch_dims, options.transposed)


def lr_scales(shapes: Sequence[Sequence[int]], options: MuonOptions) -> list[float]:
    """The LR scale of each parameter shape under ``options`` (rule, split, batch dims,
    transposed)."""
    return [lr_scale(options.lr_scaling, options_block_shape(s, options)) for s in shapes]


def apply_updates_(
    params: list[Tensor],
    updates: Sequence[Tensor],
    *,
    lr: float,
    weight_decay: float,
    scales: Sequence[float],
) -> None:
    """Decoupled weight decay then the scaled step: ``p *= 1 - lr*wd; p -= lr*scale*u``.

    One fused ``torch._foreach_add_`` per distinct scale (a GPT has 2-3 matrix shapes).
    """
    if not params:
        return
    if weight_decay != 0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    by_scale: dict[float, tuple[list[Tensor], list[Tensor]]] = defaultdict(lambda: ([], []))
    for p, u, s in zip(params, updates, scales):
        ps, us = by_scale[s]
        ps.append(p)
        us.append(u.to(p.dtype))
    for s, (ps, us) in by_scale.items():
        torch._foreach_add_(ps, us, alpha=-lr * s)


def orthogonalize_and_apply_(
    params: list[Tensor],
    updates: Sequence[Tensor],
    *,
    lr: float,
    options: MuonOptions,
    shapes: Sequence[Sequence[int]] | None = None,
    orthogonalize: Callable[..., list[Tensor]] = orthogonalize_updates,
) -> None:
    """The second half of every Muon-style step: orthogonalize the momentum updates, then
    weight decay and the LR-scaled step (``updates`` come from the group's momentum store,
    :class:`muonkit.muon.MomentumStore`).

    The distributed step passes its parameters' local parts, their full ``shapes`` (for the LR
    rule) and an ``orthogonalize`` that gathers whole matrices, calls
    :func:`orthogonalize_updates` on them and scatters the results back.
    """
    orth = orthogonalize(updates, options)
    scales = lr_scales([p.shape for p in params] if shapes is None else shapes, options)
    apply_updates_(params, orth, lr=lr, weight_decay=options.weight_decay, scales=scales)


def any_dtensor(tensors: Iterable[Tensor]) -> bool:
    """True when a tensor is a DTensor (cheap: no import when DTensors were never used)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and any(isinstance(t, module.DTensor) for t in tensors)


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """True when no tensor holds a NaN or inf.

    Fast path: one fused pass (``torch._foreach_norm``) and one device sync for the whole list.
    A NaN or inf element makes its tensor's norm NaN or inf, so finite norms prove every
    element finite; a non-finite norm may also come from finite values whose squares overflow
    (e.g. fp16), so that case is confirmed element by element. With DTensors (sharded
    parameters) the distributed step strategy checks each rank's shards and the ranks agree.
    """
    tensors = list(tensors)
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors)
    if bool(torch.stack([n.float() for n in norms]).isfinite().all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)
