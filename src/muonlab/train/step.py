"""One optimizer step's arithmetic, shared by every client of the loop: autocast, gradient
accumulation over micro-batches (one all-reduce per step under DDP), the fixed-batch
validation loss, and the language models' loss (:func:`lm_loss`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


def autocast_context(device: torch.device, dtype: torch.dtype):
    """``torch.autocast`` to ``dtype`` for the forward pass; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean next-token cross-entropy of ``model(x)`` against ``y``."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))


def accumulate_gradients(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    micro_batches: Sequence[Any],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Tensor:
    """Backward of ``mean(loss_fn(model, b) for b in micro_batches)``; returns that mean (detached).

    Each micro-batch loss is scaled by ``1 / len(micro_batches)`` before its backward, so the
    gradients summed in ``.grad`` equal those of one batch made of all of them (when each loss
    is a mean over equally sized micro-batches). Under ``DistributedDataParallel`` every
    backward but the last runs in ``model.no_sync()``: gradients accumulate locally and are
    all-reduced once per step, not once per micro-batch. (FSDP2 still reduce-scatters each
    micro-batch, which keeps gradients sharded; skipping that would hold unsharded gradients.)
    """
    k = len(micro_batches)
    total = None
    for i, batch in enumerate(micro_batches):
        last = i == k - 1
        sync = (
            model.no_sync()
            if isinstance(model, DistributedDataParallel) and not last
            else contextlib.nullcontext()
        )
        with sync:
            with autocast():
                loss = loss_fn(model, batch) / k
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


def default_count_tokens(batch) -> int:
    return int(batch[-1].numel())


def to_device(batch, device: torch.device):
    if device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)
    return tuple(t.to(device) for t in batch)


def evaluate_batches(model, loss_fn, batches, device, autocast) -> dict:
    """Mean of ``loss_fn`` over fixed ``batches`` with the model in eval mode, no grad."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            with autocast():
                total += float(loss_fn(model, to_device(batch, device)))
    model.train(was_training)
    return {"val_loss": total / len(batches)}
