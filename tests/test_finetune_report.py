"""The fine-tuning study's answers (muonlab.report.finetune) on synthetic runs.jsonl lines
whose paired differences and LR ranges are computed here by hand."""

import json
import math

import pytest
from matplotlib.colors import to_hex
from matplotlib.legend import Legend

from muonlab.report import finetune as ft
from muonlab.report import plots, verdicts
from muonlab.report.plots import interval_label

SEEDS = [1, 2, 3, 4, 5]
ADAMW_ACC = [0.10, 0.12, 0.11, 0.13, 0.14]
KJ_GAIN = [0.05, 0.04, 0.04, 0.05, 0.03]  # muon-kj - adamw: mean 0.042, sd 0.0083666
NOISE = [0.01, -0.01, 0.02, -0.02, 0.005]  # mean 0.001, sd 0.0159687: contains 0
LOSS = [0.10, 0.09, 0.11, 0.10, 0.10]  # a bug's cost: mean 0.100, sd 0.0070711


def line(base, arm, seed, accuracy, lr=1e-3):
    return {"base": base, "arm": arm, "seed": seed, "lr": lr, "accuracy": accuracy,
            "role": "tune" if seed == 0 else "report", "source_val_loss_before": 1.5,
            "source_val_loss_after": 1.5 + 0.01 * seed}


def arm_lines(base, arm, accuracies, lr=1e-3):
    return [line(base, arm, s, a, lr) for s, a in zip(SEEDS, accuracies)]


def synthetic_study(bugs_on_muon=("ema-only", "max-dim-only"), skip=()):
    """(runs.jsonl lines, sweeps.json) of a study of every arm on both bases: muon-kj ahead
    of adamw, muon-moonlight level with it; notes-failed and ema-only lose LOSS to muon-kj
    on both bases, max-dim-only only on the bases where ``bugs_on_muon`` has it (else NOISE);
    the migrated states level with muon-kj (NOISE). ``skip``: (base, arm) left unfinished."""
    lines, sweeps = [], {}
    for base in ft.BASES:
        kj = [a + g for a, g in zip(ADAMW_ACC, KJ_GAIN)]
        lost = [k - x for k, x in zip(kj, LOSS)]
        level = [k + x for k, x in zip(kj, NOISE)]
        max_dim = lost if base == ft.ADAMW or "max-dim-only" in bugs_on_muon else level
        arms = {"adamw": ADAMW_ACC, "muon-kj": kj,
                "muon-moonlight": [a + x for a, x in zip(ADAMW_ACC, NOISE)],
                "notes-failed": lost, "ema-only": lost, "max-dim-only": max_dim,
                ("muon-from-adamw" if base == ft.ADAMW else "muon-carry"): level}
        for arm, accs in arms.items():
            if (base, arm) in skip:
                continue
            losses = {5e-4: 1.2, 1e-3: 1.0, 2e-3: 1.1}
            lines += arm_lines(base, arm, accs) + [
                {**line(base, arm, 0, 0.5 if lr == 1e-3 else 0.3, lr), "val_loss": loss}
                for lr, loss in losses.items()]
            sweeps[f"{base}/{arm}"] = {"losses": {f"{lr:g}": v for lr, v in losses.items()},
                                       "best": 1e-3, "note": "inside"}
    return lines, sweeps


