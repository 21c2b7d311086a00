"""Confidence intervals for the studies' tables: the paired t-interval of a difference.

Runs of two optimizers with the same seed share the initial weights and the batch order, so
their results are compared pair by pair: with d_i = a_i - b_i over n seeds, the interval is
``mean(d) +- t_{0.975, n-1} * std(d) / sqrt(n)`` (Student 1908; any statistics text, e.g.
Wasserman, "All of Statistics", 2004, sec. 10.7). It contains 0 when the difference is
inside the seed-to-seed noise at that level.

Student's t quantiles: the two-sided 95% table for 1 to 30 degrees of freedom (rounded to 4
decimals from the exact values), above that the Cornish-Fisher expansion around the normal
quantile (Abramowitz & Stegun 26.7.5), off by less than 1e-4 there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.959963984540054


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


def paired_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% paired t-interval of ``a - b`` (same order: same seeds);
    low = high = nan with fewer than 2 pairs."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"need two equally long, non-empty samples, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = t975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return mean, mean - half, mean + half
