"""The MNIST variant figures (issue 25.5): the rank sweep's points in each rank's palette
colour, labels that cover no other optimizer's marker, byte ticks that do not overlap; the
curves' state bars on a linear axis from 0 and epoch ticks only at the evaluated epochs."""

from pathlib import Path

import matplotlib.colors
import numpy as np
import pytest

from muonlab.report import plots
from muonlab.report.metrics import Run


def row(name, kind, rank, kib, acc, loss):
    """A rank-sweep row: three seeds around ``acc`` (%) and ``loss``."""
    return dict(optimizer=name, kind=kind, rank=rank, state_bytes=int(kib * 1024),
                test_accs=[(acc + d) / 100 for d in (-0.05, 0.0, 0.05)],
                train_losses=[loss + d for d in (-0.001, 0.0, 0.001)])


# the tuned MNIST study's rank sweep (docs/results/variants/mnist): r=128 sits just left of and
# below dense Muon, Kronecker's 5.38 KiB 13% below r=1's 6.10 KiB
SWEEP = [row("AdamW", "adamw", 0, 1834, 97.89, 0.043),
         row("Muon", "muon", 0, 917, 98.33, 0.014),
         row("Kronecker", "kronecker", 0, 5.375, 97.80, 0.055),
         row("LoRA-Pre r=1", "lorapre", 1, 6.1, 97.81, 0.070),
         row("LoRA-Pre r=64", "lorapre", 64, 361.4, 98.22, 0.029),
         row("LoRA-Pre r=128", "lorapre", 128, 717.4, 98.29, 0.0196),
         row("LoRA-Pre r=256", "lorapre", 256, 1239, 98.31, 0.0165)]


def hexes(colours) -> list[str]:
    return [matplotlib.colors.to_hex(c) for c in colours]


def test_each_rank_is_drawn_in_its_own_palette_colour_joined_by_a_grey_line(figures):
    plots.plot_memory_tradeoff(SWEEP, Path("t.png"), "rank sweep")
    (fig,) = figures
    for ax in fig.axes:
        by_label = {c.get_label(): c.lines[0].get_color() for c in ax.containers}
        for rank in (1, 64, 128, 256):
            assert hexes([by_label[f"LoRA-Pre r={rank}"]]) == hexes(
                [plots.color(f"lorapre-r{rank}")])
        # the ranks' colours differ (one olive for all of them hid which point is which)
        assert len(set(hexes(by_label[f"LoRA-Pre r={r}"] for r in (1, 64, 128, 256)))) == 4
        joins = [line for line in ax.get_lines() if len(line.get_xdata()) == 4]
        assert hexes([line.get_color() for line in joins]) == ["#808080"]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        # the dashed reference lines say what they are
        assert {"AdamW (dashed: its mean)", "Muon (dashed: its mean)",
                "Kronecker (dashed: its mean)"} <= set(labels)


def test_the_byte_ticks_join_close_sizes_and_do_not_overlap(figures):
    plots.plot_memory_tradeoff(SWEEP, Path("t.png"), "rank sweep")
    (fig,) = figures
    fig.canvas.draw()
    for ax in fig.axes:
        # 5.38 and 6.10 KiB share one tick, labelled with both
        assert ax.get_xticks()[0] == pytest.approx(5.375 * 1024)
        ticks = [t for t in ax.get_xticklabels() if t.get_text()]
        assert ticks[0].get_text() == "5.38\n6.10"
        assert all(t.get_rotation() == 0 for t in ticks)
        boxes = [t.get_window_extent() for t in ticks]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_no_rank_label_covers_another_optimizers_marker(figures):
    plots.plot_memory_tradeoff(SWEEP, Path("t.png"), "rank sweep")
    (fig,) = figures
    fig.canvas.draw()
    for ax in fig.axes:
        markers = [ax.transData.transform((c.lines[0].get_xdata()[0],
                                           c.lines[0].get_ydata()[0]))
                   for c in ax.containers if not c.get_label().startswith("LoRA-Pre")]
        labels = [t for t in ax.texts if t.get_text().startswith("r=")]
        assert len(labels) == 4
        for text in labels:
            box = text.get_window_extent().expanded(1.0, 1.0).padded(4)  # the marker's radius
            assert not any(box.contains(x, y) for x, y in markers), (text.get_text(), box)


def epoch_run(seed: int, acc: float) -> Run:
    """Three epochs of 10 training steps each."""
    return Run(path=Path(f"s{seed}"), config={"seed": seed},
               train=[{"step": s, "loss": 2.0 / (s + 1)} for s in range(1, 31)],
               epochs=[{"epoch": e, "train_acc": acc + e / 100, "test_acc": acc + e / 200}
                       for e in (1, 2, 3)])


def test_epoch_curves_tick_at_the_evaluated_epochs_and_draw_state_bars_from_zero(figures):
    groups = {name: [epoch_run(0, a), epoch_run(1, a + 0.01)]
              for name, a in (("AdamW", 0.9), ("Muon", 0.92), ("Kronecker", 0.91))}
    rows = [{"optimizer": "AdamW", "state_bytes": 1834 * 1024},
            {"optimizer": "Muon", "state_bytes": 917 * 1024},
            {"optimizer": "Kronecker", "state_bytes": 5504}]
    plots.plot_epoch_curves(groups, rows, Path("c.png"), "curves")
    (fig,) = figures
    loss, train, test, state = fig.axes
    for ax in (train, test):
        assert list(ax.get_xticks()) == [1, 2, 3]
    assert list(loss.get_xticks()) == [0, 1, 2, 3]
    # a bar's length is read from 0: a linear axis starting there
    assert state.get_xscale() == "linear" and state.get_xlim()[0] == 0
    widths = [p.get_width() for p in state.patches]
    assert widths == pytest.approx([1834, 917, 5504 / 1024])
    assert hexes(p.get_facecolor() for p in state.patches) == hexes(
        plots.color(n) for n in ("AdamW", "Muon", "Kronecker"))
    assert np.all(np.array(widths) < state.get_xlim()[1])
