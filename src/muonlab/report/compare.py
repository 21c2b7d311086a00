"""The AdamW-vs-Muon report: ``report.md`` and ``curves.png`` from a compare directory.

Layout read (written by :mod:`muonlab.experiments.compare`)::

    OUT/runs/<optimizer>-s<seed>/metrics.jsonl   the compared runs (one per optimizer and seed)
    OUT/sweep/<name>/metrics.jsonl               the LR sweep, if one was run
    OUT/sweep-full/<name>/metrics.jsonl          its best settings rerun at full length
    OUT/settings.json                            how the experiment was launched

Every number in the report is computed here from those files; the hardware, precision and CPU
time of the runs by :mod:`muonlab.report.provenance`; every comparison of the optimizers by the
statistics layer (:mod:`muonlab.report.stats`) over the report seeds: the seed the sweep tuned
on is left out.
"""

from __future__ import annotations

import json
from pathlib import Path

from muonkit.registry import ADAMW

from .metrics import (
    Run,
    common_val_steps,
    find_runs,
    group_runs,
    mean_std,
    milestones,
    steps_to_reach,
    val_loss_at,
)
from .ns_cost import gpt_step_flops
from .plots import plot_loss_curves, val_stats
from .provenance import provenance_section, study_provenance
from .stats import Summary, compare_runs, report_runs, summarize
from .tables import fmt_bytes, fmt_mean_std, markdown_table

REPORT = "report.md"
CURVES = "curves.png"


def final_val_losses(runs: list[Run]) -> list[float]:
    return [float(r.val[-1]["val_loss"]) for r in runs]


def compare_numbers(groups: dict[str, list[Run]], tuning_seeds: tuple[int, ...] = ()) -> dict:
    """The report's figures: milestones, finals, steps-to-reach and costs per optimizer (over
    every seed), and, over the report seeds (``tuning_seeds`` left out), each optimizer's
    final :class:`Summary` and each other optimizer's comparisons with the first."""
    all_runs = [r for runs in groups.values() for r in runs]
    total = max(int(r.config["config"]["steps"]) for r in all_runs)
    steps = milestones(common_val_steps(all_runs), total)
    numbers: dict = {"total_steps": total, "milestones": steps, "optimizers": {},
                     "tuning_seeds": tuning_seeds}
    for name, runs in groups.items():
        summaries = [r.summary or {} for r in runs]
        numbers["optimizers"][name] = {
            "seeds": [r.seed for r in runs],
            "val_at": {s: mean_std([val_loss_at(r, s) for r in runs]) for s in steps},
            "final": mean_std(final_val_losses(runs)),
            "tokens_per_s": mean_std([s.get("tokens_per_s", 0.0) for s in summaries]),
            "step_time_s": mean_std([s.get("step_time_s", 0.0) for s in summaries]),
            "optimizer_state_bytes": max(s.get("optimizer_state_bytes", 0) for s in summaries),
            "peak_mem_bytes": max(s.get("peak_mem_bytes", 0) for s in summaries),
            "train_time_s": mean_std([r.train[-1]["elapsed_s"] for r in runs]),
            "ns_flops": gpt_step_flops(runs[0].config, summaries[0].get("device", "cpu")),
        }
    reach = {}
    for a, runs_a in groups.items():
        vsteps, vmean, _, _ = val_stats(runs_a)
        for b in groups:
            if a != b:
                target = numbers["optimizers"][b]["final"][0]
                reach[(a, b)] = steps_to_reach(vsteps, vmean, target)
    numbers["reach"] = reach
    numbers["report_finals"] = {name: report_summary(runs, tuning_seeds)
                                for name, runs in groups.items()}
    first, *others = groups
    numbers["versus"] = {name: versus(groups[name], groups[first], steps, tuning_seeds)
                         for name in others}
    return numbers


def report_summary(runs: list[Run], tuning_seeds: tuple[int, ...]) -> Summary | None:
    """The final val loss over the report seeds (None when every run tuned)."""
    report = list(report_runs(runs, tuning_seeds).report)
    return summarize(final_val_losses(report)) if report else None


def versus(a: list[Run], b: list[Run], steps: list[int],
           tuning_seeds: tuple[int, ...]) -> dict:
    """{step: val loss of ``a`` - ``b`` at that step, "final": at each run's end}, each a
    :class:`muonlab.report.stats.Comparison` over the report seeds (lower is better)."""
    def at(step):
        return lambda r: val_loss_at(r, step)

    out: dict = {s: compare_runs(a, b, at(s), False, tuning_seeds) for s in steps}
    out["final"] = compare_runs(a, b, lambda r: float(r.val[-1]["val_loss"]), False,
                                tuning_seeds)
    return out