def test_the_good_lr_range_is_the_contiguous_run_within_5_percent_of_the_best():
    # best 4e-4 (1.50); within 1.575: 2e-4 (1.55) and 8e-4 (1.56); 1.6e-3 (1.60) stops it,
    # so 3.2e-3 (1.52) is not in the range though within 5%
    losses = {1e-4: 2.0, 2e-4: 1.55, 4e-4: 1.50, 8e-4: 1.56, 1.6e-3: 1.60, 3.2e-3: 1.52}
    r = ft.good_lr_range(losses)
    assert (r.best, r.lo, r.hi, r.factor, r.lower_bound) == (4e-4, 2e-4, 8e-4, 4.0, False)
    assert r.factor_text() == "4"
    # the range reaches the grid's low edge: the width is only a lower bound
    r = ft.good_lr_range({1e-3: 1.0, 2e-3: 1.04, 4e-3: 1.2})
    assert (r.lo, r.hi, r.low_edge, r.high_edge) == (1e-3, 2e-3, True, False)
    assert r.factor_text() == ">= 2 (reaches the grid's low edge)"
    r = ft.good_lr_range({1.0: 1.0, 2.0: 1.0})  # a tie: the smaller LR, as the sweep chose
    assert (r.best, r.lo, r.hi) == (1.0, 1.0, 2.0)
    assert r.factor_text() == ">= 2 (reaches the grid's low and high edge)"
    assert ft.good_lr_range({1.0: 1.0, 2.0: math.inf, 4.0: 1.0}).hi == 1.0  # diverged: out
    assert ft.good_lr_range({1.0: math.inf, 2.0: math.inf}) is None


def test_the_lr_range_table_reads_the_sweeps_and_the_tuning_accuracies():
    sweeps = {"adamw/adamw": {"losses": {"0.0001": 2.0, "0.0002": 1.55, "0.0004": 1.50,
                                         "0.0008": 1.56, "0.0016": 1.60, "0.0032": 1.52},
                              "best": 4e-4, "note": "inside"}}
    accs = {1e-4: 0.1, 2e-4: 0.2, 4e-4: 0.3, 8e-4: 0.25, 1.6e-3: 0.1, 3.2e-3: 0.9}
    lines = [line("adamw", "adamw", 0, a, lr) for lr, a in accs.items()]
    arms = ft.arms_of(lines, sweeps, SEEDS)
    table = ft.lr_range_table(arms, sweeps, [("adamw", "adamw"), ("muon", "muon-kj")])
    assert "| adamw | adamw | 0.0004 | [0.0002, 0.0008] | 4 | 0.200 to 0.300 |" in table
    assert "| muon | muon-kj | sweep unfinished | - | - | - |" in table


def test_each_question_is_a_paired_difference_by_report_seed():
    lines, sweeps = synthetic_study()
    arms = ft.arms_of(lines, sweeps, SEEDS)
    # muon-kj - adamw: d = 0.05 0.04 0.04 0.05 0.03, mean 0.042, sd 0.0083666,
    # half-width t(0.975, 4) 2.7764 x 0.0083666 / sqrt(5) = 0.010388
    d = ft.difference(arms, "adamw", "muon-kj", "adamw")
    c = d.comparison
    assert (c.test, c.n, c.verdict) == ("paired t", 5, "ahead")
    assert c.diff == pytest.approx(0.042) and c.lo == pytest.approx(0.042 - 0.010388, abs=1e-5)
    assert d.text() == "+0.042 [+0.032, +0.052], paired t, n=5: ahead"
    # the mismatch on the AdamW base is the other sign; on the Muon base muon-kj - adamw
    mismatch = ft.MISMATCH.differences(arms)
    assert [(m.base, m.a, m.b) for m in mismatch] == [("adamw", "adamw", "muon-kj"),
                                                     ("muon", "muon-kj", "adamw")]
    assert mismatch[0].text() == "-0.042 [-0.052, -0.032], paired t, n=5: behind"
    # a bug's cost: mean -0.100, half-width 2.7764 x 0.0070711 / sqrt(5) = 0.0087799
    assert ft.difference(arms, "muon", "ema-only", "muon-kj").text() == (
        "-0.100 [-0.109, -0.091], paired t, n=5: behind")
    # level (NOISE): mean 0.001, half-width 2.7764 x 0.0159687 / sqrt(5) = 0.019828
    assert ft.difference(arms, "muon", "muon-carry", "muon-kj").text() == (
        "+0.001 [-0.019, +0.021], paired t, n=5: not resolved (the interval contains 0)")
    # an arm the study has not finished is named, never guessed
    lines, sweeps = synthetic_study(skip={("adamw", "muon-kj")})
    arms = ft.arms_of(lines, sweeps, SEEDS)
    assert ft.difference(arms, "adamw", "muon-kj", "adamw").text() == (
        "unfinished: adamw/muon-kj")
    assert ft.difference(arms, "muon", "lora-muon", "adamw").text() == (
        "unfinished: muon/lora-muon")


