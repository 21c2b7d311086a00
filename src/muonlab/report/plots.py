"""Matplotlib figures of training curves (Agg backend: files only, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import Run, common_val_steps, mean_curve, val_loss_at  # noqa: E402


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    if window <= 1 or len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def val_stats(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean val loss, std, mean elapsed seconds) on the steps all runs evaluated."""
    steps = common_val_steps(runs)
    losses = np.array([[val_loss_at(r, s) for s in steps] for r in runs])
    elapsed = np.array(
        [[next(v["elapsed_s"] for v in r.val if int(v["step"]) == s) for s in steps] for r in runs]
    )
    std = losses.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
    return np.array(steps, dtype=float), losses.mean(axis=0), std, elapsed.mean(axis=0)


def plot_loss_curves(groups: dict[str, Sequence[Run]], path: str | Path, title: str = "") -> Path:
    """Two panels: train (smoothed) and val loss vs step, and val loss vs wall-clock seconds.

    Lines are means over the runs of each group (seeds); bands are +- one standard deviation.
    The train curve is a trailing moving average over 1% of the run's steps.
    """
    fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, runs) in enumerate(groups.items()):
        color = colors[i % len(colors)]
        n = len(runs)
        steps, mean, std = mean_curve(runs, "loss")
        window = max(1, len(steps) // 100)
        m, s = smooth(mean, window), smooth(std, window)
        ax_step.plot(steps, m, color=color, alpha=0.45, lw=1, label=f"{label} train (n={n})")
        ax_step.fill_between(steps, m - s, m + s, color=color, alpha=0.1, lw=0)
        vsteps, vmean, vstd, velapsed = val_stats(runs)
        ax_step.plot(vsteps, vmean, "o-", color=color, lw=2, ms=3, label=f"{label} val")
        ax_step.fill_between(vsteps, vmean - vstd, vmean + vstd, color=color, alpha=0.2, lw=0)
        ax_time.plot(velapsed, vmean, "o-", color=color, lw=2, ms=3, label=f"{label} val")
        ax_time.fill_between(velapsed, vmean - vstd, vmean + vstd, color=color, alpha=0.2, lw=0)
    ax_step.set(xlabel="step", ylabel="loss", title="loss vs step")
    ax_time.set(xlabel="training wall-clock (s)", ylabel="val loss", title="val loss vs time")
    for ax in (ax_step, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, min(hi, lo + 2.5))  # keep the interesting part (start is ~ln(vocab))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
