"""Tables and figures of the variant studies (``muonkit variants``), from their metrics files.

One row per optimizer (arm): state bytes, savings vs dense Muon, final train loss and test
accuracy over seeds, time per epoch, the test accuracy's difference to dense Muon by the
statistics layer (:mod:`muonlab.report.stats`: interval, test, n, verdict; these studies
tune no LR, so every seed reports); the caption says what the numbers are, the section below
it where and in which precision the runs ran (:mod:`muonlab.report.provenance`). Figures:
training curves and memory (``plot_curves``), or accuracy against state bytes for the rank
sweep (``plot_memory_tradeoff``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .metrics import Run, group_runs, load_run, mean_std
from .plots import plt
from .provenance import provenance_section, study_provenance
from .records import find_records
from .stats import MIN_REPORT_SEEDS, compare_runs
from .tables import fmt_bytes, markdown_table


def summarize(runs: list[Run]) -> list[dict]:
    """One row per optimizer (arm), in the order the runs first name them: state bytes, savings
    vs dense Muon, final train loss and test accuracy (mean, std over seeds), time per epoch."""
    rows = []
    for label, group in group_runs(runs).items():
        last = [r.epochs[-1] for r in group]
        acc, acc_std = mean_std([e["test_acc"] for e in last])
        loss, loss_std = mean_std([e["train_loss"] for e in last])
        rows.append(
            dict(
                optimizer=label,
                kind=group[0].config["config"]["kind"],
                rank=group[0].config["config"]["rank"],
                seeds=len(group),
                state_bytes=group[0].summary["optimizer_state_bytes"],
                test_acc=acc,
                test_acc_std=acc_std,
                train_loss=loss,
                train_loss_std=loss_std,
                train_acc=mean_std([e["train_acc"] for e in last])[0],
                epoch_time_s=mean_std([e["epoch_time_s"] for r in group for e in r.epochs])[0],
            )
        )
    dense = next((r["state_bytes"] for r in rows if r["kind"] == "muon"), None)
    for row in rows:
        row["savings"] = None if not dense else 1 - row["state_bytes"] / dense
    groups = group_runs(runs)
    muon = next((groups[r["optimizer"]] for r in rows if r["kind"] == "muon"), None)
    for row in rows:
        group = groups[row["optimizer"]]
        row["vs_muon"] = None if muon is None or group is muon else compare_runs(
            group, muon, final_test_acc, higher_is_better=True)
    return rows


def final_test_acc(run: Run) -> float:
    return float(run.epochs[-1]["test_acc"])


def markdown_rows(rows: list[dict]) -> str:
    """The study table: one row per optimizer (see :func:`summarize`)."""
    cells = []
    for r in rows:
        if r["savings"] is None:
            savings = "n/a"
        elif r["savings"] < 1:
            savings = f"{100 * r['savings']:.1f}% ({1 / (1 - r['savings']):.1f}x less)"
        else:
            savings = "100%"
        cells.append(
            [
                r["optimizer"],
                f"{r['state_bytes']} ({fmt_bytes(r['state_bytes'])})",
                savings,
                f"{r['train_loss']:.4f}",
                f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_std']:.2f}",
                r["seeds"],
                f"{r['epoch_time_s']:.2f}",
                "n/a" if r["vs_muon"] is None else r["vs_muon"].text(2, 100),
            ]
        )
    headers = [
        "optimizer",
        "state bytes",
        "savings vs dense Muon",
        "final train loss",
        "final test acc % (mean ± std)",
        "seeds",
        "time / epoch (s)",
        "Δ test acc vs Muon, pp [95% CI], test, n: verdict",
    ]
    return markdown_table(headers, cells)


def table_caption(runs: list[Run], input_dim: int) -> str:
    """What the table's numbers are, from the runs' own config and summary records."""
    study = runs[0].config["config"]["study"]
    epochs = runs[0].epochs[-1]["epoch"]
    sizes = " -> ".join(str(n) for n in (input_dim, *study["hidden"], 10))
    return (
        f"{study['dataset']}, MLP {sizes} (no biases), {epochs} epochs, batch "
        f"{study['batch_size']}, Muon-family lr {study['lr']} momentum {study['momentum']}, "
        f"AdamW lr {study['adamw_lr']}; cosine decay to 10%. Final = after epoch {epochs}; "
        f"test accuracy: mean ± sample std over seeds. State bytes: every tensor in the "
        f"optimizer's state after training. Time per epoch: training steps only (evaluation "
        f"excluded), mean over epochs and seeds. Δ test acc vs Muon: paired by seed (same "
        f"initialization and batch order), mean and 95% t interval, ahead or behind only when "
        f"the interval excludes 0 with >= {MIN_REPORT_SEEDS} seeds. {load_note(runs)}"
    )


def load_note(runs: list[Run]) -> str:
    """The 1-minute load range the runs' summary records give ("not recorded" for runs
    written before the loop recorded it); machine, threads and precision are in
    :func:`muonlab.report.provenance.provenance_section`."""
    loads = [s.get(k) for r in runs for s in r.summaries
             for k in ("load_1min_start", "load_1min_end")]
    loads = [x for x in loads if x is not None]
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not recorded"
    return f"1-minute load average during the runs: {load}."


def study_runs(out: Path) -> list[Run]:
    """The runs of a variant study directory (``out/runs/*/metrics.jsonl``, plain or packed)."""
    return [load_run(p) for p in find_records(out, "runs/*/metrics.jsonl")]


def write_report(out: Path, study: str, input_dim: int) -> dict[str, Path]:
    """Table and figure of the metrics files in ``out/runs`` (an MLP on ``input_dim`` inputs),
    with where and in which precision the runs ran."""
    runs = study_runs(out)
    rows = summarize(runs)
    caption = table_caption(runs, input_dim)
    hardware = provenance_section(study_provenance(runs, out))
    (out / "table.md").write_text(markdown_rows(rows) + "\n" + caption + "\n\n" + hardware)
    figure = out / f"{study}.png"
    if study == "rank-sweep":
        plot_memory_tradeoff(rows, figure, title=study)
    else:
        plot_curves(runs, rows, figure, title=study)
    return {"table": out / "table.md", "figure": figure, "runs": out / "runs"}


def plot_curves(runs: list[Run], rows: list[dict], path: Path, title: str) -> None:
    """Four panels: training loss per step (smoothed), train and test accuracy per epoch
    (mean over seeds, shaded +- std), optimizer-state memory per optimizer."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colors = {r["optimizer"]: f"C{i}" for i, r in enumerate(rows)}
    for row in rows:
        group = [r for r in runs if r.optimizer == row["optimizer"]]
        c = colors[row["optimizer"]]
        losses = torch.tensor([[t["loss"] for t in r.train] for r in group]).mean(0)
        steps_per_epoch = len(group[0].train) / len(group[0].epochs)
        window = max(1, int(steps_per_epoch // 10))
        smooth = losses.unfold(0, window, 1).mean(1) if len(losses) >= window else losses
        x = (torch.arange(len(smooth)) + window) / steps_per_epoch
        axes[0, 0].plot(x, smooth, color=c, label=row["optimizer"])
        for ax, key in ((axes[0, 1], "train_acc"), (axes[1, 0], "test_acc")):
            vals = torch.tensor([[100 * e[key] for e in r.epochs] for r in group])
            epochs = [e["epoch"] for e in group[0].epochs]
            mean = vals.mean(0)
            std = vals.std(0) if len(group) > 1 else torch.zeros_like(mean)
            ax.plot(epochs, mean, "o-", color=c, label=row["optimizer"])
            ax.fill_between(epochs, mean - std, mean + std, color=c, alpha=0.2)
    axes[0, 0].set(
        title="training loss (moving average)", xlabel="epoch", ylabel="loss", yscale="log"
    )
    axes[0, 1].set(title="train accuracy", xlabel="epoch", ylabel="%")
    axes[1, 0].set(title="test accuracy", xlabel="epoch", ylabel="%")
    names = [r["optimizer"] for r in rows]
    sizes = [r["state_bytes"] / 1024 for r in rows]
    bars = axes[1, 1].barh(names, sizes, color=[colors[n] for n in names])
    axes[1, 1].bar_label(bars, labels=[fmt_bytes(r["state_bytes"]) for r in rows], padding=3)
    axes[1, 1].set(title="optimizer state", xlabel="KiB (log)", xscale="log")
    axes[1, 1].invert_yaxis()
    axes[1, 1].set_xlim(right=max(sizes) * 8)
    for ax in axes.flat[:3]:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory_tradeoff(rows: list[dict], path: Path, title: str) -> None:
    """Final test accuracy and train loss against optimizer-state bytes: the LoRA-Pre ranks
    as a curve, every other optimizer as a marked point and a dashed reference line."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    lora = [r for r in rows if r["kind"] == "lora_pre"]
    others = [r for r in rows if r["kind"] != "lora_pre"]
    for ax, key, std_key, scale, label in (
        (axes[0], "test_acc", "test_acc_std", 100, "final test accuracy (%)"),
        (axes[1], "train_loss", "train_loss_std", 1, "final-epoch train loss"),
    ):
        xs = [r["state_bytes"] / 1024 for r in lora]
        ys = [scale * r[key] for r in lora]
        ax.errorbar(
            xs,
            ys,
            yerr=[scale * r[std_key] for r in lora],
            fmt="o-",
            color="C2",
            capsize=3,
            label="LoRA-Pre",
        )
        for r, x, y in zip(lora, xs, ys):
            ax.annotate(
                f"r={r['rank']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        for i, r in enumerate(others):
            c = ("C0", "C1", "C3", "C4")[i % 4]
            ax.axhline(scale * r[key], color=c, ls="--", lw=1)
            ax.errorbar(
                [r["state_bytes"] / 1024],
                [scale * r[key]],
                yerr=[scale * r[std_key]],
                fmt="s",
                color=c,
                capsize=3,
                label=r["optimizer"],
            )
        ax.set(xscale="log", xlabel="optimizer state (KiB, log)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
