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


def fake_records(ranks=(1, 2), steps=(10, 20)) -> list[dict]:
    """Per-step records of :func:`measure`'s shape, dense Muon (rank None) and each rank."""
    return [{"step": s, "rank": r, "momentum_rel_error": 0.0 if r is None else 1.0 / r,
             "best_rank_rel_error": 0.0 if r is None else 0.5 / r, "orth_cosine": 0.4,
             "window_drift_ratio": 0.5} for s in steps for r in (None, *ranks)]


def test_the_rank_figure_keeps_its_legends_off_the_curves(monkeypatch, tmp_path):
    """The legends stand under the panels (inside, the left one covered the r=16 curve of
    rank-gamma0.2.png); each rank in its own palette colour."""
    from matplotlib.colors import to_hex

    from muonlab.report import plots

    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path, title="": drawn.append(fig) or path)
    plots.plot_lorapre_rank(fake_records(), tmp_path / "rank.png", "title")
    (fig,) = drawn
    fig.canvas.draw()
    for ax in fig.axes:
        assert ax.get_legend().get_window_extent().y1 < ax.get_window_extent().y0
        colours = {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()}
        assert colours["LoRA-Pre r=2"] == plots.color("lorapre-r2")
    plots.plt.close(fig)


def test_redraw_draws_every_records_figure_without_measuring(monkeypatch, tmp_path):
    """``benchmarks/lorapre_rank.py --redraw``: each committed records file's figure (named
    by who moved the weights and the factor step) and the study page's table, from the records
    alone."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import lorapre_rank
    import records

    config = {"ranks": [1, 2], "steps": 20, "every": 10, "seed": 0, "muon_lr": 0.02,
              "driver_rank": None, "gamma1": 0.2}
    (tmp_path / "m-gamma0.2.json").write_text(json.dumps({
        "provenance": {"machine_label": "m", "cpu_s": 1.0}, "config": config,
        "means_after_step": 1, "means": {"1": {"orth_cosine": 0.4}}, "records": fake_records()}))
    doc = tmp_path / "variants.md"
    begin, end = records.markers("benchmarks/lorapre_rank.py")
    doc.write_text(f"{begin}\nold\n{end}\n")
    monkeypatch.setattr(lorapre_rank, "OUT", tmp_path)
    monkeypatch.setattr(lorapre_rank, "DOC", doc)
    monkeypatch.setattr(lorapre_rank, "provenance_line", lambda p: p["machine_label"])
    monkeypatch.setattr(lorapre_rank, "measure", lambda cfg: pytest.fail("measured"))
    monkeypatch.setattr(sys, "argv", ["lorapre_rank.py", "--redraw"])
    lorapre_rank.main()
    assert (tmp_path / "rank-gamma0.2.png").stat().st_size > 0
    assert "LoRA-Pre gamma1=0.2" in records.generated(doc.read_text(), "benchmarks/lorapre_rank.py")
