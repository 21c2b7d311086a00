"""Report of the tuned variant study (``muonkit variants tuned``), from its files only.

``report.md``: the settings, one table per arm set (all arms, then each untuned study's arms
and the mixing ablation) with state bytes, the chosen LR, final test accuracy and loss (mean
+- std over every seed) and the difference to dense Muon over the report seeds (``seeds[0]``,
which tuned the LRs, left out) by the statistics layer (:mod:`muonlab.report.stats`: interval,
test, n, verdict); the mixing-vs-compression differences; every sweep
(each LR's held-out loss and accuracy, the choice, the extensions). Figures: accuracy
against state bytes (the rank sweep) and the curves of the ``large`` arms.
"""

from __future__ import annotations

import json
from pathlib import Path

from muonkit import registry
from muonkit.registry import ADAMW, MUON, canonical_name

from .metrics import Run, load_run, mean_std
from .plots import plot_epoch_curves, plot_memory_tradeoff
from .provenance import provenance_section, study_provenance
from .records import find_records, records_exist
from .stats import MIN_REPORT_SEEDS, NOT_RESOLVED, Comparison, compare_runs
from .tables import fmt_bytes, markdown_table

REFERENCE = MUON  # the slug every difference is taken against
# (label, a, b): the mixing ablation's paired differences a - b
ABLATION_PAIRS = (
    ("mixing, dense", "muon-gh", MUON),
    ("mixing, LoRA-Pre full rank", "{full}-gh", "{full}"),
    ("mixing, LoRA-Pre low rank", "{low}-gh", "{low}"),
    ("compression (full-rank LoRA-Pre - dense), default mixing", "{full}", MUON),
    ("compression (full-rank LoRA-Pre - dense), gradient-heavy", "{full}-gh", "muon-gh"),
    ("compression (low-rank - full-rank LoRA-Pre), default mixing", "{low}", "{full}"),
)


def load_study(out: Path) -> dict:
    """Settings, arms, groups, sweeps and, per arm slug, the finished runs at its chosen LR."""
    study = json.loads((out / "study.json").read_text())
    arms = json.loads((out / "arms.json").read_text())
    path = out / "sweeps.json"
    sweeps = json.loads(path.read_text()) if path.exists() else {}
    runs = {}
    for arm in arms["arms"]:
        if arm["slug"] in sweeps:
            best = sweeps[arm["slug"]]["best"]
            paths = [out / "runs" / arm["slug"] / f"lr{best:g}-s{s}" / "metrics.jsonl"
                     for s in study["seeds"]]
            found = [load_run(p) for p in paths if records_exist(p)]
            runs[arm["slug"]] = [r for r in found if r.summary is not None]
    # an older study's kinds read as the registry's names; its slugs stay (its directories)
    kinds = [dict(arm, kind=canonical_name(arm["kind"])) for arm in arms["arms"]]
    return dict(study=study, arms=kinds, groups=arms["groups"], sweeps=sweeps, runs=runs)


def final(run: Run, key: str) -> float:
    return float(run.val[-1][key])


def arm_rows(s: dict) -> dict[str, dict]:
    """{slug: row} for every arm with finished runs: the numbers of the tables and figures."""
    rows = {}
    for arm in s["arms"]:
        group = s["runs"].get(arm["slug"])
        if not group:
            continue
        row = dict(arm, optimizer=arm["label"], seeds=[r.seed for r in group],
                   state_bytes=group[0].summary["optimizer_state_bytes"],
                   lr=s["sweeps"][arm["slug"]]["best"], edge=s["sweeps"][arm["slug"]]["edge"])
        for key in ("test_acc", "test_loss"):
            row[key], row[key + "_std"] = mean_std([final(r, key) for r in group])
        row["test_accs"] = [final(r, "test_acc") for r in group]
        row["train_losses"] = [r.epochs[-1]["train_loss"] for r in group]
        row["train_loss"], row["train_loss_std"] = mean_std(row["train_losses"])
        row["by_seed"] = {r.seed: {k: final(r, k) for k in ("test_acc", "test_loss")}
                          for r in group}
        rows[arm["slug"]] = row
    return rows


def difference(a: dict, b: dict, key: str, tuning_seeds: list[int]) -> Comparison:
    """Row ``a`` minus row ``b`` for ``key`` (test accuracy: higher is better; test loss:
    lower) over their report seeds (:func:`muonlab.report.stats.compare_runs`)."""
    def records(row):
        return [{"seed": seed, **values} for seed, values in row["by_seed"].items()]

    return compare_runs(records(a), records(b), lambda r: r[key],
                        higher_is_better=key == "test_acc", tuning_seeds=tuning_seeds)


