"""The horizon study's report: ``report.md``, ``horizon.png``, ``curves.png``, ``rms.png``.

Reads a `muonkit horizon` directory (layout: :mod:`muonlab.experiments.horizon`). A
(horizon, contender) cell counts only when its sweep has chosen an LR and every seed's run at
that LR has finished; everything else is listed as unfinished, never guessed. Every number is
computed here from ``metrics.jsonl``, ``sessions.jsonl``, ``sweeps.json`` and ``study.json``;
the hardware, precision and CPU time from every started run's records
(:mod:`muonlab.report.provenance`); every gap to AdamW by the statistics layer
(:mod:`muonlab.report.stats`) over the report seeds, the seed that tuned the LRs left out
(``tune_seed``; in a study before held-out seeds, its first seed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from muonkit.registry import ADAMW, MUON

from ..experiments.horizon import groups_suffix, groups_words
from ..train.settings import GROUP_LABELS
from .metrics import Run, load_run, mean_std, read_jsonl, steps_to_reach
from .plots import plot_horizon, plot_rms, plot_val_curves, val_stats
from .provenance import commands_text, provenance_section, study_provenance
from .records import find_records
from .stats import MIN_REPORT_SEEDS, Comparison, by_report_seed, change, compare_runs
from .tables import fmt_mean_std, markdown_table

REPORT = "report.md"
# h<H>/<contender>/lr<lr>[-wd<w> | -b2<b>: a two-dimensional sweep's second knob]
#   [-emb<m>][-head<m>][-vec<m>: group-LR multipliers other than 1]-s<seed>
GROUPS = "".join(rf"(?:-{label}[\d.e+-]+?)?" for label in GROUP_LABELS.values())
RUN_DIR = re.compile(r"h(\d+)/([\w.-]+)/lr([\d.e+-]+?)(?:-(?:wd|b2)([\d.e+-]+?))?"
                     rf"({GROUPS})-s(\d+)$")


@dataclass
class Cell:
    """One contender at one horizon: the chosen LR (and ``second``: the chosen value of a
    two-dimensional sweep's second knob, as text) and the runs at it (one per seed)."""

    horizon: int
    name: str
    lr: float | None = None
    runs: list[Run] = field(default_factory=list)
    finished: bool = False
    second: str = ""

    @property
    def final(self) -> tuple[float, float]:
        return mean_std([r.val[-1]["val_loss"] for r in self.runs])


@dataclass
class Study:
    settings: dict
    sweeps: dict
    cells: dict[tuple[int, str], Cell]
    out: Path
    started: list[Run]  # every run with a metrics file, by horizon
    runs_done: int
    commands: list[str]
    contenders: set[str] = field(default_factory=set)

    @property
    def horizons(self) -> list[int]:
        return list(self.settings["horizons"])

    @property
    def tuning_seed(self) -> int:
        """The seed of the sweeps (a study before held-out seeds: its first seed)."""
        return self.settings.get("tune_seed", self.settings["seeds"][0])

    def columns(self) -> list[str]:
        """A column per horizon: its steps, and its tokens per parameter where recorded."""
        per_param = self.settings.get("horizon_tokens_per_param")
        if per_param is None:
            return [f"{h} steps" for h in self.horizons]
        return [f"{h} steps ({t:.3g} tokens/param)"
                for h, t in zip(self.horizons, per_param, strict=True)]

    @property
    def runs_started(self) -> int:
        return len(self.started)

    def hardware(self) -> str:
        """The hardware, precision and CPU-time section, from every started run's records."""
        group = (lambda r: f"{horizon_of(self.out, r)} steps") if len(self.horizons) > 1 else None
        return provenance_section(study_provenance(self.started, self.out, group))

    def corpus_hashes(self) -> list[str]:
        """The sha256 of each built corpus (:mod:`muonlab.data.corpus`) the runs recorded
        reading."""
        return sorted({r.config.get("config", {}).get("data", {}).get("corpus_sha256")
                       for r in self.started} - {None})

    def tuned(self) -> str:
        """What the sweeps tuned: ``LR``, ``LR x beta2`` (a two-dimensional sweep),
        ``LR, then the embedding and vector LR multipliers``; per contender when they differ
        (``adamw LR x beta2; muon LR x muon weight decay``)."""
        words: dict[str, str] = {}
        for entries in self.sweeps.values():
            for name, entry in entries.items():
                what = "LR" + (f" x {entry['knob']}" if entry.get("knob") else "")
                if entry.get("groups"):
                    what += f", then the {' and '.join(entry['groups'])} LR multipliers"
                words.setdefault(name, what)
        if len(set(words.values())) <= 1:
            return next(iter(words.values()), "LR")
        return "; ".join(f"{name} {what}" for name, what in words.items())

    def names(self) -> list[str]:
        """Every contender the study ran or was asked to run (AdamW first)."""
        seen = self.contenders | {name for _, name in self.cells}
        return [n for n in [ADAMW, *sorted(seen - {ADAMW})] if n in seen]

    def ready(self, h: int, name: str) -> Cell | None:
        """The cell once its LR is chosen and a seed has finished at it; a cell still missing
        seeds is reported with what it has, marked by :func:`seeds_note`."""
        cell = self.cells.get((h, name))
        return cell if cell is not None and cell.lr is not None and cell.runs else None


def _finished(run: Run, horizon: int) -> bool:
    return run.summary is not None and run.summary.get("steps") == horizon and bool(run.val)


def horizon_of(out: Path, run: Run) -> int:
    return int(RUN_DIR.search(run.path.parent.relative_to(out).as_posix())[1])


def load_study(out: Path) -> Study:
    """Every run under ``out`` grouped into cells at their chosen LRs."""
    settings = json.loads((out / "study.json").read_text())
    sweeps_path = out / "sweeps.json"
    sweeps = json.loads(sweeps_path.read_text()) if sweeps_path.exists() else {}
    by_cell: dict[tuple[int, str], dict[tuple[float, float | None, str], dict[int, Run]]] = {}
    done, started = 0, []
    for path in find_records(out, "h*/*/*/metrics.jsonl"):
        m = RUN_DIR.search(path.parent.relative_to(out).as_posix())
        if not m:
            continue
        h, name, seed = int(m[1]), m[2], int(m[6])
        point = (float(m[3]), None if m[4] is None else float(m[4]), m[5])
        run = load_run(path)
        started.append(run)
        if _finished(run, h):
            done += 1
            by_cell.setdefault((h, name), {}).setdefault(point, {})[seed] = run
    cells = {}
    for (h, name), points in by_cell.items():
        entry = sweeps.get(str(h), {}).get(name)
        point = ((entry["best"], entry.get("best_knob"), groups_suffix(entry.get("best_groups")))
                 if entry else (next(iter(points)) if len(points) == 1 else (None, None, "")))
        runs = points.get(point, {})
        seeds = settings["seeds"]
        finished = point[0] is not None and all(s in runs for s in seeds)
        second = "" if point[1] is None or not entry else f", {entry['knob']} {point[1]:g}"
        second += groups_words(entry and entry.get("best_groups"))
        cells[(h, name)] = Cell(h, name, point[0], [runs[s] for s in seeds if s in runs],
                                finished, second)
    commands_path = out / "commands.txt"
    commands = commands_path.read_text().splitlines() if commands_path.exists() else []
    asked = out / "contenders.json"
    contenders = {p.name for p in out.glob("h*/*") if p.is_dir()}
    contenders |= set(json.loads(asked.read_text())) if asked.exists() else set()
    started.sort(key=lambda r: horizon_of(out, r))
    return Study(settings, sweeps, cells, out, started, done, commands, contenders)


def corpus_note(study: Study) -> str:
    """The corpus hashes the runs name, as a parenthesis; "" for other data."""
    hashes = study.corpus_hashes()
    return f" (corpus sha256 {', '.join(hashes)}, as the runs recorded)" if hashes else ""


def seeds_note(study: Study, cell: Cell) -> str:
    """"" for a finished cell, else " (k of n seeds)"."""
    n = len(study.settings["seeds"])
    return "" if cell.finished else f" ({len(cell.runs)} of {n} seeds)"


def final_table(study: Study) -> str:
    rows = []
    for name in study.names():
        row = [name]
        for h in study.horizons:
            cell = study.ready(h, name)
            row.append("unfinished" if cell is None else
                       f"{fmt_mean_std(*cell.final, 3, len(cell.runs))} "
                       f"(lr {cell.lr:g}{cell.second})" + seeds_note(study, cell))
        rows.append(row)
    return markdown_table(["contender"] + study.columns(), rows)


def final_loss(run: Run) -> float:
    return float(run.val[-1]["val_loss"])


def gap(study: Study, cell: Cell, base: Cell) -> Comparison:
    """``cell`` - ``base``'s (AdamW's, or the Muon hybrid's) final val loss over the report
    seeds, paired by seed (the sweep's seed left out)."""
    return compare_runs(cell.runs, base.runs, final_loss, higher_is_better=False,
                        tuning_seeds=(study.tuning_seed,))


def gap_and_reach(study: Study) -> tuple[str, dict]:
    """Table of each contender's gap to AdamW's final loss (:func:`gap`) and the fraction of
    the run it needs to reach that loss (mean val curve over every seed, interpolated), per
    horizon."""
    rows, gaps = [], {}
    for name in study.names():
        if name == ADAMW:
            continue
        row = [name]
        for h in study.horizons:
            cell, base = study.ready(h, name), study.ready(h, ADAMW)
            if cell is None or base is None:
                row.append("unfinished")
                continue
            steps, mean, _, _ = val_stats(cell.runs)
            reach = steps_to_reach(steps, mean, base.final[0])
            gaps[(h, name)] = gap(study, cell, base)
            where = ("never reaches AdamW's final" if reach is None
                     else f"reaches AdamW's final at {reach / h:.0%} of the run")
            row.append(f"{gaps[(h, name)].text()}; {where}{seeds_note(study, cell)}")
        rows.append(row)
    table = markdown_table(["contender"] + study.columns(), rows)
    return table, gaps


def gaps_to(study: Study, base: str) -> dict[str, dict[int, Comparison | None]]:
    """{contender: {horizon: its final val loss - contender ``base``'s (:func:`gap`), None
    where either cell is unfinished}} for every contender but AdamW and ``base``, each at its
    own tuned LR."""
    out: dict = {}
    for name in study.names():
        if name in (ADAMW, base):
            continue
        for h in study.horizons:
            cell, other = study.ready(h, name), study.ready(h, base)
            out.setdefault(name, {})[h] = gap(study, cell, other) if cell and other else None
    return out


def versus_muon(study: Study) -> dict[str, dict[int, Comparison | None]]:
    """:func:`gaps_to` the Muon hybrid (``muon``): what a Muon variant (``muon-wd``: decoupled
    weight decay on the Muon matrices) changes, paired by seed. Empty when the study has no
    ``muon``."""
    return gaps_to(study, MUON) if MUON in study.names() else {}


def versus_muon_section(study: Study) -> list[str]:
    """The report's section of :func:`versus_muon` (none without a Muon variant)."""
    rows = [[name] + [c.text() if c is not None else "unfinished" for c in g.values()]
            for name, g in versus_muon(study).items()]
    if not rows:
        return []
    return [f"## Against the Muon hybrid (`{MUON}`)\n",
            f"Final val loss minus `{MUON}`'s, each at its own tuned LR, paired by report seed, "
            "with its 95% interval, test, n and verdict.\n",
            markdown_table([f"contender - {MUON}"] + study.columns(), rows)]


def seed_gaps(study: Study, cell: Cell, base: Cell) -> dict[int, float]:
    """{report seed: ``cell``'s final val loss - ``base``'s} over the report seeds both cells
    have (the sweep's seed left out)."""
    a, b = (by_report_seed(c.runs, final_loss, (study.tuning_seed,)) for c in (cell, base))
    return {seed: loss - b[seed] for seed, loss in a.items() if seed in b}


def change_columns(study: Study) -> list[str]:
    """A column per pair of consecutive horizons: ``601 vs 200 steps (6 vs 2 tokens/param)``."""
    per_param = study.settings.get("horizon_tokens_per_param")
    pairs = list(zip(study.horizons, study.horizons[1:]))
    if per_param is None:
        return [f"{b} vs {a} steps" for a, b in pairs]
    tpp = dict(zip(study.horizons, per_param, strict=True))
    return [f"{b} vs {a} steps ({tpp[b]:.3g} vs {tpp[a]:.3g} tokens/param)" for a, b in pairs]


def gap_changes(study: Study, base: str = ADAMW) -> dict[str, dict[str, Comparison | None]]:
    """{contender: {:func:`change_columns` column: its gap to ``base`` (:func:`seed_gaps`) at a
    horizon minus its gap at the horizon before, paired by report seed (:func:`change`); None
    where a cell is unfinished}}: does the contender gain or lose ground to ``base`` as the
    runs get longer? Every contender but AdamW and ``base``; empty with one horizon."""
    out: dict = {}
    for name in study.names():
        if name in (ADAMW, base):
            continue
        gaps = {h: seed_gaps(study, cell, other)
                if (cell := study.ready(h, name)) and (other := study.ready(h, base)) else None
                for h in study.horizons}
        for column, a, b in zip(change_columns(study), study.horizons, study.horizons[1:]):
            out.setdefault(name, {})[column] = gaps_change(gaps[b], gaps[a])
    return out


def gaps_change(later: dict[int, float] | None, earlier: dict[int, float] | None
                ) -> Comparison | None:
    """``later - earlier`` of two :func:`seed_gaps` over the seeds both have (:func:`change`);
    None when either is missing or they share no seed."""
    seeds = sorted(set(later) & set(earlier)) if later and earlier else []
    return change([later[s] for s in seeds], [earlier[s] for s in seeds],
                  higher_is_better=False) if seeds else None


def gap_change_section(study: Study) -> list[str]:
    """The report's section of :func:`gap_changes` to AdamW (none with one horizon)."""
    rows = [[name] + [c.text() if c is not None else "unfinished" for c in g.values()]
            for name, g in gap_changes(study).items() if g]
    if not rows:
        return []
    return ["## Change of the gap to AdamW from one horizon to the next\n",
            "Each contender's gap to AdamW (its final val loss minus AdamW's, per report seed) "
            "at a horizon minus its gap at the horizon before, paired by report seed, with its "
            "95% interval, test, n and verdict: `gains ground` (the gap fell: the contender "
            "moved ahead of AdamW, or further ahead) or `loses ground` (the gap rose) when the "
            "interval excludes 0.\n",
            markdown_table(["contender"] + change_columns(study), rows)]


def crossing_lines(study: Study, gaps: dict[tuple[int, str], Comparison]) -> list[str]:
    """Where a contender's mean val curve crosses AdamW's within a run, and where the sign
    of its mean final gap changes between horizons (with the gap's verdict there)."""
    lines = []
    for name in study.names():
        if name == ADAMW:
            continue
        for h in study.horizons:
            cell, base = study.ready(h, name), study.ready(h, ADAMW)
            if cell is None or base is None:
                continue
            s1, m1, _, _ = val_stats(cell.runs)
            s0, m0, _, _ = val_stats(base.runs)
            common = [s for s in s1 if s in set(s0) and s > 0]
            diff = np.array([m1[list(s1).index(s)] - m0[list(s0).index(s)] for s in common])
            flips = [common[i] for i in range(1, len(diff)) if np.sign(diff[i]) != np.sign(
                diff[i - 1])]
            if flips:
                lines.append(f"- {name} at {h} steps: its mean val curve crosses AdamW's near "
                             f"step(s) {', '.join(str(int(s)) for s in flips)}.")
        signs = [(h, np.sign(gaps[(h, name)].diff)) for h in study.horizons if (h, name) in gaps]
        for (ha, a), (hb, b) in zip(signs, signs[1:]):
            if a != b:
                lines.append(f"- {name}: its mean gap to AdamW changes sign between {ha} and "
                             f"{hb} steps ({name} - adamw at {hb}: {gaps[(hb, name)].text()}).")
    return lines or ["- No crossings among the finished cells."]


def cost_table(study: Study) -> str:
    rows = []
    for name in study.names():
        for h in study.horizons:
            cell = study.ready(h, name)
            if cell is None:
                continue
            sums = [r.summary for r in cell.runs]
            rows.append([
                name, h, f"{np.mean([s['tokens_per_s'] for s in sums]):,.0f}",
                f"{1000 * np.mean([s['step_time_s'] for s in sums]):.1f}",
                f"{np.mean([r.train[-1]['elapsed_s'] for r in cell.runs]):.0f}",
                "; ".join(sorted({timed_on(r) for r in cell.runs})),
            ])
    header = ["contender", "steps", "tokens/s", "ms/step", "train time (s)",
              "timed on (GPU, or CPU flags)"]
    return markdown_table(header, rows)


def timed_on(run: Run) -> str:
    """What a run's step times measure: its GPU's name, or its CPU's arithmetic flags."""
    prov = run.config.get("provenance", {})
    if prov.get("device") == "cuda":
        return prov.get("device_name") or "CUDA GPU"
    return " ".join(run.summary.get("cpu_flags") or ["-"])


def rms_seed(study: Study) -> int:
    """The seed whose runs the RMS table and figure show: the study's first seed (a report
    seed, or in a study before held-out seeds the seed that also tuned)."""
    return int(study.settings["seeds"][0])


def rms_run(study: Study, cell: Cell | None) -> Run | None:
    """``cell``'s run with :func:`rms_seed` (None: unfinished)."""
    return next((r for r in cell.runs if r.seed == rms_seed(study)), None) if cell else None


def rms_table(study: Study) -> str:
    """Weight RMS at the first and the last evaluation (its growth) and the last update RMS
    of each cell's run with :func:`rms_seed`."""
    rows = []
    for name in study.names():
        row = [name]
        for h in study.horizons:
            run = rms_run(study, study.ready(h, name))
            first = _weight_rms_at_start(run) if run else None
            rec = _rms_records(run) if run else []
            row.append(f"{first:.4f} -> {rec[-1]['weight_rms']:.4f} / "
                       f"{rec[-1]['update_rms']:.2e}" if rec and first is not None
                       else "unfinished")
        rows.append(row)
    return markdown_table(["contender"] + study.columns(), rows)


def final_weight_rms(study: Study, cell: Cell) -> float | None:
    """The weight RMS of the hidden matrices at the last evaluation of ``cell``'s run with
    :func:`rms_seed` (None: not recorded)."""
    run = rms_run(study, cell)
    rec = _rms_records(run) if run else []
    return rec[-1]["weight_rms"] if rec else None


def _weight_rms_at_start(run: Run) -> float | None:
    first = rms_records(run)[:1]
    return first[0]["weight_rms"] if first else None


def rms_records(run: Run) -> list[dict]:
    """Every RMS record of ``run``, the step-0 one (weight RMS only) included."""
    return [r for r in read_jsonl(run.path) if r.get("kind") == "rms"]


def _rms_records(run: Run) -> list[dict]:
    """The RMS records that carry an update RMS (every one after step 0)."""
    return [r for r in rms_records(run) if r.get("update_rms")]


def sweep_lines(study: Study) -> list[str]:
    lines = []
    for h in study.horizons:
        for name, entry in study.sweeps.get(str(h), {}).items():
            if "best_knob" in entry:  # a two-dimensional sweep: [lr, knob value, loss] rows
                tried = ", ".join(f"{lr:g} x {k:g}: {loss:.3f}"
                                  for lr, k, loss in sorted(entry["losses"]))
            else:
                tried = ", ".join(f"{float(lr):g}: {loss:.3f}" for lr, loss in sorted(
                    entry["losses"].items(), key=lambda kv: float(kv[0])))
            aux = f" (aux AdamW lr {entry['aux_lr']:g})" if entry.get("aux_lr") else ""
            lines.append(f"- {h} steps, {name}{aux}: {tried}. {entry['note']}")
            for role, group in entry.get("groups", {}).items():
                others = groups_words(group["others"])
                tried = ", ".join(f"x{float(m):g}: {loss:.3f}" for m, loss in sorted(
                    group["losses"].items(), key=lambda kv: float(kv[0])))
                base = entry.get("aux_lr") or entry["best"]  # the LR the AdamW groups take
                lines.append(f"- {h} steps, {name}, {role} LR multiplier (of the AdamW LR "
                             f"{base:g}, at the chosen LR{others}): {tried}. {group['note']}")
    return lines


def horizon_markdown(study: Study, figures: dict[str, Path], gap_table: str,
                     gaps: dict[tuple[int, str], Comparison]) -> str:
    """The report; ``gap_table`` and ``gaps``: :func:`gap_and_reach`'s."""
    s = study.settings
    expected = len(study.horizons) * len(study.names())
    done = sum(1 for c in study.cells.values() if c.finished)
    status = ("complete" if done == expected and expected else
              f"**unfinished**: {done} of {expected} (horizon, contender) cells finished")
    budget = ("" if "params" not in s else
              f" ({s['params']:,} parameters, {s['tokens_per_step']:,} tokens per step; "
              f"{', '.join(f'{t:.3g}' for t in s['horizon_tokens_per_param'])} tokens per "
              "parameter at the horizons)")
    parts = [
        "# Horizon study: does Muon's lead over AdamW survive longer training?\n",
        f"Status: {status}; {study.runs_done} of {study.runs_started} started runs finished.\n",
        f"Model preset `{s['preset']}`{budget}, data `{s['data']}`{corpus_note(study)}, "
        f"{s['batch_size']} sequences "
        f"per step, {'report ' if 'tune_seed' in s else ''}seeds {s['seeds']}"
        + (f" (seed {s['tune_seed']} tuned the LRs and is not reported)"
           if "tune_seed" in s else "") +
        f", horizons {s['horizons']} steps, each with its own schedule "
        f"(warmup {s['warmup_frac']:.0%}, cosine to {s['min_lr_ratio']} x peak, Muon momentum "
        f"warmup {s['momentum_warmup_frac']:.0%}); every contender tuned per horizon on a "
        f"{s['grid_points']}-point factor-2 grid around the previous horizon's best (seed "
        f"{study.tuning_seed}, full length, extended past an edge up to {s['sweep_extend']} "
        "points).\n",
        study.hardware(),
        "## Final validation loss (mean ± std over "
        + ("the report seeds" if "tune_seed" in s else "every seed") + ", chosen LR)\n",
        final_table(study),
        "## Gap to AdamW and steps to reach AdamW's final loss\n",
        f"Gap: final val loss minus AdamW's over the report seeds (seed {study.tuning_seed}, "
        "which tuned the LRs, left out), its 95% interval, test, n and verdict (lower is better; a "
        f"verdict needs >= {MIN_REPORT_SEEDS} report seeds).\n", gap_table,
        *gap_change_section(study),
        *versus_muon_section(study),
        "## Crossings\n", "\n".join(crossing_lines(study, gaps)) + "\n",
        "## Weight RMS (first -> last evaluation) / update RMS of the hidden matrices at the "
        f"end (seed {rms_seed(study)}{'' if 'tune_seed' in s else ', which also tuned'})\n",
        rms_table(study),
        "Update RMS: mean RMS of one optimizer step's change of the hidden matrices over the "
        "last evaluation interval (LR schedule and weight decay included).\n",
        "## Wall-clock and throughput\n", cost_table(study),
        "Mean over the seeds at the chosen LR; each run at one process with its `--threads`. "
        "Per-step times depend on the machine (the last column) and on what else it ran "
        "meanwhile (on a GPU: how many runs shared it); compare them within one machine and "
        "one `--jobs` only.\n",
        "## Sweeps\n", "\n".join(sweep_lines(study)) + "\n",
        "## Commands\n", commands_text(study.commands, study.started, study.out),
        "Figures: " + ", ".join(f"`{p.name}`" for p in figures.values()) + ".\n",
    ]
    return "\n".join(parts)


def build_horizon_report(out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md`` and the figures of a horizon study directory."""
    out = Path(out_dir)
    if not (out / "study.json").exists():
        raise FileNotFoundError(f"{out} has no study.json; is it a `muonkit horizon` directory?")
    study = load_study(out)
    gap_table, gaps = gap_and_reach(study)
    figures = {
        "horizon": plot_horizon(study, out / "horizon.png", gaps),
        "curves": plot_val_curves(study, out / "curves.png"),
        "rms": plot_rms(study, out / "rms.png", rms_records, rms_seed(study),
                        lambda cell: rms_run(study, cell)),
    }
    report = out / REPORT
    report.write_text(horizon_markdown(study, figures, gap_table, gaps))
    return {"report": report, **figures}
