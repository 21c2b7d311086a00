"""The one plotting module: one colour per optimizer in every figure, bars and bands that say
what they are (95% t interval, n), log ticks at the plotted values, every panel titled,
labelled and with a legend."""

import math
from pathlib import Path

import matplotlib.colors
import numpy as np
import pytest

from muonlab.report import plots
from muonlab.report.horizon import Cell
from muonlab.report.metrics import Run
from muonlab.report.stats import Comparison


def test_one_colour_per_optimizer_whatever_its_spelling():
    same = [("LoRA-Pre r=16", "lorapre-r16"), ("Kronecker", "kronecker"),
            ("Hybrid Kronecker", "kronecker-hybrid"), ("LoRA-Pre r=1 (equal memory)", "lorapre-r1"),
            ("AdamW", "adamw"), ("Muon", "muon"), ("Muon (gradient-heavy)", "muon-gradient-heavy")]
    for a, b in same:
        assert plots.color(a) == plots.color(b), (a, b)
    from matplotlib.colors import to_hex

    from muonlab.experiments import finetune_study, horizon, variants_gpt

    # every contender a study can draw in one figure has a colour of its own
    for table in (horizon.CONTENDERS, variants_gpt.CONTENDERS, finetune_study.ARMS):
        colours = {n: to_hex(plots.color(n)) for n in table}
        assert len(set(colours.values())) == len(colours), colours
    # the fine-tuning arms are in the palette; those that are no optimizer of another study
    # (all but adamw, muon-kj = Muon, muon-moonlight) have a colour no other optimizer has
    shared = {"adamw": "adamw", "muon-kj": "muon", "muon-moonlight": "muon-moonlight"}
    palette = list(plots.PALETTE.values())
    for arm in finetune_study.ARMS:
        c = plots.color(arm)
        assert c in palette, arm
        if arm in shared:
            assert c == plots.color(shared[arm]), arm
        else:
            assert palette.count(c) == 1, (arm, c)
    assert plots.color("some-new-arm") == plots.color("some-new-arm")


def test_an_unknown_name_gets_a_colour_of_no_optimizer_distinct_in_its_figure():
    """The fallback: never a palette colour; the same for a name in every figure; the unknown
    names of one figure (``among``) all different, whatever order they come in."""
    names = [f"arm-{i}" for i in range(200)]
    palette = set(plots.PALETTE.values())
    assert not {matplotlib.colors.to_hex(plots.color(n)) for n in names} & palette
    assert [plots.color(n) for n in names] == [plots.color(n) for n in names]
    # two names that hash to one colour: apart when drawn together, the earlier-sorted one
    # keeping its own
    first = {}
    a, b = next((first[c], n) for n in names
                if (c := plots.color(n)) in first or first.setdefault(c, n) is None)
    assert plots.color(a) == plots.color(b)
    assert plots.color(a, among=[a, b]) == plots.color(a) != plots.color(b, among=[a, b])
    figure = names[:len(plots.FALLBACK)] + ["adamw", "Muon"]
    colours = [plots.color(n, among=figure) for n in figure]
    assert len(set(colours[:-2])) == len(plots.FALLBACK) and not set(colours[:-2]) & palette
    assert colours[-2:] == [plots.PALETTE["adamw"], plots.PALETTE["muon"]]
    assert colours == [plots.color(n, among=figure[::-1]) for n in figure]


def test_legends_are_set_in_9_point_type(figures):
    """Legible in a wide multi-panel figure shown ~880 px wide (7 pt came out ~6 px tall)."""
    fig, ax = plots.plt.subplots()
    ax.plot([0, 1], [0, 1], label="adamw")
    plots.legend(ax, [3])
    assert {t.get_fontsize() for t in ax.get_legend().get_texts()} == {9}
    plots.plt.close(fig)


def run(losses: list[float], seed: int) -> Run:
    return Run(path=Path(f"s{seed}"), config={"seed": seed},
               val=[{"step": 10 * i, "val_loss": v, "elapsed_s": float(i)}
                    for i, v in enumerate(losses)])


class FakeStudy:
    """The horizon layout: two contenders at three horizons, three seeds each; seed 0, which
    tuned the LRs, an outlier the figures must leave out."""

    horizons = [250, 800, 2500]
    settings = {"preset": "tiny", "data": "tinyshakespeare", "seeds": [0, 1, 2]}
    tuning_seed = 0
    out = Path("fake")
    started: list = []

    def names(self):
        return ["adamw", "muon"]

    def corpus_hashes(self):
        return []

    def tuned(self):
        return "LR"

    def ready(self, h, name):
        end = (2.0 if name == "adamw" else 1.8) - h / 10_000
        return Cell(h, name, 0.01, [run([4.0, 3.9, end + 0.5], 0), run([4.0, 3.0, end], 1),
                                    run([4.0, 3.1, end + 0.02], 2)], True)


