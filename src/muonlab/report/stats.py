"""The one statistics layer of every study and report: summaries, comparisons, verdicts.

API (small and stable; every report prints its numbers through it)::

    summarize(values) -> Summary(mean, lo, hi, n)
        the mean and its 95% t interval (lo = hi = nan with n < 2).
    compare(a, b, paired, higher_is_better, min_n=MIN_REPORT_SEEDS)
        -> Comparison(diff, lo, hi, n, test, verdict)
        diff = mean(a) - mean(b) with its 95% interval; ``test`` names it: PAIRED_T (``a[i]``
        and ``b[i]`` from the same seed) or WELCH_T (unpaired); ``verdict`` says where ``a``
        stands against ``b`` and follows from the interval alone: AHEAD / BEHIND when the
        interval excludes 0 on the better / worse side (lower is better for a loss, higher for
        an accuracy: ``higher_is_better``) and n >= ``min_n``, else NOT_RESOLVED (``reason``
        says why: the interval contains 0, or n < ``min_n`` seeds, or one seed).
    report_runs(records, tuning_seeds=(), min_seeds=MIN_REPORT_SEEDS) -> ReportRuns
        splits run records (a :class:`muonlab.report.metrics.Run`, or any object or mapping
        with ``seed`` and an optional ``role``: "tune" or "report") into the seeds that tuned
        (``role == "tune"``, or, without a role, a seed in ``tuning_seeds``) and the report
        seeds; only the latter are ever compared; ``enough`` is False (``label`` says "not
        enough seeds") below ``min_seeds``.
    by_report_seed(records, value, tuning_seeds=()) -> {seed: value(record)}
        ``value`` of each report run, by its seed (the pairing of ``compare_runs``).
    compare_runs(a, b, value, higher_is_better, tuning_seeds=(), min_n=MIN_REPORT_SEEDS)
        -> Comparison of ``value(run)`` over the report seeds of two arms: paired t when both
        arms have the same report seeds, Welch t otherwise (n = 0, not resolved, when an arm
        has none).
    change(later, earlier, higher_is_better, min_n=MIN_REPORT_SEEDS) -> Comparison
        how one arm's gap to a reference moved between two settings (two training lengths):
        ``later - earlier``, paired by seed, with the verdict GAINS ("gains ground": the gap
        moved to the arm's better side) / LOSES ("loses ground") under the same rule.

``Summary.text()`` and ``Comparison.text()`` are the one printed form (``+0.060 [+0.046,
+0.073], paired t, n=3: not resolved (n=3 < 5 report seeds)``), used by every report and by
the README's verdict blocks (:mod:`muonlab.report.verdicts`).

The math: with d_i = a_i - b_i over n seeds, the paired interval is ``mean(d) +- t_{0.975,
n-1} * std(d) / sqrt(n)`` (Student 1908; e.g. Wasserman, "All of Statistics", 2004, sec.
10.7); runs of two optimizers with the same seed share the initial weights and the batch
order, so they are compared pair by pair. Unpaired samples get Welch's interval (Welch 1947):
``mean(a) - mean(b) +- t_{0.975, nu} * se``, ``se^2 = s_a^2/n_a + s_b^2/n_b`` and the
Welch-Satterthwaite ``nu``, rounded down (a wider interval: the conservative choice). Student's
t quantiles: the two-sided 95% table for 1 to 30 degrees of freedom (rounded to 4 decimals
from the exact values), above 30 the Cornish-Fisher expansion around the normal quantile
(Abramowitz & Stegun 26.7.5), off by less than 1e-4 there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.959963984540054

MIN_REPORT_SEEDS = 5  # a verdict needs at least this many report seeds (none of them tuned)
AHEAD, BEHIND, NOT_RESOLVED = "ahead", "behind", "not resolved"
VERDICTS = (AHEAD, BEHIND, NOT_RESOLVED)
GAINS, LOSES = "gains ground", "loses ground"  # the verdicts of a gap's change (:func:`change`)
PAIRED_T, WELCH_T = "paired t", "Welch t"
TUNE, REPORT = "tune", "report"  # the roles of a run


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"need df >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def _fmt(x: float, digits: int, sign: bool) -> str:
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


@dataclass(frozen=True)
class Summary:
    """One arm's mean over seeds and its 95% t interval (lo = hi = nan with n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int

    def text(self, digits: int = 3, scale: float = 1.0) -> str:
        """``1.640 [1.630, 1.650] (n=3)``; ``1.640 (n=1)`` without an interval."""
        m = _fmt(scale * self.mean, digits, False)
        if math.isnan(self.lo):
            return f"{m} (n={self.n})"
        return (f"{m} [{_fmt(scale * self.lo, digits, False)}, "
                f"{_fmt(scale * self.hi, digits, False)}] (n={self.n})")


