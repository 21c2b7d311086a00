"""The statistics layer (muonlab.report.stats) against hand computations and Student's t
density integrated numerically (torch.distributions.StudentT)."""

import math

import numpy as np
import pytest
import torch

from muonlab.report.stats import (
    AHEAD,
    BEHIND,
    GAINS,
    LOSES,
    NOT_RESOLVED,
    PAIRED_T,
    WELCH_T,
    change,
    compare,
    compare_runs,
    report_runs,
    summarize,
    t975,
)


def t_mass(t: float, df: float) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom, by the trapezoid rule."""
    x = torch.linspace(-t, t, 200_001, dtype=torch.float64)
    density = torch.distributions.StudentT(torch.tensor(float(df), dtype=torch.float64))
    return torch.trapezoid(density.log_prob(x).exp(), x).item()


def test_t_quantiles_give_95_percent_of_students_t():
    for df in (1, 2, 4, 30, 31, 80):
        assert t_mass(t975(df), df) == pytest.approx(0.95, abs=2e-5), df
    with pytest.raises(ValueError, match="df >= 1"):
        t975(0)


def test_summary_is_the_mean_and_its_t_interval():
    s = summarize([1.0, 2.0, 3.0])  # mean 2, sd 1
    half = 4.3027 / math.sqrt(3)
    assert (s.mean, s.lo, s.hi, s.n) == pytest.approx((2.0, 2 - half, 2 + half, 3))
    assert s.text(2) == f"2.00 [{2 - half:.2f}, {2 + half:.2f}] (n=3)"
    one = summarize([1.5])
    assert one.n == 1 and math.isnan(one.lo) and one.text(1) == "1.5 (n=1)"


def test_paired_comparison_is_the_interval_of_the_differences():
    c = compare([1.0, 2.0, 4.0], [0.5, 1.0, 2.5], paired=True, higher_is_better=False,
                min_n=2)  # d: .5, 1, 1.5: mean 1, sd .5
    half = 4.3027 * 0.5 / math.sqrt(3)
    assert (c.diff, c.lo, c.hi, c.n, c.test) == pytest.approx((1, 1 - half, 1 + half, 3, PAIRED_T))
    assert c.verdict == NOT_RESOLVED and c.reason == "the interval contains 0"


def test_welch_comparison_uses_each_arms_variance_and_satterthwaite_df():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.1, 0.2]  # var 5/3 and 0.01
    c = compare(a, b, paired=False, higher_is_better=True, min_n=2)
    va, vb = (5 / 3) / 4, 0.01 / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)  # 3.02..., rounded down: 3
    assert math.floor(df) == 3
    half = 3.1824 * math.sqrt(va + vb)
    assert c.test == WELCH_T and c.n == 3 and c.diff == pytest.approx(2.4)
    assert (c.lo, c.hi) == pytest.approx((2.4 - half, 2.4 + half))


@pytest.mark.parametrize("higher_is_better, a_minus_b, word", [
    (False, -1.0, AHEAD), (False, +1.0, BEHIND),  # a loss: lower is better
    (True, +1.0, AHEAD), (True, -1.0, BEHIND),  # an accuracy: higher is better
])
def test_the_verdict_follows_from_the_interval_and_which_side_is_better(
        higher_is_better, a_minus_b, word):
    b = [1.0, 1.2, 0.9, 1.1, 1.05]
    a = [x + a_minus_b + 0.01 * i for i, x in enumerate(b)]
    c = compare(a, b, paired=True, higher_is_better=higher_is_better)
    assert c.verdict == word and c.reason == "" and c.n == 5
    assert c.text(2).endswith(f"paired t, n=5: {word}")
    few = compare(a[:3], b[:3], paired=True, higher_is_better=higher_is_better)
    assert not few.lo <= 0 <= few.hi  # the interval excludes 0, but 3 seeds are too few
    assert (few.verdict, few.reason) == (NOT_RESOLVED, "n=3 < 5 report seeds")


@pytest.mark.parametrize("higher_is_better, shift, word", [
    (False, +0.1, LOSES), (False, -0.1, GAINS),  # a loss gap rising: the arm loses ground
    (True, +0.1, GAINS), (True, -0.1, LOSES),  # an accuracy gap rising: it gains ground
])
def test_a_gaps_change_is_the_paired_interval_with_ground_words(higher_is_better, shift, word):
    earlier = [-0.7, -0.6, -0.9, -0.8, -0.75]  # one arm's gap to a reference, per seed
    later = [g + shift + 0.01 * i for i, g in enumerate(earlier)]
    c = change(later, earlier, higher_is_better)
    d = [shift + 0.01 * i for i in range(5)]
    half = 2.7764 * float(np.std(d, ddof=1)) / math.sqrt(5)
    assert (c.diff, c.lo, c.hi, c.n) == pytest.approx((np.mean(d), np.mean(d) - half,
                                                       np.mean(d) + half, 5))
    assert c.verdict == word and c.text(2).endswith(f"paired t, n=5: {word}")
    noisy = change([later[0] + 1, *later[1:]], earlier, higher_is_better)
    assert noisy.lo <= 0 <= noisy.hi and noisy.verdict == NOT_RESOLVED


def test_one_seed_gives_no_interval_and_no_verdict():
    c = compare([1.0], [2.0], paired=True, higher_is_better=False)
    assert math.isnan(c.lo) and c.verdict == NOT_RESOLVED
    assert c.text() == "-1.000, paired t, n=1: not resolved (one seed: no interval)"


def run(seed, value, role=None):
    return {"seed": seed, "value": value, **({"role": role} if role else {})}


def test_report_runs_leave_the_tuning_seeds_out_and_say_when_too_few_remain():
    runs = [run(0, 9.0), run(1, 1.0), run(2, 2.0, "tune"), run(3, 3.0, "report")]
    split = report_runs(runs, tuning_seeds=[0, 3])  # a record's own role decides
    assert [r["seed"] for r in split.report] == [1, 3]
    assert [r["seed"] for r in split.tuning] == [0, 2]
    assert split.n == 2 and not split.enough
    assert split.label == "n=2 (not enough seeds: >= 5 report seeds needed)"
    assert report_runs([run(s, 0.0) for s in range(6)], [0]).label == "n=5"
    with pytest.raises(ValueError, match="unknown run role 'eval'"):
        report_runs([run(0, 0.0, "eval")])


def test_compare_runs_pairs_by_seed_without_the_tuning_seed_else_welch():
    a = [run(s, 1.0 + s + 0.5 + 0.01 * s * s) for s in (2, 0, 1, 3, 4, 5)]
    b = [run(s, 1.0 + s) for s in range(6)]
    value = lambda r: r["value"]  # noqa: E731
    c = compare_runs(a, b, value, higher_is_better=False, tuning_seeds=[0])
    ref = compare([0.5 + 0.01 * s * s for s in range(1, 6)], [0.0] * 5, True, False)
    assert (c.diff, c.lo, c.hi) == pytest.approx((ref.diff, ref.lo, ref.hi))
    assert c.test == PAIRED_T and c.n == 5 and c.verdict == BEHIND
    unpaired = compare_runs(a[:-1], b, value, higher_is_better=False, tuning_seeds=[0])
    assert unpaired.test == WELCH_T and unpaired.n == 4
    none = compare_runs([run(0, 1.0)], b, value, False, tuning_seeds=[0])
    assert none.text() == "n=0: not resolved (no report seeds: every run tuned)"