def check_panel(ax):
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert ax.get_legend() is not None
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_horizon_figure_ticks_at_the_horizons_and_labels_its_bars(figures):
    gaps = {(h, "muon"): Comparison(-0.2 + h / 10_000, -0.3, -0.1 + h / 10_000, 5, "paired t",
                                    "ahead") for h in FakeStudy.horizons}
    plots.plot_horizon(FakeStudy(), Path("h.png"), gaps)
    (fig,) = figures
    ax_loss, ax_gap = fig.axes
    for ax in (ax_loss, ax_gap):
        check_panel(ax)
        assert list(ax.get_xticks()) == [250, 800, 2500]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["250", "800", "2500"]
        assert len(ax.xaxis.get_minorticklocs()) == 0
    assert "bars: 95% t interval over report seeds 1, 2 (n=2)" in check_panel(ax_loss)
    # the bars are the 95% t interval over the report seeds 1 and 2 (seed 0, the tuning
    # seed's outlier, left out): final losses d and d + 0.02, t(1) = 12.7062
    bars = ax_loss.containers[0].lines[2][0].get_segments()
    low, high = bars[0][:, 1]
    assert high - low == pytest.approx(2 * 12.7062 * 0.02 / math.sqrt(2) / math.sqrt(2))
    assert (low + high) / 2 == pytest.approx(2.0 - 250 / 10_000 + 0.01)
    colours = {bars.get_label(): matplotlib.colors.to_hex(bars.lines[0].get_color())
               for bars in ax_gap.containers if not bars.get_label().startswith("bars:")}
    assert colours == {"muon": plots.color("muon")}
    # the gap panel's bars are the statistics layer's paired intervals, as passed
    assert "bars: 95% paired-t interval over report seeds 1, 2 (n=2)" in check_panel(ax_gap)
    segments = ax_gap.containers[0].lines[2][0].get_segments()
    assert [v for seg in segments for v in seg[:, 1]] == pytest.approx(
        [v for h in FakeStudy.horizons for v in (-0.3, -0.1 + h / 10_000)])
    # each contender's points a little off the horizon, so their bars stay apart
    (muon_x,) = {round(x / h, 6) for x, h in zip(ax_gap.containers[0].lines[0].get_xdata(),
                                                  FakeStudy.horizons)}
    (adamw_x,) = {round(x / h, 6) for x, h in zip(ax_loss.containers[0].lines[0].get_xdata(),
                                                   FakeStudy.horizons)}
    assert adamw_x < 1 < muon_x
    assert fig._suptitle.get_text().startswith("fake: tiny GPT on tinyshakespeare (tuned: LR)")


def test_one_report_seed_says_it_has_no_interval(figures):
    class OneReportSeed(FakeStudy):
        def ready(self, h, name):
            return Cell(h, name, 0.01, FakeStudy.ready(self, h, name).runs[:2], True)

    plots.plot_horizon(OneReportSeed(), Path("h.png"), {})
    (fig,) = figures
    assert "no interval (one report seed: 1)" in check_panel(fig.axes[0])


def test_horizon_ticks_carry_the_tokens_per_parameter(figures):
    class PerParam(FakeStudy):
        settings = {**FakeStudy.settings, "horizon_tokens_per_param": [1.9972, 6.0016, 200.01]}

    plots.plot_horizon(PerParam(), Path("h.png"), {})
    (fig,) = figures
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "250\n(2)", "800\n(6)", "2500\n(200)"]  # not 2e+02
    assert fig.axes[0].get_xlabel() == "horizon: steps (tokens per parameter), log"


def test_a_study_of_one_horizon_is_a_dot_chart_per_contender(figures):
    class OneHorizon(FakeStudy):
        horizons = [2000]

    plots.plot_horizon(OneHorizon(), Path("h.png"), {})
    (fig,) = figures
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["adamw", "muon"]
    assert [c.lines[0].get_xdata()[0] for c in ax.containers[:2]] == [0, 1]
    assert ax.get_xscale() == "linear"


def test_the_weight_rms_panel_starts_at_step_0(figures):
    records = [{"kind": "rms", "step": 0, "weight_rms": 0.016},
               {"kind": "rms", "step": 10, "weight_rms": 0.05, "update_rms": 1e-3},
               {"kind": "rms", "step": 20, "weight_rms": 0.06, "update_rms": 5e-4}]
    study = FakeStudy()
    plots.plot_rms(study, Path("r.png"), lambda run: records, 1,
                   lambda cell: cell.runs[1])
    (fig,) = figures
    weight, update = fig.axes[0], fig.axes[len(study.horizons)]
    assert [list(line.get_xdata()) for line in weight.get_lines()] == [[0, 10, 20]] * 2
    assert [list(line.get_xdata()) for line in update.get_lines()] == [[10, 20]] * 2
    # curves on top of each other stay visible: a line style and marker per contender
    styles = {(line.get_linestyle(), line.get_marker()) for line in weight.get_lines()}
    assert len(styles) == 2


