"""The fine-tuning study's report: ``runs.jsonl``, ``report.md``, ``accuracy_vs_lr.png``,
``forgetting.png``.

Reads a `muonkit finetune-study` directory (layout: :mod:`muonlab.experiments.finetune_study`).
Every fine-tuning run that finished is one line of ``runs.jsonl``: its base and arm (from its
folder), what it ran (optimizer, state, LR scaling, momentum form, LoRA rank: from its config
record), its LR and seed, ``role`` (``tune``: the sweep's seed; ``report``: the other seeds,
trained at the arm's chosen LR), test accuracy, the base's validation loss before and after
(forgetting), the fine-tuning loss curves (validation; training every 10th step), the mean
update RMS of the trained matrices,
the path of its ``predictions.jsonl`` and the provenance of its first session. An arm counts
in the tables once its sweep chose an LR and every report seed at that LR finished; the
rest is listed as unfinished, never guessed. Means come with 95% t intervals over the report
seeds, and each arm is compared with the ``adamw`` arm on the same base seed by seed (same
seeds: same batches; paired), with a verdict, through :mod:`muonlab.report.stats`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from muonkit.registry import ADAMW, MUON

from .metrics import load_run, read_jsonl
from .provenance import provenance_section, study_provenance
from .records import find_records, finished_summary
from .stats import compare_runs, summarize
from .tables import markdown_table

REPORT = "report.md"
RUNS = "runs.jsonl"
CURVE_EVERY = 10  # the training-loss curve of runs.jsonl: every 10th step and the last
RUN_DIR = re.compile(r"ft/([\w-]+)/([\w.-]+)/lr([\d.e+-]+)-s(\d+)$")


def run_line(out: Path, metrics: Path, tune_seed: int) -> dict | None:
    """The ``runs.jsonl`` line of the fine-tuning run whose records are ``metrics``, or None
    while it has not finished."""
    match = RUN_DIR.search(metrics.parent.relative_to(out).as_posix())
    records = read_jsonl(metrics)
    if match is None or finished_summary(records) is None:
        return None
    base, arm, lr, seed = match[1], match[2], float(match[3]), int(match[4])
    run = load_run(metrics)
    config = run.config["config"]
    opts = config["optimizer_options"]
    muon = "muon_lr" in opts
    scored = [r for r in records if r.get("kind") == "task_eval"]
    source = [r for r in records if r.get("kind") == "source_val"]
    updates = [r["update_rms"] for r in records
               if r.get("kind") == "rms" and r.get("update_rms") is not None]
    predictions = metrics.parent / scored[-1]["predictions"]
    return {
        "base": base, "arm": arm, "optimizer": run.optimizer,
        "state": config["init_from"]["state"],
        "scaling": opts.get("lr_scaling") if muon else None,
        "momentum_form": opts.get("momentum_form") if muon else None,
        "lora_rank": config["lora"]["rank"], "lr": lr, "seed": seed,
        "role": "tune" if seed == tune_seed else "report",
        "accuracy": scored[-1]["accuracy"], "n_test": scored[-1]["n"],
        "source_val_loss_before": source[0]["source_val_loss"],
        "source_val_loss_after": source[-1]["source_val_loss"],
        "val_loss": run.val[-1]["val_loss"],
        "update_rms": float(np.mean(updates)) if updates else None,
        "loss_curve": [[r["step"], r["val_loss"]] for r in run.val],
        "train_loss_curve": [[r["step"], r["loss"]] for r in run.train
                             if r["step"] % CURVE_EVERY == 0 or r is run.train[-1]],
        "predictions": predictions.relative_to(out).as_posix(),
        "metrics": metrics.relative_to(out).as_posix(),
        "provenance": run.provenance[0] if run.provenance else None,
    }


def collect_runs(out: Path, tune_seed: int) -> list[dict]:
    """:func:`run_line` of every finished fine-tuning run under ``out``, in folder order."""
    lines = (run_line(out, m, tune_seed) for m in find_records(out, "ft/*/*/*/metrics.jsonl"))
    return [line for line in lines if line is not None]


def forgetting(line: dict) -> float:
    return line["source_val_loss_after"] - line["source_val_loss_before"]


@dataclass
class Arm:
    """One arm on one base: its chosen LR (None: its sweep has not finished) and its runs."""

    base: str
    name: str
    lr: float | None
    note: str
    tune: list[dict]
    report: list[dict]
    seeds: list[int]

    @property
    def finished(self) -> bool:
        return self.lr is not None and sorted(r["seed"] for r in self.report) == self.seeds


def arms_of(lines: list[dict], sweeps: dict, seeds: list[int]) -> list[Arm]:
    """Every (base, arm) that has a sweep entry or a run: by base, ``adamw`` first."""
    keys = {tuple(k.split("/")) for k in sweeps if not k.startswith("base/")}
    keys = sorted(keys | {(r["base"], r["arm"]) for r in lines},
                  key=lambda k: (k[0], k[1] != ADAMW, k[1]))
    arms = []
    for base, name in keys:
        sweep = sweeps.get(f"{base}/{name}", {})
        lr = sweep.get("best")
        runs = [r for r in lines if (r["base"], r["arm"]) == (base, name)]
        arms.append(Arm(base, name, lr, sweep.get("note", "sweep unfinished"),
                        [r for r in runs if r["role"] == "tune"],
                        [r for r in runs if r["role"] == "report" and r["lr"] == lr], seeds))
    return arms


def arm_table(arms: list[Arm]) -> str:
    """One row per finished arm: chosen LR, accuracy, forgetting, update RMS, and the accuracy
    difference from the ``adamw`` arm on the same base (:func:`muonlab.report.stats.
    compare_runs`: paired by report seed)."""
    adamw = {a.base: a for a in arms if a.name == ADAMW and a.finished}
    rows = []
    for a in arms:
        if not a.finished:
            continue
        ref = adamw.get(a.base)
        diff = "-"
        if ref is not None and a is not ref:
            diff = compare_runs(a.report, ref.report, lambda r: r["accuracy"],
                                higher_is_better=True).text()
        rms = [r["update_rms"] for r in a.report if r["update_rms"] is not None]
        rows.append([a.base, a.name, f"{a.lr:g}",
                     summarize([r["accuracy"] for r in a.report]).text(),
                     diff, summarize([forgetting(r) for r in a.report]).text(),
                     f"{np.mean(rms):.2e}" if rms else "-"])
    return markdown_table(["base", "arm", "LR", "test accuracy", "minus AdamW's",
                           "forgetting (source val loss change)", "update RMS"], rows)


def plot_accuracy_vs_lr(arms: list[Arm], path: Path) -> Path:
    """Tuning-seed accuracy vs LR, one panel per base, one line per arm; the report seeds'
    mean at the chosen LR as a marker with its interval."""
    plt = _pyplot()
    bases = sorted({a.base for a in arms})
    fig, axes = plt.subplots(1, max(1, len(bases)), figsize=(6 * max(1, len(bases)), 4.5),
                             squeeze=False)
    for ax, base in zip(axes[0], bases):
        for a in (a for a in arms if a.base == base):
            points = sorted((r["lr"], r["accuracy"]) for r in a.tune)
            if not points:
                continue
            (line,) = ax.plot(*zip(*points), marker="o", label=a.name)
            if a.finished:
                s = summarize([r["accuracy"] for r in a.report])
                err = 0 if s.n < 2 else [[s.mean - s.lo], [s.hi - s.mean]]  # (nan: no bar)
                ax.errorbar([a.lr], [s.mean], yerr=err, marker="*", markersize=12,
                            color=line.get_color(), capsize=3)
        ax.set(xscale="log", xlabel="fine-tuning LR (the arm's swept knob)",
               ylabel="test accuracy", title=f"{base} base")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_forgetting(arms: list[Arm], path: Path) -> Path:
    """Forgetting vs accuracy of every report run, one marker shape per base."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    names = list(dict.fromkeys(a.name for a in arms))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for a in arms:
        if a.report:
            ax.scatter([r["accuracy"] for r in a.report], [forgetting(r) for r in a.report],
                       marker="o" if a.base == ADAMW else "^",
                       color=colors[names.index(a.name) % len(colors)],
                       label=f"{a.base} base, {a.name}")
    ax.set(xlabel="test accuracy", ylabel="forgetting: source val loss after - before")
    ax.legend(fontsize=6)
    return _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from .plots import save

    return save(fig, path)


