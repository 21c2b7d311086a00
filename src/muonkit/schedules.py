"""Training schedules: LR warmup + decay, and Muon's momentum warmup.

Both are pure functions of the step, so a resumed run only needs the step number.

* ``lr_multiplier``: linear warmup from 0 over ``warmup_steps``, then cosine (or linear)
  decay to ``min_lr_ratio`` at ``total_steps`` (nanoGPT's ``get_lr``; Loshchilov & Hutter,
  "SGDR", 2017, for the cosine). ``decay="constant"`` keeps 1 after warmup.
* ``muon_momentum``: linear ramp of Muon's momentum from 0.85 to 0.95 over the first
  ``warmup_steps`` steps (modded-nanogpt and nanochat, 300 steps).
* ``apply_schedules``: writes them into an optimizer's param groups, as multipliers of each
  group's own base lr (recorded once as ``group["initial_lr"]``, the key
  torch.optim.lr_scheduler uses too). It sets the lr, overriding a torch LR scheduler
  (warned); ``lr_mult=None`` sets only the momentum, alongside such a scheduler.
"""

from __future__ import annotations

import math

import torch

from .diagnostics import warn_once

DECAYS = ("cosine", "linear", "constant")


def lr_multiplier(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    decay: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> float:
    """LR multiplier in [min_lr_ratio, 1] at ``step`` (0-based)."""
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; valid: {list(DECAYS)}")
    if total_steps <= 0 or warmup_steps < 0:
        raise ValueError(
            f"need total_steps > 0 and warmup_steps >= 0, got {total_steps}, {warmup_steps}"
        )
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def muon_momentum(
    step: int, *, start: float = 0.85, end: float = 0.95, warmup_steps: int = 300
) -> float:
    """Muon momentum at ``step``: linear from ``start`` to ``end`` over ``warmup_steps``."""
    if warmup_steps <= 0:
        return end
    frac = min(1.0, step / warmup_steps)
    return start + (end - start) * frac


def lr_scheduler_attached(optimizer: torch.optim.Optimizer) -> bool:
    """True when a ``torch.optim.lr_scheduler`` scheduler drives ``optimizer`` (it wraps
    ``optimizer.step`` and marks the wrapper)."""
    return hasattr(optimizer.step, "_wrapped_by_lr_sched")


def apply_schedules(
    optimizer: torch.optim.Optimizer,
    step: int,
    *,
    lr_mult: float | None = None,
    muon_momentum: float | None = None,
) -> None:
    """Set every group's lr to ``initial_lr * lr_mult``; Muon groups' momentum if given.

    The lr is set, not multiplied: it replaces whatever set it before, a
    ``torch.optim.lr_scheduler`` included (a :class:`muonkit.diagnostics.MuonWarning` says so,
    once, when one drives ``optimizer``). To keep a torch scheduler's LR and add Muon's
    momentum warmup, pass ``lr_mult=None``: the lr is left alone.
    """
    if lr_mult is not None and lr_scheduler_attached(optimizer):
        warn_once(optimizer, "apply_schedules(lr_mult=...) sets every group's lr and overrides "
                  "the torch LR scheduler of this optimizer; pass lr_mult=None to keep the "
                  "scheduler's LR and set only Muon's momentum")
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        if lr_mult is not None:
            group["lr"] = group["initial_lr"] * lr_mult
        if muon_momentum is not None and group.get("use_muon", False):
            group["momentum"] = muon_momentum