def fmt_difference(a: dict, b: dict | None, key: str, tuning_seeds: list[int]) -> str:
    """The printed comparison (accuracy in percentage points), "n/a" without a reference."""
    if b is None or a is b:
        return "n/a"
    scale, digits = (100, 2) if key == "test_acc" else (1, 4)
    return difference(a, b, key, tuning_seeds).text(digits, scale)


def results_table(rows: dict, slugs: list[str], tuning_seeds: list[int]) -> str:
    ref = rows.get(REFERENCE)
    cells = []
    for slug in slugs:
        if slug not in rows:
            continue
        r = rows[slug]
        savings = ("n/a" if ref is None
                   else f"{100 * (1 - r['state_bytes'] / ref['state_bytes']):.1f}%")
        lr = f"{r['lr']:g}" + (f" (at the {r['edge']} edge)" if r["edge"] else "")
        cells.append([r["label"], f"{r['state_bytes']} ({fmt_bytes(r['state_bytes'])})",
                      savings, lr, len(r["seeds"]),
                      f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_std']:.2f}",
                      f"{r['test_loss']:.4f} ± {r['test_loss_std']:.4f}",
                      fmt_difference(r, ref, "test_acc", tuning_seeds),
                      fmt_difference(r, ref, "test_loss", tuning_seeds)])
    headers = ["optimizer", "state bytes", "savings vs Muon", "chosen LR", "seeds",
               "test acc % (mean ± std)", "test loss (mean ± std)",
               "Δ acc vs Muon, pp [95% CI], test, n: verdict",
               "Δ loss vs Muon [95% CI], test, n: verdict"]
    return markdown_table(headers, cells)


def ablation_table(rows: dict, groups: dict, tuning_seeds: list[int],
                   arms: list[dict]) -> str:
    """The paired differences that separate mixing from compression."""
    low_rank = {a["slug"] for a in arms if registry.get(a["kind"]).takes_rank}
    lora = [g for g in groups["mixing ablation"] if g in low_rank and "-gh" not in g]
    names = {"full": lora[0], "low": lora[-1]}
    cells = []
    for label, a, b in ABLATION_PAIRS:
        a, b = a.format(**names), b.format(**names)
        if a in rows and b in rows:
            cells.append([label, f"{rows[a]['label']} − {rows[b]['label']}",
                          fmt_difference(rows[a], rows[b], "test_acc", tuning_seeds),
                          fmt_difference(rows[a], rows[b], "test_loss", tuning_seeds)])
    headers = ["effect", "difference", "Δ test acc, pp [95% CI], test, n: verdict",
               "Δ test loss [95% CI], test, n: verdict"]
    return markdown_table(headers, cells)


def sweep_section(s: dict) -> str:
    """Per arm: every LR tried on the first seed with its final held-out loss and accuracy
    and test accuracy, the choice and the note on extensions/edges."""
    parts = []
    for arm in s["arms"]:
        sweep = s["sweeps"].get(arm["slug"])
        if sweep is None:
            parts.append(f"**{arm['label']}**: sweep not finished.\n")
            continue
        cells = []
        for lr_text, loss in sorted(sweep["losses"].items(), key=lambda kv: float(kv[0])):
            lr = float(lr_text)
            path = (Path(s["out"]) / "runs" / arm["slug"] / f"lr{lr:g}-s{s['study']['seeds'][0]}"
                    / "metrics.jsonl")
            run = load_run(path) if records_exist(path) else None
            accs = ("n/a", "n/a") if run is None or not run.val or loss == float("inf") else (
                f"{100 * final(run, 'val_acc'):.2f}", f"{100 * final(run, 'test_acc'):.2f}")
            mark = " (chosen)" if lr == sweep["best"] else (
                " (added)" if lr in sweep["added"] else "")
            cells.append([f"{lr:g}{mark}", "diverged" if loss == float("inf") else f"{loss:.4f}",
                          *accs])
        table = markdown_table(["LR", "held-out loss", "held-out acc %", "test acc %"], cells)
        parts.append(f"**{arm['label']}** ({sweep['note']})\n\n{table}")
    return "\n".join(parts)


def hardware(out: Path) -> str:
    """The hardware, precision and CPU time of every run under ``out/runs`` (sweeps and
    seeds, finished or not), from their records."""
    runs = [load_run(p) for p in find_records(out, "runs/*/*/metrics.jsonl")]
    return provenance_section(study_provenance(runs, out))