def base_lines(out: Path, sweeps: dict) -> list[str]:
    lines = []
    for base in (ADAMW, MUON):
        sweep = sweeps.get(f"base/{base}")
        if sweep is None:
            lines.append(f"- {base} base: its sweep has not finished.")
            continue
        loss = sweep["losses"][str(sweep["best"])]  # (JSON keys: the LRs' repr)
        lines.append(f"- {base} base: LR {sweep['best']:g}, final pretraining val loss "
                     f"{loss:.4f} ({out.name}/bases/{base}). {sweep['note']}")
    return lines


def arm_lines(out: Path, arms: list[Arm]) -> list[str]:
    """What each arm of the study is, from its ``arms.json``."""
    path = out / "arms.json"
    about = json.loads(path.read_text()) if path.exists() else {}
    return [f"- `{name}`: {about.get(name, '')}" for name in dict.fromkeys(a.name for a in arms)]


def build_finetune_report(out_dir: str | Path) -> dict[str, Path]:
    """Write ``runs.jsonl``, the figures and ``report.md`` of the study in ``out_dir``; returns
    their paths by name."""
    out = Path(out_dir)
    if not (out / "study.json").exists():
        raise FileNotFoundError(f"{out} holds no fine-tuning study (no study.json)")
    settings = json.loads((out / "study.json").read_text())
    path = out / "sweeps.json"
    sweeps = json.loads(path.read_text()) if path.exists() else {}
    lines = collect_runs(out, settings["tune_seed"])
    (out / RUNS).write_text("".join(json.dumps(line) + "\n" for line in lines))
    arms = arms_of(lines, sweeps, sorted(settings["report_seeds"]))
    paths = {"runs": out / RUNS,
             "accuracy_vs_lr": plot_accuracy_vs_lr(arms, out / "accuracy_vs_lr.png"),
             "forgetting": plot_forgetting(arms, out / "forgetting.png")}
    unfinished = [f"{a.base}/{a.name}" for a in arms if not a.finished]
    runs = [load_run(out / line["metrics"]) for line in lines]
    text = [
        "# Fine-tuning study: AdamW vs Muon on an AdamW- and a Muon-pretrained base", "",
        f"Corpus sha256 {settings['corpus_sha256']}; {len(lines)} finished fine-tuning runs; "
        f"test accuracy on {settings['task_test']} word problems (greedy exact match), "
        f"report seeds {settings['report_seeds']} at each arm's LR, chosen on seed "
        f"{settings['tune_seed']} by the fine-tuning validation loss.", "",
        "## Bases", "", *base_lines(out, sweeps), "",
        "## Arms (mean and 95% t interval over the report seeds)", "", *arm_lines(out, arms),
        "", arm_table(arms),
        "Unfinished: " + (", ".join(unfinished) if unfinished else "none") + ".", "",
        "## Sweeps", "",
        *[f"- {a.base}/{a.name}: {a.note}" for a in arms], "",
        "![accuracy vs LR](accuracy_vs_lr.png)", "", "![forgetting](forgetting.png)", "",
        provenance_section(study_provenance(runs, out)) if runs else "",
    ]
    (out / REPORT).write_text("\n".join(text) + "\n")
    return {**paths, "report": out / REPORT}
