"""Tables and figures of the variant studies (``muonkit variants``), from their metrics files.

One row per optimizer (arm): state bytes, savings vs dense Muon, final train loss and test
accuracy over seeds, time per epoch, the test accuracy's difference to dense Muon by the
statistics layer (:mod:`muonlab.report.stats`: interval, test, n, verdict; these studies
tune no LR, so every seed reports); the caption says what the numbers are, the section below
it where and in which precision the runs ran (:mod:`muonlab.report.provenance`). Figures:
training curves and memory (``plots.plot_epoch_curves``), or accuracy and train loss against
state bytes for the rank sweep (``plots.plot_memory_tradeoff``).
"""

from __future__ import annotations

from pathlib import Path

from muonkit.registry import MUON, canonical_name

from .metrics import Run, group_runs, load_run, mean_std
from .plots import plot_epoch_curves, plot_memory_tradeoff
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
                kind=canonical_name(group[0].config["config"]["kind"]),  # of older records too
                rank=group[0].config["config"]["rank"],
                seeds=len(group),
                state_bytes=group[0].summary["optimizer_state_bytes"],
                test_accs=[e["test_acc"] for e in last],
                train_losses=[e["train_loss"] for e in last],
                test_acc=acc,
                test_acc_std=acc_std,
                train_loss=loss,
                train_loss_std=loss_std,
                train_acc=mean_std([e["train_acc"] for e in last])[0],
                epoch_time_s=mean_std([e["epoch_time_s"] for r in group for e in r.epochs])[0],
            )
        )
    dense = next((r["state_bytes"] for r in rows if r["kind"] == MUON), None)
    for row in rows:
        row["savings"] = None if not dense else 1 - row["state_bytes"] / dense
    groups = group_runs(runs)
    muon = next((groups[r["optimizer"]] for r in rows if r["kind"] == MUON), None)
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
    dataset = runs[0].config["config"]["study"]["dataset"]
    title = f"The {study} study: {dataset} MLP, LRs as given (untuned)"
    if study == "rank-sweep":
        plot_memory_tradeoff(rows, figure, title=title)
    else:
        plot_epoch_curves(group_runs(runs), rows, figure, title=title)
    return {"table": out / "table.md", "figure": figure, "runs": out / "runs"}