def test_the_cause_is_the_bug_whose_arm_alone_loses_like_the_notes_setup():
    lines, sweeps = synthetic_study(bugs_on_muon=("ema-only",))
    cause = ft.CAUSE.differences(ft.arms_of(lines, sweeps, SEEDS))
    assert ft.bug_cause(cause, "muon") == (
        "on the Muon base `notes-failed` and `ema-only` alone are behind `muon-kj`, "
        "`max-dim-only` alone is not resolved: the intervals point to the EMA momentum as "
        "the cause.")
    assert ft.bug_cause(cause, "adamw") == (
        "on the AdamW base `notes-failed` and each bug alone are behind `muon-kj`: both bugs "
        "cost accuracy.")
    level = [ln for ln in lines if ln["arm"] != "notes-failed"] + [
        {**ln, "arm": "notes-failed"} for ln in lines if ln["arm"] == "muon-kj"]
    cause = ft.CAUSE.differences(ft.arms_of(level, sweeps, SEEDS))
    assert ft.bug_cause(cause, "muon").endswith(
        "is not resolved against `muon-kj`: the failure is not reproduced, so no cause is "
        "named.")
    lines, sweeps = synthetic_study(skip={("muon", "ema-only")})
    cause = ft.CAUSE.differences(ft.arms_of(lines, sweeps, SEEDS))
    assert ft.bug_cause(cause, "muon") == (
        "on the Muon base the cause is not stated: unfinished muon/ema-only.")


def write_study(out, lines, sweeps, seeds=SEEDS):
    out.mkdir(parents=True)
    (out / "study.json").write_text(json.dumps({"report_seeds": seeds, "tune_seed": 0}))
    (out / "sweeps.json").write_text(json.dumps(sweeps))
    (out / ft.RUNS).write_text("".join(json.dumps(ln) + "\n" for ln in lines))


def test_the_readme_verdict_answers_from_a_finished_study_directory(tmp_path):
    lines, sweeps = synthetic_study(bugs_on_muon=("ema-only",))
    sweeps["adamw/muon-kj"]["losses"]["0.0005"] = 1.04  # within 5% of 1.0: [5e-4, 1e-3]
    write_study(tmp_path / "finetune", lines, sweeps)
    text = verdicts.generate(["finetune"], tmp_path)["finetune"]
    # percentage points by base, each with its verdict; test and n said once
    assert ("1. Fixed Muon minus AdamW: AdamW base: muon-kj +4.2 [+3.2, +5.2] ahead, "
            "muon-moonlight +0.1 [-1.9, +2.1] not resolved; Muon base: muon-kj +4.2 [+3.2, "
            "+5.2] ahead, muon-moonlight +0.1 [-1.9, +2.1] not resolved (paired t, n=5).") in text
    assert "Muon base: notes-failed -10.0 [-10.9, -9.1] behind, ema-only" in text
    assert "the intervals point to the EMA momentum as the cause" in text
    assert "both bugs cost accuracy" in text
    assert ("3. Matching minus mismatched optimizer: AdamW base: adamw - muon-kj -4.2 "
            "[-5.2, -3.2] behind; Muon base: muon-kj - adamw +4.2 [+3.2, +5.2] ahead") in text
    assert ("4. Migrated state minus fresh muon-kj: AdamW base: muon-from-adamw +0.1 "
            "[-1.9, +2.1] not resolved; Muon base: muon-carry +0.1 [-1.9, +2.1] not resolved "
            "(paired t, n=5).") in text
    assert "AdamW base adamw 1, " in text and ", muon-kj >= 2, " in text  # reaches 5e-4, the edge
    assert "unfinished" not in text
    # a study still running names what it waits for
    lines, sweeps = synthetic_study(skip={("muon", "muon-carry")})
    write_study(tmp_path / "running" / "finetune", lines, sweeps)
    text = verdicts.generate(["finetune"], tmp_path / "running")["finetune"]
    assert "Muon base: muon-carry unfinished (paired t, n=5)." in text
    # with fewer than 5 report seeds each difference says why it is not resolved
    few = [ln for ln in lines if ln["seed"] in (0, 1, 2)]
    write_study(tmp_path / "few" / "finetune", few, sweeps, seeds=[1, 2])
    text = verdicts.generate(["finetune"], tmp_path / "few")["finetune"]
    assert ("AdamW base: muon-kj +4.5 [-1.9, +10.9], paired t, n=2: not resolved (n=2 < 5 "
            "report seeds), muon-moonlight") in text  # mean .045, t(1) 12.706 x .005


