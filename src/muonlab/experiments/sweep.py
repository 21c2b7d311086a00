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

Opt-in refinements (off by default, so a study's sweeps are those it always ran):

- ``refine`` rounds (``--sweep-refine N``): once the factor-2 sweep has settled with its best
  inside the grid, the best's neighbours at a factor ``sqrt(2)`` are run, then (round 2) the
  new best's at ``2**(1/4)``, ..., and the best of all points is chosen. A best left at a
  capped edge is never refined: it stays reported as an edge.
- ``fit``: :func:`quadratic_fit` in log-LR through the best and its two neighbours, reported
  by :meth:`SweepResult.describe` as information (the fitted optimum); no run is chosen by it.
- :class:`EdgeAwareSweep2D`: LR x a second knob (weight decay, AdamW's beta2), the LR
  extended edge-aware as above, an edge of the knob's grid reported (extended only where that
  grid is geometric); ``refine`` rounds refine the LR at the best knob value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from ..train.settings import drop_unset


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


def quadratic_fit(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, bool] | None:
    """The minimum of the parabola in log(lr) through three points (``lrs`` increasing): (its
    LR, whether it lies strictly between the smallest and largest of ``lrs``); None where the
    parabola has no minimum (not convex, or a loss not finite)."""
    if len(lrs) != 3 or len(losses) != 3 or not all(map(math.isfinite, losses)):
        return None
    (x1, x2, x3), (y1, y2, y3) = (math.log(lr) for lr in lrs), losses
    slope_low, slope_high = (y2 - y1) / (x2 - x1), (y3 - y2) / (x3 - x2)
    curvature = (slope_high - slope_low) / (x3 - x1)  # the parabola's x**2 coefficient
    if curvature <= 0:
        return None
    # the vertex: where the derivative, slope_low + curvature * (2x - x1 - x2), is zero
    x = (x1 + x2) / 2 - slope_low / (2 * curvature)
    return math.exp(x), x1 < x < x3


def fit_around_best(losses: dict[float, float], best: float) -> float | None:
    """The :func:`quadratic_fit` optimum LR through ``best`` and its two neighbours among the
    LRs of ``losses`` (None: ``best`` has no neighbour on one side, or no fit)."""
    lrs = sorted(losses)
    i = lrs.index(best)
    if not 0 < i < len(lrs) - 1:
        return None
    fit = quadratic_fit(lrs[i - 1:i + 2], [losses[lr] for lr in lrs[i - 1:i + 2]])
    return None if fit is None else fit[0]


@dataclass
class SweepResult:
    """Every point tried, which were added by edge extension, the best, and whether the best
    still sits at an edge of the (extended) grid."""

    losses: dict[float, float]
    initial: list[float]
    added: list[float] = field(default_factory=list)
    best: float = math.nan
    edge: str | None = None  # "low" / "high": the best is the grid's smallest / largest LR
    refined: list[list[float]] = field(default_factory=list)  # the points of each refinement
    fitted: float | None = None  # the quadratic fit's optimum LR (a sweep run with fit=True)

    # opt-in fields, recorded only when set (a default sweep's record is what it always was)
    OPT_IN: ClassVar[dict] = {"refined": [], "fitted": None}

    def describe(self, what: str = "LR") -> str:
        """One sentence for a report; ``what`` the swept value is (an LR, or e.g. a group's
        LR multiplier)."""
        parts, log = [], "log-LR" if what == "LR" else f"the log of the {what}"
        if self.added:
            added = ", ".join(f"{lr:g}" for lr in self.added)
            parts.append(f"the best of the initial grid sat at its edge, so it was extended "
                         f"by {added}")
        if self.edge:
            parts.append(f"the best {what} {self.best:g} is still the {self.edge}est of the grid "
                         "after the extension cap: the optimum may lie beyond it")
        else:
            parts.append(f"the best {what} {self.best:g} is inside the grid")
        if self.refined:
            rounds = "; ".join(", ".join(f"{lr:g}" for lr in points) for points in self.refined)
            parts.append(f"chosen among all points after {len(self.refined)} refinement "
                         f"round(s) halving the {log} step around the best ({rounds})")
        if self.fitted is not None:
            parts.append(f"a quadratic fit in {log} through the best and its two neighbours "
                         f"puts the optimum at {self.fitted:.3g} (information, not a run)")
        text = "; ".join(parts)
        return text[0].upper() + text[1:] + "."

    def record(self, what: str = "LR") -> dict:
        """What a study records of the sweep (``sweeps.json``): its fields, the opt-in ones
        only when set, and the ``note`` (:meth:`describe` of ``what``)."""
        return {**drop_unset(asdict(self), self.OPT_IN), "note": self.describe(what)}


class EdgeAwareSweep:
    """The state of one sweep: call :meth:`pending`, run those LRs, :meth:`record` each
    result, repeat until :meth:`pending` is empty; then :meth:`result`. ``refine``: rounds of
    refinement once the best is inside the grid (module docstring); ``fit``: the result
    carries the :func:`fit_around_best` optimum."""

    def __init__(self, grid: Sequence[float], factor: float = 2.0, max_extend: int = 2,
                 refine: int = 0, fit: bool = False):
        if not grid:
            raise ValueError("an LR sweep needs at least one grid point")
        if refine < 0:
            raise ValueError(f"refinement rounds must be >= 0, got {refine}")
        self.initial = sorted(lr_key(lr) for lr in set(grid))
        self.grid = list(self.initial)
        self.factor = factor
        self.max_extend = max_extend
        self.refine, self.fit = refine, fit
        self.losses: dict[float, float] = {}
        self.added: list[float] = []
        self.refined: list[list[float]] = []
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

    def _refinable(self) -> bool:
        """Whether a refinement round is due: rounds left, the best finite and inside (a
        neighbour on each side), no extension pending."""
        if len(self.refined) >= self.refine or self._extension() is not None:
            return False
        best = self.best()
        return self.grid[0] < best < self.grid[-1] and math.isfinite(self.losses[best])

    def pending(self) -> list[float]:
        """LRs still to run: unrun grid points, else the next edge extension, else the next
        refinement round (if any)."""
        if todo := self._unrun():
            return todo
        edge = self._extension()
        if edge is not None:
            self._extended[edge] += 1
            new = lr_key(self.grid[0] / self.factor if edge == "low"
                         else self.grid[-1] * self.factor)
            self.grid = sorted(self.grid + [new])
            self.added.append(new)
            return [new]
        while self._refinable():  # a round whose points were all run already adds none
            step = self.factor ** (0.5 ** (len(self.refined) + 1))
            best = self.best()
            new = [lr for lr in (lr_key(best / step), lr_key(best * step)) if lr not in self.grid]
            self.refined.append(new)
            self.grid = sorted(self.grid + new)
            if new:
                return new
        return []

    @property
    def done(self) -> bool:
        return not self._unrun() and self._extension() is None and not self._refinable()

    def result(self) -> SweepResult:
        if not self.done:
            raise RuntimeError("the sweep is not finished; run pending() first")
        best = self.best()
        return SweepResult(
            dict(self.losses), self.initial, list(self.added), best, self._edge(),
            [list(points) for points in self.refined],
            fit_around_best(self.losses, best) if self.fit else None,
        )


def run_sweep(
    grid: Sequence[float],
    evaluate: Callable[[list[float]], list[float]],
    factor: float = 2.0,
    max_extend: int = 2,
    refine: int = 0,
    fit: bool = False,
) -> SweepResult:
    """Drive an :class:`EdgeAwareSweep`; ``evaluate(lrs)`` returns one loss per LR (it may
    run them concurrently)."""
    sweep = EdgeAwareSweep(grid, factor, max_extend, refine, fit)
    while todo := sweep.pending():
        for lr, loss in zip(todo, evaluate(todo), strict=True):
            sweep.record(lr, loss)
    return sweep.result()


def geometric_ratio(values: Sequence[float], tol: float = 0.02) -> float | None:
    """The constant ratio of ``values`` (sorted) when they are at least 3 positive values
    spaced by one (within ``tol`` in log), else None: a grid that can be extended."""
    vs = sorted(values)
    if len(vs) < 3 or vs[0] <= 0:
        return None
    logs = [math.log(b / a) for a, b in zip(vs, vs[1:])]
    if logs[0] <= 0 or any(abs(step / logs[0] - 1) > tol for step in logs):
        return None
    return math.exp(sum(logs) / len(logs))


def _edge_of(values: list[float], best: float) -> str | None:
    """"low" / "high" where ``best`` is the smallest / largest of >= 2 sorted ``values``."""
    if len(values) < 2:
        return None
    return "low" if best == values[0] else "high" if best == values[-1] else None


@dataclass
class Sweep2DResult:
    """A two-dimensional sweep: every (LR, ``knob`` value) tried and its loss, the values
    added by edge extension, the best pair, and the edge each of its values sits at."""

    knob: str
    losses: dict[tuple[float, float], float]
    initial: list[float]
    initial_knob: list[float]
    added: list[float] = field(default_factory=list)
    added_knob: list[float] = field(default_factory=list)
    best: float = math.nan
    best_knob: float = math.nan
    edge: str | None = None
    knob_edge: str | None = None
    knob_extends: bool = False  # the knob's grid is geometric: it was extended at its edges
    knob_at_bound: bool = False  # the best knob value is the least its range allows (wd 0)
    refined: list[list[float]] = field(default_factory=list)  # each round's LRs at best_knob
    fitted: float | None = None  # the quadratic fit's optimum LR at the best knob value

    def describe(self) -> str:
        """One sentence for a report, naming both chosen values."""
        parts = [f"LR x {self.knob} sweep: the best is LR {self.best:g} with {self.knob} "
                 f"{self.best_knob:g}"]
        if self.added:
            parts.append("the LR grid was extended by " + ", ".join(f"{v:g}" for v in self.added))
        if self.added_knob:
            parts.append(f"the {self.knob} grid was extended by "
                         + ", ".join(f"{v:g}" for v in self.added_knob))
        if self.edge:
            parts.append(f"the best LR is still the {self.edge}est of its grid after the "
                         "extension cap: the optimum may lie beyond it")
        if self.knob_edge:
            why = ("after the extension cap" if self.knob_extends else
                   "(a grid that is not geometric is not extended)")
            parts.append(f"the best {self.knob} is the {self.knob_edge}est of its grid {why}: "
                         "the optimum may lie beyond it")
        if self.knob_at_bound:
            parts.append(f"the best {self.knob} is {self.best_knob:g}, the least it can be")
        if not (self.edge or self.knob_edge or self.knob_at_bound):
            parts.append("both are inside their grids")
        if self.refined:
            rounds = "; ".join(", ".join(f"{lr:g}" for lr in points) for points in self.refined)
            parts.append(f"chosen among all points after {len(self.refined)} refinement "
                         f"round(s) halving the log-LR step around the best at {self.knob} "
                         f"{self.best_knob:g} ({rounds})")
        if self.fitted is not None:
            parts.append(f"a quadratic fit in log-LR at {self.knob} {self.best_knob:g} puts "
                         f"the optimum LR at {self.fitted:.3g} (information, not a run)")
        return "; ".join(parts) + "."

    def record(self) -> dict:
        """What a study records (JSON: the losses as [lr, knob value, loss] rows)."""
        fields = asdict(self)
        fields["losses"] = [[lr, k, loss] for (lr, k), loss in sorted(self.losses.items())]
        return {**fields, "note": self.describe()}


class EdgeAwareSweep2D:
    """The state of an LR x ``knob`` sweep (``knob``: a name for reports, e.g. "weight
    decay"), driven like :class:`EdgeAwareSweep` with (lr, knob value) pairs. Every pair of
    the two grids is run; where the best pair's LR is at an edge of the LR grid, the grid is
    extended by ``factor`` (a new LR with every knob value), up to ``max_extend`` per side.
    The best knob value at an edge of its grid is reported; it is extended (by the grid's
    ratio, up to ``max_extend`` per side, never to ``knob_max`` or past it) only where the grid
    is geometric (:func:`geometric_ratio`); the best at ``knob_min``, the least the knob can
    be (weight decay 0), is no edge: no optimum lies beyond it. ``refine`` rounds, once both
    settle, refine the LR as :class:`EdgeAwareSweep` does, at the best knob value only."""

    def __init__(self, grid: Sequence[float], knob_grid: Sequence[float], knob: str,
                 factor: float = 2.0, max_extend: int = 2, knob_max: float | None = None,
                 knob_min: float | None = None, refine: int = 0, fit: bool = False):
        if not grid or not knob_grid:
            raise ValueError("a two-dimensional sweep needs at least one value of each knob")
        self.lrs = sorted(lr_key(lr) for lr in set(grid))
        self.knobs = sorted(lr_key(k) for k in set(knob_grid))
        self.initial, self.initial_knob = list(self.lrs), list(self.knobs)
        self.knob, self.factor, self.max_extend = knob, factor, max_extend
        self.knob_max, self.knob_min, self.refine, self.fit = knob_max, knob_min, refine, fit
        self.ratio = geometric_ratio(self.knobs)
        self.losses: dict[tuple[float, float], float] = {}
        self.added: list[float] = []
        self.added_knob: list[float] = []
        self.refined: list[list[float]] = []
        self._refined_pairs: list[tuple[float, float]] = []  # off the grid: inside its LRs
        self._extended = {"low": 0, "high": 0}
        self._knob_extended = {"low": 0, "high": 0}

    def record(self, lr: float, knob: float, loss: float) -> None:
        self.losses[(lr_key(lr), lr_key(knob))] = loss if math.isfinite(loss) else math.inf

    def _pairs(self) -> list[tuple[float, float]]:
        return [(lr, k) for lr in self.lrs for k in self.knobs] + self._refined_pairs

    def best(self) -> tuple[float, float]:
        return min(self._pairs(), key=lambda p: (self.losses[p], p))

    def _unrun(self) -> list[tuple[float, float]]:
        return [p for p in self._pairs() if p not in self.losses]

    def _extension(self) -> tuple[str, str, float] | None:
        """(dimension "lr" or "knob", edge, the new value) to extend next, or None."""
        best = self.best()
        if not math.isfinite(self.losses[best]):
            return None
        edge = _edge_of(self.lrs, best[0])
        if edge is not None and self._extended[edge] < self.max_extend:
            return "lr", edge, lr_key(self.lrs[0] / self.factor if edge == "low"
                                      else self.lrs[-1] * self.factor)
        edge = _edge_of(self.knobs, best[1])
        if edge is None or self.ratio is None or self._knob_extended[edge] >= self.max_extend:
            return None
        new = lr_key(self.knobs[0] / self.ratio if edge == "low" else self.knobs[-1] * self.ratio)
        if self.knob_max is not None and new >= self.knob_max:
            return None
        return "knob", edge, new

    def _refinable(self) -> bool:
        """Whether an LR refinement round is due (as :meth:`EdgeAwareSweep._refinable`)."""
        if len(self.refined) >= self.refine or self._extension() is not None:
            return False
        best = self.best()
        return self.lrs[0] < best[0] < self.lrs[-1] and math.isfinite(self.losses[best])

    def pending(self) -> list[tuple[float, float]]:
        """(lr, knob value) pairs still to run: unrun pairs, else the next extension's, else
        the next refinement round's."""
        if todo := self._unrun():
            return todo
        step = self._extension()
        while step is None and self._refinable():
            ratio = self.factor ** (0.5 ** (len(self.refined) + 1))
            lr, k = self.best()
            new = [(x, k) for x in (lr_key(lr / ratio), lr_key(lr * ratio))
                   if (x, k) not in self._pairs()]
            self.refined.append([x for x, _ in new])
            self._refined_pairs += new
            if new:
                return new
        if step is None:
            return []
        dim, edge, new = step
        if dim == "lr":
            self._extended[edge] += 1
            self.lrs = sorted(self.lrs + [new])
            self.added.append(new)
            return [(new, k) for k in self.knobs]
        self._knob_extended[edge] += 1
        self.knobs = sorted(self.knobs + [new])
        self.added_knob.append(new)
        return [(lr, new) for lr in self.lrs]

    @property
    def done(self) -> bool:
        return not self._unrun() and self._extension() is None and not self._refinable()

    def result(self) -> Sweep2DResult:
        if not self.done:
            raise RuntimeError("the sweep is not finished; run pending() first")
        lr, k = self.best()
        at_best_knob = {x: loss for (x, v), loss in self.losses.items() if v == k}
        at_bound = self.knob_min is not None and k <= self.knob_min
        return Sweep2DResult(
            self.knob, dict(self.losses), self.initial, self.initial_knob, list(self.added),
            list(self.added_knob), lr, k, _edge_of(self.lrs, lr),
            None if at_bound else _edge_of(self.knobs, k), self.ratio is not None, at_bound,
            [list(points) for points in self.refined],
            fit_around_best(at_best_knob, lr) if self.fit else None)


def run_sweep_2d(
    grid: Sequence[float],
    knob_grid: Sequence[float],
    knob: str,
    evaluate: Callable[[list[tuple[float, float]]], list[float]],
    **options,
) -> Sweep2DResult:
    """Drive an :class:`EdgeAwareSweep2D` (``options``: its keyword arguments);
    ``evaluate(pairs)`` returns one loss per (lr, knob value) pair."""
    sweep = EdgeAwareSweep2D(grid, knob_grid, knob, **options)
    while todo := sweep.pending():
        for (lr, k), loss in zip(todo, evaluate(todo), strict=True):
            sweep.record(lr, k, loss)
    return sweep.result()


def top_k(losses: dict, k: int) -> list:
    """The ``k`` keys with the lowest losses (ties: the smaller key first)."""
    return [key for key, _ in sorted(losses.items(), key=lambda kv: (kv[1], kv[0]))[:k]]