def summarize(values: Sequence[float]) -> Summary:
    """The mean of ``values`` and its 95% t interval ``mean +- t_{0.975,n-1} s / sqrt(n)``."""
    x = np.asarray(values, dtype=float)
    if not len(x):
        raise ValueError("summarize of no values")
    mean = float(x.mean())
    if len(x) < 2:
        return Summary(mean, math.nan, math.nan, 1)
    half = t975(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Summary(mean, mean - half, mean + half, len(x))


@dataclass(frozen=True)
class Comparison:
    """``a - b``: the mean difference, its 95% interval, n (pairs, or the smaller arm for
    Welch), the test, the verdict on ``a`` (:data:`VERDICTS`) and why it is not resolved."""

    diff: float
    lo: float
    hi: float
    n: int
    test: str
    verdict: str
    reason: str = ""
    higher_is_better: bool = False

    def interval_text(self, digits: int = 3, scale: float = 1.0) -> str:
        """``+0.060 [+0.046, +0.073]`` (just the difference without an interval)."""
        d = _fmt(scale * self.diff, digits, True)
        if math.isnan(self.lo):
            return d
        return f"{d} [{_fmt(scale * self.lo, digits, True)}, {_fmt(scale * self.hi, digits, True)}]"

    def text(self, digits: int = 3, scale: float = 1.0) -> str:
        """The one printed form: difference, interval, test, n, verdict (and why)."""
        why = f" ({self.reason})" if self.reason else ""
        if not self.n:
            return f"n=0: {self.verdict}{why}"
        return (f"{self.interval_text(digits, scale)}, {self.test}, n={self.n}: "
                f"{self.verdict}{why}")


def verdict(lo: float, hi: float, n: int, higher_is_better: bool,
            min_n: int = MIN_REPORT_SEEDS) -> tuple[str, str]:
    """(verdict, reason) of a difference ``a - b`` whose 95% interval is [lo, hi]: ahead or
    behind only when the interval excludes 0 and n >= ``min_n``."""
    if math.isnan(lo):
        return NOT_RESOLVED, "one seed: no interval"
    if n < min_n:
        return NOT_RESOLVED, f"n={n} < {min_n} report seeds"
    if lo <= 0 <= hi:
        return NOT_RESOLVED, "the interval contains 0"
    better = (lo > 0) == higher_is_better
    return (AHEAD if better else BEHIND), ""


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, int]:
    if len(a) != len(b):
        raise ValueError(f"a paired comparison needs equally long samples, got {len(a)} "
                         f"and {len(b)}")
    d = a - b
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan, len(d)
    half = t975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return mean, mean - half, mean + half, len(d)


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, int]:
    mean = float(a.mean() - b.mean())
    n = min(len(a), len(b))
    if n < 2:
        return mean, math.nan, math.nan, n
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se2 = float(va + vb)
    if se2 == 0:
        return mean, mean, mean, n
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t975(max(math.floor(df), 1)) * math.sqrt(se2)
    return mean, mean - half, mean + half, n