def milestone_table(numbers: dict) -> str:
    names = list(numbers["optimizers"])
    headers = ["step", "% of run"] + [f"{n} val loss (every seed)" for n in names]
    headers += [f"{n} - {names[0]} [95% CI], report seeds" for n in names[1:]]
    rows = []
    for s in numbers["milestones"]:
        row = [s, f"{100 * s / numbers['total_steps']:.0f}%"]
        vals = [numbers["optimizers"][n]["val_at"][s] for n in names]
        row += [
            fmt_mean_std(m, sd, 3, len(numbers["optimizers"][n]["seeds"]))
            for n, (m, sd) in zip(names, vals)
        ]
        row += [numbers["versus"][n][s].text() for n in names[1:]]
        rows.append(row)
    return markdown_table(headers, rows)


def reach_lines(numbers: dict) -> list[str]:
    lines = []
    for (a, b), step in numbers["reach"].items():
        target = numbers["optimizers"][b]["final"][0]
        total = numbers["total_steps"]
        if step is None:
            lines.append(
                f"- {a} never reaches {b}'s final val loss ({target:.3f}) in {total} steps."
            )
        else:
            lines.append(
                f"- {a} reaches {b}'s final val loss ({target:.3f}) at step {step:.0f} "
                f"({100 * step / total:.0f}% of {b}'s {total} steps)."
            )
    return lines


def cost_table(numbers: dict) -> str:
    headers = [
        "optimizer",
        "seeds",
        "final val loss",
        "tokens/s",
        "ms/step",
        "train time (s)",
        "optimizer state",
        "peak memory",
        "NS / fwd+bwd FLOPs",
    ]
    rows = []
    for name, o in numbers["optimizers"].items():
        n = len(o["seeds"])
        rows.append(
            [
                name,
                " ".join(str(s) for s in o["seeds"]),
                fmt_mean_std(*o["final"], 3, n),
                f"{o['tokens_per_s'][0]:,.0f}",
                f"{1000 * o['step_time_s'][0]:.1f}",
                f"{o['train_time_s'][0]:.0f}",
                fmt_bytes(o["optimizer_state_bytes"]),
                fmt_bytes(o["peak_mem_bytes"]),
                fmt_ns_fraction(o.get("ns_flops")),
            ]
        )
    return markdown_table(headers, rows)


def fmt_ns_fraction(ns: dict | None) -> str:
    if ns is None:
        return "-"
    return f"{ns['fraction']:.0%} ({ns['ns'] / 1e9:.2f} / {ns['model'] / 1e9:.2f} GFLOP)"


def sweep_table(sweep: list[Run], chosen: dict) -> str:
    """Every sweep run: its LRs, length and final val loss; the chosen setting marked."""
    rows = []
    for run in sorted(sweep, key=lambda r: (r.optimizer, sweep_lrs(r), r.path.parent.parent.name)):
        lr, aux = sweep_lrs(run)
        pick = chosen.get(run.optimizer, {})
        picked = (lr == pick.get("lr" if run.optimizer == ADAMW else "muon_lr")
                  and (aux is None or aux == pick.get("aux_lr", aux)))
        rows.append([
            run.optimizer,
            f"{lr:g}",
            "" if aux is None else f"{aux:g}",
            run.config["config"]["steps"],
            f"{run.val[-1]['val_loss']:.3f}" if run.summary else "diverged",
            "**chosen**" if picked else "",
        ])
    return markdown_table(
        ["optimizer", "lr (Muon's for the hybrid)", "aux lr", "steps", "final val loss", ""],
        rows,
    )


def sweep_lrs(run: Run) -> tuple[float, float | None]:
    """(the LR a sweep run varied, the hybrid's aux AdamW LR or None): Muon's matrix lr and
    the AdamW groups' lr for the hybrid, AdamW's lr otherwise."""
    opts = run.config["config"].get("optimizer_options", {})
    if run.optimizer != ADAMW:  # a hybrid
        return float(opts["muon_lr"]), float(opts["lr"])
    return float(opts["lr"]), None


def sweep_notes(settings: dict) -> list[str]:
    """One line per sweep stage (edge extensions, edges left) and the full-length reruns."""
    lines = []
    for optimizer, stages in settings.get("sweeps", {}).items():
        if optimizer.endswith("_full"):
            runs = ", ".join(f"{s['name']} {s['val_loss']:.3f}" for s in stages)
            lines.append(f"- {optimizer[:-5]}: the best settings rerun at full length: {runs}; "
                         "the best of these was chosen and is its seed's compared run.")
            continue
        for stage in stages:
            initial = ", ".join(f"{v:g}" for v in stage["initial"])
            lines.append(f"- {optimizer} `{stage['param']}` over [{initial}]: {stage['note']}")
    return lines


