"""QK-clip's effect on the attention logits: the ``max_logits`` records of GPT runs
(:func:`muonlab.train.gpt.max_logit_evaluator`, one per evaluation) drawn as max logit vs step,
one line per run in its optimizer's colour (a clipped run dashed), QK-clip's threshold tau
marked."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .metrics import read_jsonl


def max_logit_curve(metrics: str | Path) -> tuple[list[int], list[float], float | None]:
    """(steps, max logit over the layers at each, tau or None) of the run whose metrics file
    is ``metrics`` (plain or packed)."""
    records = [r for r in read_jsonl(metrics) if r.get("kind") == "max_logits"]
    if not records:
        raise ValueError(f"{metrics} has no max_logits records (a GPT run logs one per "
                         "evaluation)")
    return ([r["step"] for r in records], [r["max_logit"] for r in records],
            records[0].get("tau"))


def run_identity(metrics: str | Path) -> tuple[str, int]:
    """(optimizer, seed) of the run whose metrics file is ``metrics``: its config record."""
    config = next(r for r in read_jsonl(metrics) if r.get("kind") == "config")
    return config["optimizer"], int(config["seed"])


def plot_max_logits(runs: dict[str, str | Path], path: str | Path, title: str) -> Path:
    """One line per run (``{label: metrics file}``): its max pre-softmax logit vs step in its
    optimizer's colour (:func:`muonlab.report.plots.color`), dashed where QK-clip ran, and a
    dotted line at each clipped run's tau. One run per line, so no interval: the title says
    so, with the runs' seeds."""
    fig, ax = plots.plt.subplots(figsize=(7, 4.5))
    taus, seeds = set(), set()
    for label, metrics in runs.items():
        steps, values, tau = max_logit_curve(metrics)
        optimizer, seed = run_identity(metrics)
        seeds.add(seed)
        ax.plot(steps, values, "o-" if tau is None else "o--", ms=3, lw=1.5,
                color=plots.color(optimizer), label=label)
        if tau is not None:
            taus.add(tau)
    for tau in sorted(taus):
        ax.axhline(tau, color="gray", ls=":", lw=1.2, label=f"tau = {tau:g} (the clip's bound)")
    ax.set(xlabel="step", ylabel="max pre-softmax attention logit\n(q.k / sqrt(d), all layers "
           "and heads)")
    ax.grid(alpha=0.3)
    plots.legend(ax, fontsize=9)
    label = "seed" if len(seeds) == 1 else "seeds"
    return plots.save(fig, path, f"{title} (one run each, {label} "
                      f"{', '.join(map(str, sorted(seeds)))}, no interval)", dpi=120)