def settings_text(s: dict, input_dim: int) -> str:
    """The study's settings, how the LRs were chosen, the statistics."""
    st = s["study"]
    sizes = " -> ".join(str(n) for n in (input_dim, *st["hidden"], 10))
    return (
        f"{st['dataset']}, MLP {sizes} (no biases), epochs: {st['epochs']}, batch "
        f"{st['batch_size']}, cosine decay to 10%, no clipping, Muon-family momentum "
        f"{st['momentum']}; seeds {', '.join(map(str, st['seeds']))}. The last "
        f"{st['val_size']} training examples are held out"
        f"{' (of the first ' + str(st['train_limit']) + ')' if st['train_limit'] else ''} and "
        f"the rest train; the test set is only reported.\n\n"
        f"**How each LR was chosen.** Edge-aware factor-2 sweep per arm: {st['grid_points']} "
        f"LRs centred on {st['lr']:g} (Muon family) / {st['adamw_lr']:g} (AdamW), extended by "
        f"one factor-2 step past an edge while the best sits there, at most "
        f"{st['sweep_extend']} points per side; seed {st['seeds'][0]} at full length. The "
        f"choice is the lowest final **held-out cross-entropy**: a continuous measure, less "
        f"coarse than accuracy on {st['val_size']} examples, and never the test set. The "
        f"other seeds train at the chosen LR; the sweep's run is seed {st['seeds'][0]}'s run.\n\n"
        f"**Statistics.** Test accuracy and loss after the last epoch, mean ± sample std over "
        f"every seed; Δ: the difference to dense Muon over the report seeds (seed "
        f"{st['seeds'][0]}, which tuned the LRs, left out), paired by seed (same initialization "
        f"and batch order), mean and two-sided 95% t-interval, n, and the verdict of the "
        f"statistics layer: ahead or behind only when the interval excludes 0 with >= "
        f"{MIN_REPORT_SEEDS} report seeds, else not resolved.\n"
    )


def findings(rows: dict, tuning_seeds: list[int]) -> str:
    """Which arms' chosen LR still sits at a grid edge, and the verdicts of the differences to
    dense Muon (test accuracy, test loss)."""
    lines = []
    edges = [f"{r['label']} ({r['lr']:g}, {r['edge']})" for r in rows.values() if r["edge"]]
    lines.append("**Chosen LR still at an edge of its grid** (the optimum may lie beyond): "
                 + (", ".join(edges) if edges else "none") + ".")
    ref = rows.get(REFERENCE)
    for key, name in (("test_acc", "test accuracy"), ("test_loss", "test loss")):
        resolved = []
        for slug, r in rows.items():
            c = difference(r, ref, key, tuning_seeds) if ref and slug != REFERENCE else None
            if c is not None and c.verdict != NOT_RESOLVED:
                resolved.append(f"{r['label']} ({c.verdict})")
        lines.append(f"**Arms resolved against dense Muon ({name})**: "
                     + (", ".join(resolved) + "; every other arm is not resolved" if resolved
                        else "none: every arm is not resolved") + ".")
    return "\n\n".join(lines)


def write_report(out: str | Path, input_dim: int) -> dict[str, Path]:
    """``report.md`` and the figures of the tuned study in ``out`` (an MLP on ``input_dim``
    inputs)."""
    out = Path(out)
    s = load_study(out) | {"out": str(out)}
    rows = arm_rows(s)
    groups = s["groups"]
    tuned = s["study"]["seeds"][:1]  # the sweep's seed: it chose the LRs
    figures = {"tradeoff": out / "tradeoff.png", "curves": out / "curves.png"}
    sweep = [g for g in groups["rank-sweep"] if g in rows]
    adamw = [ADAMW] if ADAMW in rows and ADAMW not in sweep else []
    sweep_rows = [rows[g] for g in adamw + sweep]
    if sweep:  # the rank sweep with AdamW's line
        plot_memory_tradeoff(sweep_rows, figures["tradeoff"],
                             title="MNIST, every LR tuned: the LoRA-Pre rank sweep")
    large = [rows[g] for g in groups["large"] if g in rows]
    if large:
        plot_epoch_curves({r["label"]: s["runs"][r["slug"]] for r in large}, large,
                          figures["curves"], title="MNIST, every LR tuned: the large arms")
    text = [f"# Memory-saving Muon variants, every LR tuned ({s['study']['dataset']})\n",
            "Written by `muonkit variants tuned` from the files in this folder.\n",
            settings_text(s, input_dim), hardware(out), "## Summary\n", findings(rows, tuned),
            "\n## All arms\n", results_table(rows, list(rows), tuned)]
    for name, slugs in groups.items():
        text += [f"\n## {name}\n", results_table(rows, slugs, tuned)]
    text += ["\n## Mixing vs compression\n",
             "Each row is a paired difference (same seeds); 'gradient-heavy' is LoRA-Pre's "
             "printed mixing `g + mu * EMA(g)`, the default `momentum_form` is Muon's.\n",
             ablation_table(rows, groups, tuned, s["arms"]), "\n## LR sweeps (first seed)\n",
             sweep_section(s),
             "\n## Figures\n", "![accuracy against state](tradeoff.png)\n",
             "![curves of the large arms](curves.png)\n"]
    (out / "report.md").write_text("\n".join(text))
    return {"report": out / "report.md", **{k: v for k, v in figures.items() if v.exists()}}