def machine_lines(settings: dict) -> list[str]:
    """Threads, load average at start and end, CPU and its timing flags."""
    start, end = settings.get("machine_start"), settings.get("machine_end")
    if not start:
        return []
    flags = ", ".join(start.get("cpu_flags", [])) or "none of the tracked ones"
    return [
        f"- machine: {start.get('cpu')}, {start.get('logical_cores')} logical cores, CPU flags "
        f"that matter for timing: {flags}; torch {start.get('torch')}",
        f"- {settings.get('threads_per_run')} torch thread(s) per run, "
        f"{settings.get('jobs', 1)} run(s) at a time; 1-minute load average "
        f"{start.get('load_1min')} at the start, {(end or {}).get('load_1min')} at the end",
    ]


def settings_lines(groups: dict[str, list[Run]], settings: dict) -> list[str]:
    first = next(iter(groups.values()))[0].config["config"]
    model = first.get("model", {})
    data = first.get("data", {})
    tokens_per_step = first.get("batch_size", 0) * model.get("block_size", 0) * first["grad_accum"]
    lines = [
        f"- model: preset `{first.get('preset')}` ({first.get('params', 0):,} parameters; "
        f"{model.get('n_layer')} layers, {model.get('n_head')} heads, width {model.get('n_embd')},"
        f" context {model.get('block_size')})",
        f"- data: {data.get('source')} ({data.get('tokenizer')} tokens, vocab "
        f"{data.get('vocab_size')}, {data.get('train_tokens', 0):,} train / "
        f"{data.get('val_tokens', 0):,} val tokens)",
        f"- budget: {first['steps']} steps x {first.get('batch_size')} sequences x "
        f"{model.get('block_size')} tokens x {first['grad_accum']} accumulation = "
        f"{tokens_per_step:,} tokens/step, the same data order for both optimizers per seed",
        f"- schedule: {first['warmup_steps']} warmup steps, {first['decay']} decay to "
        f"{first['min_lr_ratio']} x peak, grad clip {first['grad_clip']}",
        f"- validation: {first.get('eval_batches')} fixed batches every "
        f"{first['eval_every']} steps",
    ]
    for name, runs in groups.items():
        cfg = runs[0].config["config"]
        opts = ", ".join(f"{k}={v}" for k, v in cfg.get("optimizer_options", {}).items())
        if cfg.get("momentum_warmup_steps"):
            opts += (
                f"; Muon momentum {cfg['momentum_start']} -> {cfg['momentum_end']} over "
                f"{cfg['momentum_warmup_steps']} steps"
            )
        lines.append(f"- {name} options: {opts}")
    if settings.get("command"):
        lines.append(f"- command: `{settings['command']}`")
    if settings.get("environment"):
        lines.append(f"- environment: {settings['environment']}")
    return lines + machine_lines(settings)


def tuning_seeds(sweep: list[Run]) -> tuple[int, ...]:
    """The seeds the LR sweep trained on: they chose the LRs, so they are not reported on."""
    return tuple(sorted({r.seed for r in sweep}))


def final_lines(numbers: dict) -> str:
    """Each optimizer's final val loss over the report seeds and each comparison with the
    first optimizer (:mod:`muonlab.report.stats`)."""
    tuned = numbers["tuning_seeds"]
    left_out = (f"; seed {', '.join(map(str, tuned))} tuned the LRs and is left out"
                if tuned else "")
    finals = "; ".join(
        f"{n} {s.text()}" if s else f"{n}: no report seeds"
        for n, s in numbers["report_finals"].items())
    first = next(iter(numbers["optimizers"]))
    lines = [f"Final validation loss over the report seeds (mean [95% t interval]{left_out}): "
             f"{finals}.\n"]
    lines += [f"- {n} - {first}, final val loss (lower is better): {v['final'].text()}"
              for n, v in numbers["versus"].items()]
    return "\n".join(lines) + "\n"


