"""The opt-in parts of the edge-aware sweep (muonlab.experiments.sweep): refinement rounds at
factor sqrt(2), 2**(1/4), ...; the quadratic fit in log-LR; the LR x knob sweep."""

import math

import pytest

from muonlab.experiments.sweep import (
    EdgeAwareSweep2D,
    geometric_ratio,
    quadratic_fit,
    run_sweep,
    run_sweep_2d,
)


def bowl(best):
    """A loss with its minimum at ``best``, quadratic in log2(lr)."""
    return lambda lrs: [(math.log2(lr / best)) ** 2 for lr in lrs]


def test_quadratic_fit_matches_a_hand_computation():
    # log2-LR offsets -1, 0, 1 from 0.02 with losses 1, 0.5, 0.75: the parabola
    # 0.5 - 0.125 x + 0.375 x**2 has its minimum at x = 0.125 / 0.75 = 1/6
    lr, inside = quadratic_fit([0.01, 0.02, 0.04], [1.0, 0.5, 0.75])
    assert lr == pytest.approx(0.02 * 2 ** (1 / 6), rel=1e-9) and inside
    # unevenly spaced points (a refined grid): the exact parabola's minimum is found
    xs = [0.02 / 2 ** 0.5, 0.02, 0.04]
    lr, inside = quadratic_fit(xs, [(math.log(x / 0.03)) ** 2 + 1 for x in xs])
    assert lr == pytest.approx(0.03, rel=1e-9) and inside
    # a minimum beyond the bracket is reported as outside; no minimum: None
    lr, inside = quadratic_fit([0.01, 0.02, 0.04], [3.0, 2.0, 1.5])
    assert lr > 0.04 and not inside
    assert quadratic_fit([0.01, 0.02, 0.04], [1.0, 2.0, 1.0]) is None
    assert quadratic_fit([0.01, 0.02, 0.04], [1.0, math.inf, 1.0]) is None


def test_refinement_finds_the_point_closer_to_an_optimum_between_grid_points():
    optimum = 0.02 * 2 ** 0.3  # between 0.02 and 0.04, closer to 0.02 * sqrt(2)
    plain = run_sweep([0.01, 0.02, 0.04], bowl(optimum))
    assert plain.best == 0.02 and plain.refined == []
    refined = run_sweep([0.01, 0.02, 0.04], bowl(optimum), refine=1)
    assert refined.refined == [[pytest.approx(0.0141421), pytest.approx(0.0282843)]]
    assert refined.best == pytest.approx(0.0282843) and refined.edge is None
    assert "1 refinement round(s)" in refined.describe()
    # round 2 halves the step again: 2**(1/4) around the new best
    twice = run_sweep([0.01, 0.02, 0.04], bowl(optimum), refine=2)
    assert twice.refined[1] == [pytest.approx(0.02 * 2 ** 0.25, rel=1e-5),
                                pytest.approx(0.02 * 2 ** 0.75, rel=1e-5)]
    assert twice.best == pytest.approx(0.02 * 2 ** 0.25, rel=1e-5)  # 2**0.3 is nearest 2**0.25
    assert len(twice.losses) == 7


def test_a_best_at_a_capped_edge_is_never_refined():
    result = run_sweep([0.01, 0.02, 0.04], bowl(1e-4), max_extend=1, refine=2, fit=True)
    assert result.added == [0.005] and result.refined == []
    assert result.best == 0.005 and result.edge == "low" and result.fitted is None
    assert "still the lowest of the grid" in result.describe()


def test_fit_is_reported_as_information_and_default_record_is_unchanged():
    result = run_sweep([0.01, 0.02, 0.04], bowl(0.02 * 2 ** 0.4), fit=True)
    assert result.best == 0.02  # the fit chooses no run
    assert result.fitted == pytest.approx(0.02 * 2 ** 0.4, rel=1e-9)
    assert "puts the optimum at 0.0264" in result.describe()
    plain = run_sweep([0.01, 0.02, 0.04], bowl(0.02))
    assert plain.record() == {"losses": plain.losses, "initial": [0.01, 0.02, 0.04],
                              "added": [], "best": 0.02, "edge": None,
                              "note": "The best LR 0.02 is inside the grid."}
    assert "refined" not in result.record() and result.record()["fitted"] == result.fitted


def surface(lr_best, knob_best, knob_scale=0.1):
    """A 2-D loss: quadratic in log2(lr) and in the knob, minimum at the given pair."""
    return lambda pairs: [math.log2(lr / lr_best) ** 2 + ((k - knob_best) / knob_scale) ** 2
                          for lr, k in pairs]