def test_a_built_corpus_is_named_by_its_hash_not_its_local_path():
    class CorpusStudy(FakeStudy):
        settings = {**FakeStudy.settings, "data": "/tmp/corpus"}

        def corpus_hashes(self):
            return ["e28ceb47f58ef59d" + "0" * 48]

        started = [Run(path=Path("r"), config={"config": {"data": {
            "tokenizer": "byte", "train_tokens": 9_999_971, "corpus_sha256": "e28ceb47"}}})]

    assert plots.study_name(CorpusStudy()) == (
        "fake: tiny GPT on a built byte-level corpus (sha256 e28ceb47..., 10.0M training "
        "tokens) (tuned: LR)")


def test_curves_start_at_step_0_and_every_panel_is_labelled(figures):
    plots.plot_val_curves(FakeStudy(), Path("c.png"))
    groups = {"adamw": FakeStudy().ready(250, "adamw").runs,
              "muon": FakeStudy().ready(250, "muon").runs}
    for r in (*groups["adamw"], *groups["muon"]):
        r.train = [{"step": s, "loss": 4.0 - s / 100} for s in range(21)]
    plots.plot_loss_curves(groups, Path("l.png"), "adamw vs muon")
    curves, loss = figures
    for ax in curves.axes:
        check_panel(ax)
        assert min(line.get_xdata()[0] for line in ax.get_lines()) == 0
    titles = [ax.get_title() for ax in loss.axes]
    assert len(set(titles)) == 2 and all(check_panel(ax) for ax in loss.axes)
    assert all(min(line.get_xdata()[0] for line in ax.get_lines()) == 0 for ax in loss.axes)


def test_the_rank_sweep_plots_accuracy_and_loss_under_their_own_titles_with_adamw(figures):
    def row(name, kind, rank, state, accs, losses):
        return dict(optimizer=name, kind=kind, rank=rank, state_bytes=state, test_accs=accs,
                    train_losses=losses)

    rows = [row("AdamW", "adamw", 0, 4000, [0.97, 0.971], [0.05, 0.051]),
            row("Muon", "muon", 0, 2000, [0.98, 0.981], [0.02, 0.021]),
            row("LoRA-Pre r=1", "lora_pre", 1, 100, [0.96, 0.962], [0.08, 0.082]),
            row("LoRA-Pre r=4", "lora_pre", 4, 400, [0.97, 0.972], [0.06, 0.061])]
    plots.plot_memory_tradeoff(rows, Path("t.png"), "rank sweep")
    (fig,) = figures
    acc, loss = fig.axes
    assert "accuracy" in acc.get_title() and "accuracy" in acc.get_ylabel()
    assert "train loss" in loss.get_title() and "loss" in loss.get_ylabel()
    for ax in (acc, loss):
        labels = check_panel(ax)
        assert "AdamW (dashed: its mean)" in labels
        assert "bars/bands: 95% t interval over seeds, n=2" in labels
        assert list(ax.get_xticks()) == [100, 400, 2000, 4000]


def test_a_saved_figure_is_a_palette_png_of_the_same_picture_in_fewer_bytes(tmp_path):
    """save() writes what matplotlib renders, quantised to 256 colours: every pixel within a
    few levels of the RGB render, the file smaller (and no temporary file left)."""
    import io

    import numpy as np
    from PIL import Image

    def figure():
        fig, ax = plots.plt.subplots(figsize=(4, 3))
        for k, name in enumerate(("adamw", "muon", "normuon")):
            ax.plot(np.arange(50), np.sin(np.arange(50) / (k + 3)), color=plots.color(name),
                    label=name)
        ax.set(title="t", xlabel="step", ylabel="loss")
        ax.legend()
        return fig

    plain = io.BytesIO()
    fig = figure()
    fig.tight_layout()
    fig.savefig(plain, format="png", dpi=110)
    plots.plt.close(fig)
    path = plots.save(figure(), tmp_path / "f.png")
    saved = Image.open(path)
    assert saved.mode == "P" and path.stat().st_size < 0.7 * len(plain.getvalue())
    want = np.asarray(Image.open(plain).convert("RGB"), dtype=int)
    got = np.asarray(saved.convert("RGB"), dtype=int)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 1.0 and np.quantile(np.abs(got - want), 0.99) <= 24
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_a_figure_title_is_wrapped_to_the_figure_width(figures):
    class OneHorizon(FakeStudy):
        horizons = [250]

    plots.plot_val_curves(OneHorizon(), Path("c.png"))
    (fig,) = figures
    lines = fig._suptitle.get_text().splitlines()
    assert len(lines) == 2 and all(len(line) <= 10 * fig.get_figwidth() for line in lines)
    assert " ".join(lines) == ("fake: tiny GPT on tinyshakespeare (tuned: LR): val loss "
                               "during training, mean over the report seeds")


