"""Learning-rate adjustment rules for an orthogonalized update, by matrix shape.

An orthogonal (out x in) matrix has RMS entry ``1/sqrt(max(out, in))``, so the same LR gives
different per-entry step sizes on different shapes. Each published Muon variant rescales
the LR per matrix; ``lr_scale(rule, shape)`` returns the factor multiplying the group's lr.

Rules (shape = (out, in) = (shape[-2], shape[-1])):

* ``"keller"``: ``max(1, out/in) ** 0.5``. Keller Jordan's muon.py (2025) and
  torch.optim.Muon's ``adjust_lr_fn="original"``. The default.
* ``"max_dim"``: ``max(out, in) ** 0.5``. muon.py of October 2024 (update RMS ~ 1).
* ``"mup"``: ``(out/in) ** 0.5``. The spectral-norm / muP scaling (Bernstein et al.,
  "Modular Duality in Deep Learning", 2024): ``||update||_2 = sqrt(fan_out / fan_in)``.
* ``"moonlight"``: ``0.2 * max(out, in) ** 0.5``. Moonshot AI, "Muon is Scalable for LLM
  Training" (2025): matches AdamW's update RMS (~0.2) so AdamW's LR and weight decay carry
  over; torch.optim.Muon's ``adjust_lr_fn="match_rms_adamw"``.
* ``"none"``: 1.
* a callable ``f(shape) -> float``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def _keller(out: int, inp: int) -> float:
    return max(1.0, out / inp) ** 0.5


def _max_dim(out: int, inp: int) -> float:
    return max(out, inp) ** 0.5


def _mup(out: int, inp: int) -> float:
    return (out / inp) ** 0.5


def _moonlight(out: int, inp: int) -> float:
    return 0.2 * max(out, inp) ** 0.5


def _none(out: int, inp: int) -> float:
    return 1.0


LR_SCALING_RULES: dict[str, Callable[[int, int], float]] = {
    "keller": _keller,
    "max_dim": _max_dim,
    "mup": _mup,
    "moonlight": _moonlight,
    "none": _none,
}

LrScaling = str | Callable[[Sequence[int]], float]


def validate_rule(rule: LrScaling) -> None:
    """Raise ValueError for an unknown rule name (callables are accepted as they are)."""
    if not callable(rule) and rule not in LR_SCALING_RULES:
        raise ValueError(
            f"unknown lr_scaling {rule!r}; valid rules: {sorted(LR_SCALING_RULES)} "
            "or a callable(shape) -> float"
        )


def lr_scale(rule: LrScaling, shape: Sequence[int]) -> float:
    """LR multiplier of ``rule`` for a matrix of shape (..., out, in)."""
    validate_rule(rule)
    if callable(rule):
        return float(rule(tuple(shape)))
    if len(shape) < 2:
        raise ValueError(f"lr_scale needs a matrix shape (out, in), got {tuple(shape)}")
    return LR_SCALING_RULES[rule](int(shape[-2]), int(shape[-1]))
