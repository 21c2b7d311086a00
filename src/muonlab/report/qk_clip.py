"""QK-clip's effect on the attention logits: the ``max_logits`` records of GPT runs
(:func:`muonlab.train.gpt.max_logit_evaluator`, one per evaluation) drawn as max logit vs step,
one line per run, QK-clip's threshold tau marked."""

from __future__ import annotations

from pathlib import Path

from .metrics import read_jsonl
from .plots import plt, save


def max_logit_curve(metrics: str | Path) -> tuple[list[int], list[float], float | None]:
    """(steps, max logit over the layers at each, tau or None) of the run whose metrics file
    is ``metrics`` (plain or packed)."""
    records = [r for r in read_jsonl(metrics) if r.get("kind") == "max_logits"]
    if not records:
        raise ValueError(f"{metrics} has no max_logits records (a GPT run logs one per "
                         "evaluation)")
    return ([r["step"] for r in records], [r["max_logit"] for r in records],
            records[0].get("tau"))


def plot_max_logits(runs: dict[str, str | Path], path: str | Path, title: str) -> Path:
    """One line per run (``{label: metrics file}``): its max pre-softmax logit vs step, and a
    dashed line at each clipped run's tau."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    taus = set()
    for label, metrics in runs.items():
        steps, values, tau = max_logit_curve(metrics)
        ax.plot(steps, values, "o-", ms=3, lw=1.5, label=label)
        if tau is not None:
            taus.add(tau)
    for tau in sorted(taus):
        ax.axhline(tau, color="gray", ls="--", lw=1, label=f"tau = {tau:g}")
    ax.set(xlabel="step", ylabel="max pre-softmax attention logit (all layers and heads)",
           title=title)
    ax.legend()
    return save(fig, path, dpi=120)