def compare_markdown(groups: dict[str, list[Run]], sweep: list[Run], settings: dict,
                     out: Path) -> str:
    """The report of the compared runs ``groups`` and the ``sweep`` runs under ``out``."""
    numbers = compare_numbers(groups, tuning_seeds(sweep))
    names = list(groups)
    parts = [f"# {' vs '.join(names)}\n", final_lines(numbers)]
    parts.append("## Validation loss at milestones\n")
    parts.append(milestone_table(numbers))
    parts.append("## Steps to reach the other's final loss\n")
    parts.append("\n".join(reach_lines(numbers)) + "\n")
    parts.append("(mean val curve over seeds, interpolated linearly between evaluations)\n")
    parts.append("## Cost\n")
    parts.append(cost_table(numbers))
    parts.append(
        "tokens/s and ms/step leave out each run's first step (warm-up); optimizer state is "
        "measured from the optimizer's state tensors; peak memory is the run's peak RSS on "
        "CPU (each run its own process unless compare ran with --no-isolate) or "
        "max_memory_allocated on CUDA. `NS / fwd+bwd FLOPs`: Newton-Schulz matrix-product "
        "FLOPs per optimizer step over the model's forward+backward FLOPs per step "
        "(6 N + 12 L C T per token, `muonlab.report.ns_cost`); it falls with width / "
        "tokens per step, so a Muon step's overhead shrinks on larger models and batches.\n"
    )
    if len(names) == 2:
        t0, t1 = (numbers["optimizers"][n]["step_time_s"][0] for n in names)
        parts.append(
            f"A {names[1]} training step takes {t1 / t0:.2f}x the wall-clock of an "
            f"{names[0]} step on this device (same model and batch).\n"
        )
    if sweep:
        parts.append("## Learning-rate sweep\n")
        parts.append(
            "Each optimizer was tuned first on a shorter run (seed "
            f"{sweep[0].seed}); the compare uses each one's best LR. For the Muon hybrid the "
            "sweep varies the Muon (matrix) LR and, if asked, the LR of its AdamW (aux) groups"
            + ("; grids are factor-2 and are extended past an edge when the best sits there.\n"
               if "sweeps" in settings else ".\n")
        )
        chosen = settings.get("chosen") or {  # files written before the aux LR existed
            k: {"lr" if k == ADAMW else "muon_lr": v}
            for k, v in settings.get("chosen_lr", {}).items()
        }
        parts.append(sweep_table(sweep, chosen))
        notes = sweep_notes(settings)
        if notes:
            parts.append("\n".join(notes) + "\n")
    parts.append(hardware(groups, sweep, out))
    parts.append("## Settings\n")
    parts.append("\n".join(settings_lines(groups, settings)) + "\n")
    parts.append(
        f"Figures: `{CURVES}`. Every number above is computed from the `metrics.jsonl` files "
        "under `runs/` (and `sweep/`) by `muonkit report` from this directory.\n"
    )
    return "\n".join(parts)


def load_compare(out: Path) -> tuple[dict[str, list[Run]], list[Run]]:
    """(the compared runs by optimizer, the sweep runs) of a compare directory; an
    incomplete compared run is an error."""
    runs_dir = out / "runs"
    if not runs_dir.is_dir():
        raise FileNotFoundError(
            f"{runs_dir} does not exist; `muonkit report` reads the output directory of "
            "`muonkit compare` (with runs/<optimizer>-s<seed>/metrics.jsonl)"
        )
    groups = group_runs(find_runs(runs_dir))
    for runs in groups.values():
        for run in runs:
            if not run.val or run.summary is None:
                raise ValueError(f"{run.path} is incomplete (no val records or no summary)")
    sweep = [run for sub in ("sweep", "sweep-full") if (out / sub).is_dir()
             for run in find_runs(out / sub)]
    return groups, sweep


def hardware(groups: dict[str, list[Run]], sweep: list[Run], out: Path) -> str:
    """Where and in which precision the compared and sweep runs ran, from their records,
    counted per folder (``runs``, ``sweep``, ``sweep-full``)."""
    compared = [r for runs in groups.values() for r in runs]
    return provenance_section(study_provenance(
        compared + sweep, out, lambda r: r.path.relative_to(out).parts[0]))


def build_compare_report(out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md`` and ``curves.png`` into ``out_dir`` from its metrics files."""
    out = Path(out_dir)
    groups, sweep = load_compare(out)
    settings_path = out / "settings.json"
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    report = out / REPORT
    report.write_text(compare_markdown(groups, sweep, settings, out))
    first = next(iter(groups.values()))[0].config["config"]
    lrs = "LRs from a sweep" if sweep else "LRs as given (no sweep)"
    title = (f"{' vs '.join(groups)}: preset {first.get('preset')}, {first['steps']} steps, "
             f"{lrs}")
    curves = plot_loss_curves(groups, out / CURVES, title, tuning_seeds(sweep))
    return {"report": report, "curves": curves}
