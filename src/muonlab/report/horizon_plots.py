"""Figures of the horizon study (finished cells only): final loss and gap vs horizon, val
curves per horizon, weight and update RMS of the hidden matrices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .plots import val_stats  # noqa: E402


def _colors(names):
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_horizon(study, path: Path) -> Path:
    """Final val loss vs horizon (± std over seeds) and the gap to AdamW vs horizon."""
    fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = _colors(study.names())
    for name in study.names():
        cells = [c for h in study.horizons if (c := study.ready(h, name))]
        if not cells:
            continue
        hs = [c.horizon for c in cells]
        ax_loss.errorbar(hs, [c.final[0] for c in cells], yerr=[c.final[1] for c in cells],
                         marker="o", capsize=3, color=colors[name], label=name)
        base = [study.ready(c.horizon, "adamw") for c in cells]
        pairs = [(c.horizon, c.final[0] - b.final[0]) for c, b in zip(cells, base) if b]
        if name != "adamw" and pairs:
            ax_gap.plot(*zip(*pairs), marker="o", color=colors[name], label=name)
    ax_gap.axhline(0, color="k", lw=0.8)
    ax_loss.set(xscale="log", xlabel="horizon (steps)", ylabel="final val loss",
                title="final val loss vs horizon")
    ax_gap.set(xscale="log", xlabel="horizon (steps)", ylabel="val loss - AdamW's",
               title="gap to AdamW (below 0: ahead)")
    for ax in (ax_loss, ax_gap):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(study, path: Path) -> Path:
    """Mean val loss vs step at each horizon, one panel per horizon."""
    fig, axes = plt.subplots(1, len(study.horizons), figsize=(5 * len(study.horizons), 4),
                             squeeze=False)
    colors = _colors(study.names())
    for ax, h in zip(axes[0], study.horizons):
        for name in study.names():
            cell = study.ready(h, name)
            if cell is None:
                continue
            steps, mean, std, _ = val_stats(cell.runs)
            ax.plot(steps[1:], mean[1:], marker=".", color=colors[name], label=name)
            ax.fill_between(steps[1:], (mean - std)[1:], (mean + std)[1:], color=colors[name],
                            alpha=0.2, lw=0)
        ax.set(xlabel="step", ylabel="val loss", title=f"{h} steps")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_rms(study, path: Path, records) -> Path:
    """Weight RMS (top) and update RMS (bottom) of the hidden matrices vs step, seed 0."""
    n = len(study.horizons)
    fig, axes = plt.subplots(2, n, figsize=(5 * n, 7), squeeze=False)
    colors = _colors(study.names())
    for j, h in enumerate(study.horizons):
        for name in study.names():
            cell = study.ready(h, name)
            recs = records(cell.runs[0]) if cell else []
            if not recs:
                continue
            steps = [r["step"] for r in recs]
            axes[0][j].plot(steps, [r["weight_rms"] for r in recs], color=colors[name],
                            label=name)
            axes[1][j].plot(steps, [r["update_rms"] for r in recs], color=colors[name],
                            label=name)
        axes[0][j].set(title=f"weight RMS, {h} steps", xlabel="step")
        axes[1][j].set(title=f"update RMS, {h} steps", xlabel="step", yscale="log")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return _save(fig, path)
