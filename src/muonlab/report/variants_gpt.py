"""The GPT variant study's report: ``report.md``, ``memory.png`` and ``curves.png``.

Reads a `muonkit variants gpt` directory (the horizon study's layout at one horizon, loaded by
:func:`muonlab.report.horizon.load_study`): a contender counts only when its sweep has chosen
an LR and every seed's run at that LR has finished. Final val loss is the mean ± std over
seeds; state bytes are the runs' own measurements (``optimizer_state_bytes``, the tensors in
the optimizer's state at the end, and ``muon_state_bytes``, its Muon part); the difference to
dense Muon comes from the statistics layer over the report seeds (the sweep's seed, which tuned
the LRs, left out; :func:`muonlab.report.stats.compare_runs`).
"""

from __future__ import annotations

from pathlib import Path

from muonkit.registry import MUON

from .horizon import Cell, Study, cost_table, final_loss, load_study, sweep_lines
from .plots import plot_state_memory, plot_val_curves
from .provenance import commands_text
from .stats import MIN_REPORT_SEEDS, Comparison, compare_runs
from .tables import fmt_bytes, fmt_mean_std, markdown_table

REPORT = "report.md"
DENSE = MUON
OPTION_KEYS = ("rank", "mixing", "gamma1")


def finished_cells(study: Study) -> list[Cell]:
    """The finished contenders, largest total optimizer state first."""
    h = study.horizons[0]
    cells = [c for name in study.names() if (c := study.ready(h, name))]
    return sorted(cells, key=lambda c: (-state_bytes(c)[1], c.name))


def state_bytes(cell: Cell) -> tuple[int, int]:
    """(Muon part, total) of the seed runs' measured optimizer-state bytes (the same for
    every seed: the shapes do not depend on the data; the first run's)."""
    summary = cell.runs[0].summary
    return int(summary.get("muon_state_bytes", 0)), int(summary["optimizer_state_bytes"])


def describe(cell: Cell) -> str:
    """The run's optimizer kind and the options that tell the variants apart."""
    run = cell.runs[0]
    options = run.config.get("config", {}).get("optimizer_options", {})
    extra = ", ".join(f"{k} {options[k]}" for k in OPTION_KEYS if k in options)
    return run.optimizer + (f" ({extra})" if extra else "")


def versus_dense(study: Study, cell: Cell, dense: Cell) -> Comparison:
    """The final val loss of ``cell`` minus dense Muon's over the report seeds (the sweeps'
    seed, :attr:`Study.tuning_seed`, left out)."""
    return compare_runs(cell.runs, dense.runs, final_loss, higher_is_better=False,
                        tuning_seeds=(study.tuning_seed,))


def difference(study: Study, cell: Cell, dense: Cell | None) -> str:
    """:func:`versus_dense` printed: interval, test, n and verdict."""
    if dense is None:
        return "dense Muon unfinished"
    if cell.name == dense.name:
        return "reference"
    return versus_dense(study, cell, dense).text()


def results_table(study: Study) -> str:
    dense = study.ready(study.horizons[0], DENSE)
    rows = []
    for cell in finished_cells(study):
        muon, total = state_bytes(cell)
        sweep = study.sweeps.get(str(cell.horizon), {}).get(cell.name, {})
        lr = f"{cell.lr:g}" + (f" (AdamW part {sweep['aux_lr']:g})" if sweep.get("aux_lr") else "")
        if sweep.get("edge"):
            lr += f", at the {sweep['edge']} edge of its sweep"
        rows.append([
            cell.name, describe(cell), lr, fmt_mean_std(*cell.final, 3, len(cell.runs)),
            fmt_bytes(muon) if muon else "-", fmt_bytes(total), difference(study, cell, dense),
        ])
    headers = ["contender", "optimizer", "chosen LR", "final val loss (every seed)",
               "state: Muon part", "state: total",
               "minus dense Muon, report seeds [95% CI], test, n: verdict"]
    return markdown_table(headers, rows)


def unfinished(study: Study) -> list[str]:
    h = study.horizons[0]
    return [n for n in study.names() if study.ready(h, n) is None]


def report_markdown(study: Study, figures: dict[str, Path]) -> str:
    s = study.settings
    names, missing = study.names(), unfinished(study)
    status = ("complete" if not missing else
              f"**unfinished**: {len(names) - len(missing)} of {len(names)} contenders finished "
              f"(missing: {', '.join(missing)})")
    parts = [
        "# Memory-saving Muon variants on the tiny GPT\n",
        f"Status: {status}; {study.runs_done} of {study.runs_started} started runs finished.\n",
        f"Model preset `{s['preset']}`, data `{s['data']}`, {s['batch_size']} sequences per "
        f"step, {s['horizons'][0]} steps (warmup {s['warmup_frac']:.0%}, cosine to "
        f"{s['min_lr_ratio']} x peak, Muon momentum warmup {s['momentum_warmup_frac']:.0%}), "
        f"seeds {s['seeds']}. Every Muon-family contender is the Muon part of the same hybrid "
        "(AdamW on embeddings, head, norms and biases at the LR AdamW's sweep chose). Each "
        f"contender's LR: a {s['grid_points']}-point factor-2 sweep (seed {s['seeds'][0]}, full "
        f"length, extended past an edge up to {s['sweep_extend']} points), then the other seeds "
        "at the chosen LR.\n",
        study.hardware(),
        "## Final validation loss and optimizer state\n", results_table(study),
        "Final val loss: mean ± std over every seed at the chosen LR. State: bytes of the "
        "tensors in the optimizer's state at the end of a run (Muon part: those of the hidden "
        "matrices; total: with the AdamW part and AdamW's step counters). Difference to dense "
        f"Muon: over the report seeds (seed {s['seeds'][0]}, which tuned the LRs, left out), "
        "paired t by seed (same initial weights and batches) with its 95% interval, and the "
        f"verdict (lower is better; ahead or behind only when the interval excludes 0 with >= "
        f"{MIN_REPORT_SEEDS} report seeds). A chosen LR at an edge of its sweep (after the "
        "extension cap) may not be the best one.\n",
        "## Sweeps\n", "\n".join(sweep_lines(study)) + "\n",
        "## Wall-clock and throughput\n", cost_table(study),
        "Mean over the seeds at the chosen LR, one process per run at its `--threads`; per-step "
        "times depend on what else the machine ran meanwhile.\n",
        "## Commands\n", commands_text(study.commands, study.started, study.out),
        "Figures: " + ", ".join(f"`{p.name}`" for p in figures.values()) + ".\n",
    ]
    return "\n".join(parts)


def build_report(out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``memory.png`` and ``curves.png`` of a GPT variant study."""
    out = Path(out_dir)
    if not (out / "study.json").exists():
        raise FileNotFoundError(f"{out} has no study.json; is it a `muonkit variants gpt` "
                                "directory?")
    study = load_study(out)
    title = (f"{out.name}: memory-saving variants on the tiny GPT, {study.horizons[0]} steps, "
             "every LR tuned")
    figures = {"memory": plot_state_memory(finished_cells(study), state_bytes,
                                           out / "memory.png", title, study.tuning_seed),
               "curves": plot_val_curves(study, out / "curves.png")}
    report = out / REPORT
    report.write_text(report_markdown(study, figures))
    return {"report": report, **figures}