def test_a_saved_figure_keeps_every_optimizers_colour_exact(tmp_path):
    """The PNG's 256-colour palette keeps each optimizer's line colour as drawn (a median cut
    merged lorapre-r1's olive into the gamma ablation's gold)."""
    from matplotlib.colors import to_rgb

    fig, ax = plots.plt.subplots(figsize=(6, 4))
    colours = sorted(set(plots.PALETTE.values()))
    x = np.arange(50)
    for i, c in enumerate(colours):  # close lines in overlapping bands, as loss curves are
        y = 4 * np.exp(-x / 8) + 0.04 * i  # (each line still in its neighbours' bands)
        ax.plot(x, y, marker=".", color=c, label=c)
        ax.fill_between(x, y - 0.1, y + 0.1, color=c, alpha=plots.BAND, lw=0)
    ax.legend(fontsize=6, ncol=2)  # (in one column the palette's legend outgrows the figure)
    path = plots.save(fig, tmp_path / "lines.png", "every palette colour")
    drawn = {rgb for _, rgb in plots.Image.open(path).convert("RGB").getcolors(1 << 20)}
    missing = [c for c in colours
               if tuple(round(255 * v) for v in to_rgb(c)) not in drawn]
    assert missing == []


def test_the_memory_figure_keeps_close_points_apart_and_their_ticks_on_one_line(figures):
    """Arms at about the same state size stand a little apart in x, their tick is one
    unrotated label, the bars leave the tuning seed (an outlier) out; 12 in wide at most,
    legend text >= 9 pt."""
    sizes = {"kronecker": (33 * 1024, 170 * 1024), "lorapre-r1": (32 * 1024, 170 * 1024),
             "lorapre-r1-gamma0.2": (32 * 1024, 170 * 1024), "muon": (3 << 20, 3 << 20)}
    cells = [Cell(800, name, 0.01, FakeStudy().ready(800, "muon").runs, True) for name in sizes]
    plots.plot_state_memory(cells, lambda c: sizes[c.name], Path("m.png"), "memory", 0)
    (fig,) = figures
    total, muon = fig.axes
    assert fig.get_figwidth() <= 12
    xs = [c.lines[0].get_xdata()[0] for c in total.containers if c.get_label() in sizes]
    assert len(set(xs[:3])) == 3 and all(abs(x / (170 * 1024) - 1) < 0.1 for x in xs[:3])
    labels = [t.get_text().strip() for t in muon.get_xticklabels()]
    assert labels == ["32 / 33 KiB", "3 MiB"]
    assert all(t.get_rotation() == 0 for t in muon.get_xticklabels())
    legend = muon.get_legend()
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 9
    texts = [t.get_text() for t in legend.get_texts()]
    assert "bars: 95% t interval over report seeds 1, 2 (n=2)" in texts
    low, high = total.containers[0].lines[2][0].get_segments()[0][:, 1]
    assert (low + high) / 2 == pytest.approx(1.8 - 800 / 10_000 + 0.01)


def test_many_variant_curves_get_a_panel_of_their_difference_to_dense_muon(figures):
    class ManyArms(FakeStudy):
        horizons = [800]

        def names(self):
            return ["adamw", "muon", *(f"arm{i}" for i in range(plots.LEGEND_INSIDE))]

    plots.plot_val_curves(ManyArms(), Path("c.png"))
    (fig,) = figures
    curves, versus = fig.axes
    check_panel(versus)
    adamw = next(line for line in versus.get_lines() if line.get_label() == "adamw")
    # adamw's mean curve minus muon's over the report seeds: (3.05 - 3.05, 1.93 - 1.73)
    assert list(adamw.get_xdata()) == [10, 20]
    assert list(adamw.get_ydata()) == pytest.approx([0.0, 0.2])


def test_the_compare_figure_leaves_the_sweep_seed_out(figures):
    runs = FakeStudy().ready(250, "adamw").runs
    for r in runs:
        r.train = [{"step": s, "loss": 4.0 - s / 100} for s in range(21)]
    plots.plot_loss_curves({"adamw": runs}, Path("l.png"), "adamw", tuning_seeds=(0,))
    (fig,) = figures
    ax_step = fig.axes[0]
    assert "band: 95% t interval over report seeds 1, 2 (n=2)" in check_panel(ax_step)
    val = next(line for line in ax_step.get_lines() if line.get_label().startswith("adamw val"))
    assert list(val.get_ydata()) == pytest.approx([4.0, 3.05, 2.0 - 0.025 + 0.01])