def test_2d_sweep_extends_the_lr_and_names_both_chosen_values():
    result = run_sweep_2d([0.01, 0.02, 0.04], [0.0, 0.1, 0.2], "weight decay",
                          surface(0.08, 0.1))
    assert result.added == [0.08, 0.16] and result.added_knob == []
    assert (result.best, result.best_knob) == (0.08, 0.1)
    assert result.edge is None and result.knob_edge is None
    assert len(result.losses) == 5 * 3  # each added LR ran with every weight decay
    text = result.describe()
    assert "LR 0.08 with weight decay 0.1" in text and "inside their grids" in text


def test_2d_sweep_reports_a_knob_edge_of_a_grid_that_is_not_geometric():
    result = run_sweep_2d([0.01, 0.02, 0.04], [0.0, 0.05, 0.1], "weight decay",
                          surface(0.02, 0.3))
    assert result.added_knob == [] and (result.best, result.best_knob) == (0.02, 0.1)
    assert result.edge is None and result.knob_edge == "high"
    assert "is the highest of its grid (a grid that is not geometric" in result.describe()
    # the LR edge is reported in the same way as the 1-D sweep's
    low = run_sweep_2d([0.01, 0.02], [0.0, 0.1], "weight decay", surface(1e-4, 0.0),
                       max_extend=1)
    assert low.added == [0.005] and low.edge == "low" and low.knob_edge == "low"


def test_2d_sweep_extends_a_geometric_knob_grid_up_to_its_limit():
    result = run_sweep_2d([0.01, 0.02, 0.04], [0.025, 0.05, 0.1], "weight decay",
                          surface(0.02, 0.2, 0.05))
    assert result.added_knob == [0.2, 0.4] and result.best_knob == 0.2
    assert result.knob_edge is None and result.added == []
    # beta2-like: the grid's next value would pass the limit 1, so the edge stays reported
    sweep = EdgeAwareSweep2D([0.01, 0.02, 0.04], [0.2, 0.4, 0.8], "beta2", knob_max=1.0)
    while todo := sweep.pending():
        for (lr, k), loss in zip(todo, surface(0.02, 0.99)(todo), strict=True):
            sweep.record(lr, k, loss)
    capped = sweep.result()
    assert capped.best_knob == 0.8 and capped.knob_edge == "high" and capped.added_knob == []
    assert "after the extension cap" in capped.describe()


def test_2d_sweep_refines_the_lr_at_the_best_knob_value():
    optimum = 0.02 * 2 ** 0.3  # between grid LRs, nearest 0.02 * 2**0.25
    result = run_sweep_2d([0.01, 0.02, 0.04], [0.0, 0.1], "weight decay",
                          surface(optimum, 0.1), refine=2)
    assert result.refined == [[pytest.approx(0.0141421), pytest.approx(0.0282843)],
                              [pytest.approx(0.02 * 2 ** 0.25, rel=1e-5),
                               pytest.approx(0.02 * 2 ** 0.75, rel=1e-5)]]
    assert result.best == pytest.approx(0.02 * 2 ** 0.25, rel=1e-5) and result.best_knob == 0.1
    assert len(result.losses) == 3 * 2 + 4  # the refined LRs run at the best knob value only
    assert result.edge is None and "2 refinement round(s)" in result.describe()
    at_edge = run_sweep_2d([0.01, 0.02], [0.0, 0.1], "weight decay", surface(1e-4, 0.1),
                           max_extend=0, refine=2)
    assert at_edge.refined == [] and at_edge.edge == "low"


def test_2d_record_is_json_ready_and_geometric_ratio():
    result = run_sweep_2d([0.01, 0.02, 0.04], [0.0, 0.1], "weight decay",
                          surface(0.02, 0.0), fit=True)
    record = result.record()
    assert [0.02, 0.0, 0.0] in record["losses"] and record["best_knob"] == 0.0
    assert record["fitted"] == pytest.approx(0.02, rel=1e-9)
    assert geometric_ratio([0.1, 0.025, 0.05]) == pytest.approx(2.0)
    assert geometric_ratio([0.0, 0.1, 0.2]) is None and geometric_ratio([0.9, 0.99]) is None


def test_2d_sweep_best_at_the_knobs_floor_is_no_edge():
    """Weight decay 0 best: no optimum lies below it, so it is named as the least the knob can
    be, never "the optimum may lie beyond it"; without the floor it is an edge."""
    bounded = run_sweep_2d([0.01, 0.02, 0.04], [0.0, 0.1, 0.2], "weight decay",
                           surface(0.02, 0.0), knob_min=0.0)
    assert (bounded.best, bounded.best_knob) == (0.02, 0.0)
    assert bounded.knob_edge is None and bounded.knob_at_bound
    note = bounded.describe()
    assert "the best weight decay is 0, the least it can be" in note and "beyond" not in note
    free = run_sweep_2d([0.01, 0.02, 0.04], [0.0, 0.1, 0.2], "weight decay", surface(0.02, 0.0))
    assert free.knob_edge == "low" and not free.knob_at_bound and "beyond" in free.describe()
