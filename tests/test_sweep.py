"""The edge-aware LR sweep (muonlab.experiments.sweep) and the run machinery it drives."""

import math

import pytest

from muonlab.experiments.sweep import (
    EdgeAwareSweep,
    check_factor_grid,
    factor_grid,
    run_sweep,
    top_k,
)


def bowl(best):
    """A loss with its minimum at ``best``, quadratic in log2(lr)."""
    return lambda lrs: [(math.log2(lr / best)) ** 2 for lr in lrs]


def test_factor_grid_and_check():
    assert factor_grid(0.02, 3) == [0.01, 0.02, 0.04]
    assert factor_grid(1e-3, 4) == pytest.approx([1e-3 / 2**1.5, 1e-3 / 2**0.5,
                                                  1e-3 * 2**0.5, 1e-3 * 2**1.5], rel=1e-5)
    check_factor_grid([0.01, 0.04, 0.02])
    with pytest.raises(ValueError, match="factor 2"):
        check_factor_grid([3e-4, 1e-3, 3e-3])


def test_inside_best_is_not_extended():
    result = run_sweep([0.01, 0.02, 0.04], bowl(0.02))
    assert result.best == 0.02 and result.added == [] and result.edge is None
    assert "inside the grid" in result.describe()


def test_high_edge_is_extended_until_inside():
    result = run_sweep([0.01, 0.02, 0.04], bowl(0.08))
    assert result.added == [0.08, 0.16]  # 0.08 was best at the new edge: one more step
    assert result.best == 0.08 and result.edge is None
    assert "extended by 0.08, 0.16" in result.describe()


def test_low_edge_at_cap_is_reported():
    result = run_sweep([0.01, 0.02, 0.04], bowl(1e-4), max_extend=2)
    assert result.added == [0.005, 0.0025]
    assert result.best == 0.0025 and result.edge == "low"
    assert "still the lowest of the grid" in result.describe()


def test_diverged_points_are_inf_and_sweep_state():
    sweep = EdgeAwareSweep([0.01, 0.02])
    assert sweep.pending() == [0.01, 0.02] and not sweep.done
    sweep.record(0.01, 1.0)
    sweep.record(0.02, float("nan"))  # diverged
    assert sweep.losses[0.02] == math.inf
    assert sweep.pending() == [0.005]  # best at the low edge
    sweep.record(0.005, 2.0)
    assert sweep.pending() == [] and sweep.done
    assert sweep.result().best == 0.01


def test_top_k():
    assert top_k({0.01: 2.0, 0.02: 1.0, 0.04: 1.5}, 2) == [0.02, 0.04]
