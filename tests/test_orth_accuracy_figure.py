"""The orthogonalization-accuracy figure (issue 25.5): drawn by the plotting module from the
benchmark's committed records, a colour per Newton-Schulz method, a line style per precision,
and each panel naming the variants that lie on top of each other."""

import json
import sys
from pathlib import Path

import pytest
from matplotlib.colors import to_hex

from muonlab.report import plots

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_coinciding_groups_curves_within_the_tolerance_at_every_point():
    curves = {"a": [1.0, 0.5], "b": [1.01, 0.505], "c": [1.0, 0.6], "d": [2.0, 1.0],
              "e": [0.99, 0.6]}
    # b within 2% of a everywhere; c off at the second point; e with c
    assert plots.coinciding(curves) == [["a", "b"], ["c", "e"]]
    assert plots.coinciding({"a": [1.0], "b": [1.1]}) == []


def record(method, steps, err):
    return {"method": method, "steps": steps, "synthetic_max_err": err,
            "synthetic_cos": 1 - err / 10, "gpt_max_err": err, "gpt_min_cos": 1 - err / 2}


def test_the_figure_colours_by_method_styles_by_precision_and_names_coinciding_lines(
        monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path, title="": drawn.append(fig) or path)
    methods = {"j32": ("jordan", "fp32", False), "j16": ("jordan", "bf16", True),
               "jmix": ("jordan", "mixed", False), "p32": ("polar_express", "fp32", False)}
    results = [record(m, s, e / s) for m, e in (("j32", 1.0), ("j16", 1.5), ("jmix", 1.001),
                                                ("p32", 0.5)) for s in (3, 5)]
    plots.plot_orth_accuracy(results, methods, Path("o.png"), "title")
    (fig,) = drawn
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert {k: lines[k].get_linestyle() for k in methods} == {
            "j32": "-", "j16": "--", "jmix": ":", "p32": "-"}
        colours = {k: to_hex(lines[k].get_color()) for k in methods}
        assert colours["j32"] == colours["j16"] == colours["jmix"] != colours["p32"]
        assert list(ax.get_xticks()) == [3, 5]
        (note,) = ax.texts
        assert "jordan fp32 = jordan mixed" in note.get_text().replace("\n", " ")
        assert "jordan bf16" not in note.get_text()
    assert fig.axes[1].get_legend() is not None
    plots.plt.close(fig)


def test_redraw_reads_the_committed_records_without_measuring(monkeypatch, tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import orth_accuracy

    calls = []
    monkeypatch.setattr(orth_accuracy, "FIGURE", tmp_path / "orth_accuracy.png")
    monkeypatch.setattr(orth_accuracy, "plot_orth_accuracy",
                        lambda results, methods, path, title: calls.append(
                            (results, methods, path, title)))
    monkeypatch.setattr(orth_accuracy, "synthetic", lambda *a: pytest.fail("measured"))
    assert orth_accuracy.main(["--redraw"]) == 0
    ((results, methods, path, title),) = calls
    committed = json.loads((orth_accuracy.FRAGMENTS / "orth_accuracy.json").read_text())
    assert results == committed["results"] and path == tmp_path / "orth_accuracy.png"
    assert set(methods) == {r["method"] for r in results}  # every record has its style
    assert methods["jordan bf16 (torch.optim.Muon, muon.py)"] == ("jordan", "bf16", True)
    assert methods["polar_express mixed"] == ("polar_express", "mixed", False)
    assert "seed 0" in title