def compare(a: Sequence[float], b: Sequence[float], paired: bool, higher_is_better: bool,
            min_n: int = MIN_REPORT_SEEDS) -> Comparison:
    """``a - b`` with its 95% interval (paired t: ``a[i]``, ``b[i]`` share a seed; else
    Welch t) and the verdict on ``a`` (see :func:`verdict`)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(x) or not len(y):
        raise ValueError(f"compare needs two non-empty samples, got {len(x)} and {len(y)}")
    diff, lo, hi, n = (_paired if paired else _welch)(x, y)
    word, reason = verdict(lo, hi, n, higher_is_better, min_n)
    return Comparison(diff, lo, hi, n, PAIRED_T if paired else WELCH_T, word, reason,
                      higher_is_better)


def _field(record: object, key: str):
    """``record.key``, ``record[key]``, or the key of its ``config`` mapping, or of the run
    settings in it (a run's config line: a study's ``role`` is there) (None if none)."""
    if isinstance(record, Mapping):
        return record.get(key)
    if key != "role" and hasattr(record, key):
        return getattr(record, key)
    config = getattr(record, "config", None)
    if not isinstance(config, Mapping):
        return None
    settings = config.get("config")
    if key not in config and isinstance(settings, Mapping):
        return settings.get(key)
    return config.get(key)


@dataclass(frozen=True)
class ReportRuns:
    """Run records split by role: the tuning runs, never reported on, and the report runs."""

    report: tuple
    tuning: tuple
    min_seeds: int = MIN_REPORT_SEEDS

    @property
    def seeds(self) -> list[int]:
        return sorted({int(_field(r, "seed")) for r in self.report})

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def enough(self) -> bool:
        return self.n >= self.min_seeds

    @property
    def label(self) -> str:
        """``n=5``, or ``n=2 (not enough seeds: >= 5 report seeds needed)``."""
        if self.enough:
            return f"n={self.n}"
        return f"n={self.n} (not enough seeds: >= {self.min_seeds} report seeds needed)"


def report_runs(records: Iterable, tuning_seeds: Iterable[int] = (),
                min_seeds: int = MIN_REPORT_SEEDS) -> ReportRuns:
    """Split ``records`` by role: a record's own ``role`` ("tune" or "report") decides, and
    without one a seed in ``tuning_seeds`` makes it a tuning run."""
    tuning_seeds = {int(s) for s in tuning_seeds}
    report, tuning = [], []
    for record in records:
        role = _field(record, "role")
        if role not in (None, TUNE, REPORT):
            raise ValueError(f"unknown run role {role!r}: expected {TUNE!r} or {REPORT!r}")
        if role is None:
            role = TUNE if int(_field(record, "seed")) in tuning_seeds else REPORT
        (tuning if role == TUNE else report).append(record)
    return ReportRuns(tuple(report), tuple(tuning), min_seeds)


def by_report_seed(records: Iterable, value: Callable[[object], float],
                   tuning_seeds: Iterable[int] = ()) -> dict[int, float]:
    """{seed: ``value`` of its record} over the report runs of ``records``
    (:func:`report_runs`: tuning runs left out)."""
    return {int(_field(r, "seed")): value(r) for r in report_runs(records, tuning_seeds).report}


def compare_runs(a: Iterable, b: Iterable, value: Callable[[object], float],
                 higher_is_better: bool, tuning_seeds: Iterable[int] = (),
                 min_n: int = MIN_REPORT_SEEDS) -> Comparison:
    """``value`` of arm ``a`` minus arm ``b`` over their report seeds (tuning runs left out):
    paired t by seed when both arms have the same report seeds, Welch t otherwise."""
    tuning_seeds = tuple(tuning_seeds)
    by_a, by_b = (by_report_seed(arm, value, tuning_seeds) for arm in (a, b))
    if not by_a or not by_b:
        return Comparison(math.nan, math.nan, math.nan, 0, PAIRED_T, NOT_RESOLVED,
                          "no report seeds: every run tuned", higher_is_better)
    if set(by_a) == set(by_b):
        seeds = sorted(by_a)
        return compare([by_a[s] for s in seeds], [by_b[s] for s in seeds], True,
                       higher_is_better, min_n)
    return compare(list(by_a.values()), list(by_b.values()), False, higher_is_better, min_n)


def change(later: Sequence[float], earlier: Sequence[float], higher_is_better: bool,
           min_n: int = MIN_REPORT_SEEDS) -> Comparison:
    """How one arm's gap to a reference (its loss minus the reference's, per seed) moved
    between two settings, e.g. two training lengths: ``later - earlier``, paired by seed
    (``later[i]`` and ``earlier[i]`` are one seed's gaps), with :func:`compare`'s interval and
    rule; the verdict says GAINS when the interval lies on the arm's better side of 0 (the gap
    fell, for a loss: the arm moved ahead of the reference, or further ahead), LOSES on the
    worse side, else NOT_RESOLVED."""
    c = compare(later, earlier, paired=True, higher_is_better=higher_is_better, min_n=min_n)
    return dataclasses.replace(c, verdict={AHEAD: GAINS, BEHIND: LOSES}.get(c.verdict,
                                                                            c.verdict))
