"""Edge-aware learning-rate sweeps, shared by `muonkit compare`, `muonkit horizon` and the
variant studies.

A sweep starts from a grid of learning rates spaced by a constant factor (2 by default). Once
every grid point has a result, if the best one is the smallest (largest) LR tried, the grid is
extended one factor step below (above) it, and again, up to ``max_extend`` extra points in
each direction. A best value that still sits at an edge when the cap is reached is reported
as such (:attr:`SweepResult.edge`), never picked silently. A run that diverges counts as
``inf``.

Optionally (``--sweep-full-topk K``) the best K points are rerun at full length and the
choice is made among those (:func:`top_k`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def lr_key(lr: float) -> float:
    """An LR rounded to 6 significant digits, so ``x / 2 * 2`` names the same grid point."""
    return float(f"{lr:.6g}")


def factor_grid(center: float, points: int = 3, factor: float = 2.0) -> list[float]:
    """``points`` LRs spaced by ``factor`` and centred (geometrically) on ``center``."""
    if center <= 0 or points < 1 or factor <= 1:
        raise ValueError(f"need center > 0, points >= 1, factor > 1; got {center}, {points}, "
                         f"{factor}")
    return [lr_key(center * factor ** (i - (points - 1) / 2)) for i in range(points)]


def check_factor_grid(grid: Sequence[float], factor: float = 2.0, tol: float = 0.02) -> None:
    """Raise ValueError unless ``grid`` (sorted) is spaced by ``factor`` (within ``tol``)."""
    lrs = sorted(grid)
    if not lrs or lrs[0] <= 0:
        raise ValueError(f"an LR grid needs positive values, got {list(grid)}")
    for a, b in zip(lrs, lrs[1:]):
        if abs(math.log(b / a) / math.log(factor) - 1) > tol:
            raise ValueError(
                f"LR grid {lrs} is not spaced by a factor {factor:g} ({a:g} -> {b:g}); "
                f"use e.g. {factor_grid(lrs[len(lrs) // 2], len(lrs), factor)}"
            )


@dataclass
class SweepResult:
    """Every point tried, which were added by edge extension, the best, and whether the best
    still sits at an edge of the (extended) grid."""

    losses: dict[float, float]
    initial: list[float]
    added: list[float] = field(default_factory=list)
    best: float = math.nan
    edge: str | None = None  # "low" / "high": the best is the grid's smallest / largest LR

    def describe(self) -> str:
        """One sentence for a report."""
        parts = []
        if self.added:
            added = ", ".join(f"{lr:g}" for lr in self.added)
            parts.append(f"the best of the initial grid sat at its edge, so it was extended "
                         f"by {added}")
        if self.edge:
            parts.append(f"the best LR {self.best:g} is still the {self.edge}est of the grid "
                         "after the extension cap: the optimum may lie beyond it")
        else:
            parts.append(f"the best LR {self.best:g} is inside the grid")
        text = "; ".join(parts)
        return text[0].upper() + text[1:] + "."


class EdgeAwareSweep:
    """The state of one sweep: call :meth:`pending`, run those LRs, :meth:`record` each
    result, repeat until :meth:`pending` is empty; then :meth:`result`."""

    def __init__(self, grid: Sequence[float], factor: float = 2.0, max_extend: int = 2):
        if not grid:
            raise ValueError("an LR sweep needs at least one grid point")
        self.initial = sorted(lr_key(lr) for lr in set(grid))
        self.grid = list(self.initial)
        self.factor = factor
        self.max_extend = max_extend
        self.losses: dict[float, float] = {}
        self.added: list[float] = []
        self._extended = {"low": 0, "high": 0}

    def record(self, lr: float, loss: float) -> None:
        self.losses[lr_key(lr)] = loss if math.isfinite(loss) else math.inf

    def best(self) -> float:
        return min(self.grid, key=lambda lr: (self.losses[lr], lr))

    def _edge(self) -> str | None:
        if len(self.grid) < 2:
            return None
        best = self.best()
        return "low" if best == self.grid[0] else "high" if best == self.grid[-1] else None

    def _unrun(self) -> list[float]:
        return [lr for lr in self.grid if lr not in self.losses]

    def _extension(self) -> str | None:
        """The edge to extend next, or None (best inside, cap reached, or all diverged)."""
        edge = self._edge()
        if edge is None or self._extended[edge] >= self.max_extend:
            return None
        return edge if math.isfinite(self.losses[self.best()]) else None

    def pending(self) -> list[float]:
        """LRs still to run: unrun grid points, else the next edge extension (if any)."""
        if todo := self._unrun():
            return todo
        edge = self._extension()
        if edge is None:
            return []
        self._extended[edge] += 1
        new = lr_key(self.grid[0] / self.factor if edge == "low" else self.grid[-1] * self.factor)
        self.grid = sorted(self.grid + [new])
        self.added.append(new)
        return [new]

    @property
    def done(self) -> bool:
        return not self._unrun() and self._extension() is None

    def result(self) -> SweepResult:
        if not self.done:
            raise RuntimeError("the sweep is not finished; run pending() first")
        return SweepResult(
            dict(self.losses), self.initial, list(self.added), self.best(), self._edge()
        )


def run_sweep(
    grid: Sequence[float],
    evaluate: Callable[[list[float]], list[float]],
    factor: float = 2.0,
    max_extend: int = 2,
) -> SweepResult:
    """Drive an :class:`EdgeAwareSweep`; ``evaluate(lrs)`` returns one loss per LR (it may
    run them concurrently)."""
    sweep = EdgeAwareSweep(grid, factor, max_extend)
    while todo := sweep.pending():
        for lr, loss in zip(todo, evaluate(todo), strict=True):
            sweep.record(lr, loss)
    return sweep.result()


def top_k(losses: dict, k: int) -> list:
    """The ``k`` keys with the lowest losses (ties: the smaller key first)."""
    return [key for key, _ in sorted(losses.items(), key=lambda kv: (kv[1], kv[0]))[:k]]
