"""The LoRA-Pre rank measurement (issue 25): its figures against hand computations, and one
two-step run of the tiny GPT."""

import math

import pytest
import torch

from muonlab.experiments.lorapre_rank import (
    RankConfig,
    cosine,
    measure,
    relative_error,
    rms,
    summary,
    truncation_error,
    window_figures,
)
from muonlab.report.plots import plot_lorapre_rank


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_norm_figures_take_every_tensor_as_one_vector():
    a, b = [t([3.0, 0.0]), t([4.0])], [t([0.0, 1.0]), t([0.0])]
    assert rms(a) == pytest.approx(5 / math.sqrt(3))
    # ||(3, -1, 4)|| / ||(0, 1, 0)||
    assert relative_error(a, b) == pytest.approx(math.sqrt(26))
    assert cosine([t([1.0, 0.0]), t([1.0])], [t([1.0, 1.0]), t([0.0])]) == pytest.approx(
        1 / (math.sqrt(2) * math.sqrt(2)))


def test_truncation_error_is_the_tail_of_the_singular_values():
    m = [torch.diag(t(4.0, 3.0)), t([0.0, 0.0], [0.0, 12.0])]
    # rank 1 keeps 4 and 12, drops 3: 3 / ||(4, 3, 12)|| = 3 / 13
    assert truncation_error(m, 1) == pytest.approx(3 / 13)
    assert truncation_error(m, 2) == pytest.approx(0.0)


def test_window_figures_by_hand():
    # two steps (1, 0) then (0, 1): displacement (1, 1); dense moved (2, 0)
    out = window_figures([t([1.0, 1.0])], 2.0, [t([2.0, 0.0])])
    assert out["persistence"] == pytest.approx(math.sqrt(2) / 2)
    assert out["window_drift_ratio"] == pytest.approx(math.sqrt(2) / 2)
    assert out["window_cosine"] == pytest.approx(1 / math.sqrt(2))


def test_two_steps_of_the_tiny_gpt(tmp_path):
    records = measure(RankConfig(ranks=[1, 4], steps=2, every=1))
    assert [(r["step"], r["rank"]) for r in records] == [
        (s, r) for s in (1, 2) for r in (None, 1, 4)]
    for r in records:
        if r["rank"] is None:  # dense against itself
            assert r["momentum_rel_error"] == 0 and r["orth_cosine"] == pytest.approx(1)
        else:
            assert r["best_rank_rel_error"] <= r["momentum_rel_error"] + 1e-6
    means = summary(records)
    assert set(means) == {"dense", "1", "4"}
    assert means["4"]["orth_rms"] == pytest.approx(
        sum(r["orth_rms"] for r in records if r["rank"] == 4) / 2)
    assert plot_lorapre_rank(records, tmp_path / "rank.png", "title").stat().st_size > 0


def test_the_study_page_table_is_the_one_generated_from_the_records():
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    import lorapre_rank
    import records

    files = records.read_records(lorapre_rank.OUT)
    assert files, "docs/results/variants/lorapre_rank/ holds no records"
    assert records.generated(lorapre_rank.DOC.read_text(), "benchmarks/lorapre_rank.py") == (
        lorapre_rank.render(files))


def test_a_lorapre_driver_moves_the_weights_instead_of_muon():
    dense = measure(RankConfig(ranks=[2], steps=2, every=1))
    driven = measure(RankConfig(ranks=[2], steps=2, every=1, driver_rank=2))
    assert dense[0]["loss"] == driven[0]["loss"]  # step 1: before any update
    assert dense[-1]["loss"] != driven[-1]["loss"]
    # the shadows see the driver's gradients: at step 1 they are the same either way
    assert dense[1]["momentum_rel_error"] == pytest.approx(driven[1]["momentum_rel_error"])
    assert dense[-1]["momentum_rel_error"] != driven[-1]["momentum_rel_error"]


def test_gamma1_reaches_the_shadow_stores():
    """The factor-step ablation (``--gamma1``) changes the LoRA-Pre shadows' momentum, not
    dense Muon's."""
    runs = {g: measure(RankConfig(ranks=[4], steps=3, every=3, gamma1=g)) for g in (None, 0.2)}
    by_rank = {g: {r["rank"]: r for r in recs} for g, recs in runs.items()}
    assert by_rank[None][None]["orth_rms"] == by_rank[0.2][None]["orth_rms"]
    assert by_rank[None][4]["momentum_rel_error"] != pytest.approx(
        by_rank[0.2][4]["momentum_rel_error"], rel=1e-3)