def draw_figures(tmp_path, monkeypatch):
    """The two figures of the synthetic study, kept open (drawn) instead of saved."""
    lines, sweeps = synthetic_study()
    arms = ft.arms_of(lines, sweeps, SEEDS)
    figures = []
    monkeypatch.setattr(ft, "save", lambda fig, path: figures.append(fig) or path)
    ft.plot_accuracy_vs_lr(arms, sweeps, tmp_path / "a.png")
    ft.plot_forgetting(arms, tmp_path / "f.png")
    for fig in figures:
        fig.tight_layout()
        fig.canvas.draw()
    return figures


def test_the_figures_have_titled_labelled_panels_with_legends_naming_the_intervals(
        tmp_path, monkeypatch):
    figures = draw_figures(tmp_path, monkeypatch)
    panels = [ax for fig in figures for ax in fig.axes]
    assert len(panels) == 3 * 2 + 1  # accuracy, sweep and its zoom per base; forgetting
    for ax in panels:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() and ax.get_legend()
    for ax in figures[0].axes[:2]:  # the accuracy panels: the stars' intervals
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert interval_label([5]) in labels
    accuracy, sweep, near = figures[0].axes[0], figures[0].axes[2], figures[0].axes[4]
    kj = next(ln for ln in accuracy.lines if ln.get_label() == "muon-kj")
    assert to_hex(kj.get_color()) == plots.PALETTE["muonkj"]
    # the sweep panels draw each arm's losses and, thick, its good LR range: here 1e-3 alone
    # (1.0; 0.0005 at 1.2 and 0.002 at 1.1 are more than 5% above), which their legends name
    for panel in (sweep, near):
        kj = [ln for ln in panel.lines if to_hex(ln.get_color()) == plots.PALETTE["muonkj"]]
        assert [list(ln.get_xdata()) for ln in kj] == [[5e-4, 1e-3, 2e-3], [1e-3]]
        assert ("thick: good LR range (val loss within 5% of the sweep's best)"
                in [t.get_text() for t in panel.get_legend().get_texts()])
    assert sweep.get_yscale() == "log"
    assert near.get_ylim()[1] == pytest.approx(ft.NEAR_BEST * 1.0)  # the lowest loss: 1.0


def test_the_legends_stand_off_the_data(tmp_path, monkeypatch):
    """Every legend lies outside its panel; the forgetting figure's two legends say what
    colour (arm) and marker (base) mean."""
    figures = draw_figures(tmp_path, monkeypatch)
    for ax in (ax for fig in figures for ax in fig.axes):
        legends = [ax.get_legend(), *(a for a in ax.artists if isinstance(a, Legend))]
        for leg in legends:
            assert not leg.get_window_extent().overlaps(ax.get_window_extent()), ax.get_title()
    forgetting = figures[1].axes[0]
    titles = {forgetting.get_legend().get_title().get_text(),
              *(a.get_title().get_text() for a in forgetting.artists if isinstance(a, Legend))}
    assert titles == {"arm (colour)", "base (marker)"}
    arms = [t.get_text() for t in forgetting.get_legend().get_texts()]
    assert "muon-kj" in arms and not any("base" in a for a in arms)
