"""The fine-tuning study's report: ``runs.jsonl``, ``report.md``, ``accuracy_vs_lr.png``,
``forgetting.png``.

Reads a `muonkit finetune-study` directory (layout: :mod:`muonlab.experiments.finetune_study`).
Every fine-tuning run that finished is one line of ``runs.jsonl``: its base and arm (from its
folder), what it ran (optimizer, state, LR scaling, momentum form, LoRA rank: from its config
record), its LR and seed, ``role`` (``tune``: the sweep's seed; ``report``: the other seeds,
trained at the arm's chosen LR), test accuracy, the base's validation loss before and after
(forgetting), the fine-tuning loss curves (validation; training every 10th step), the mean
update RMS of the trained matrices,
the path of its ``predictions.jsonl`` (read through
:func:`muonlab.report.records.read_predictions`: packed, it takes its questions from the
study's ``task/test.jsonl``) and the provenance of its first session. An arm counts
in the tables once its sweep chose an LR and every report seed at that LR finished; the
rest is listed as unfinished, never guessed. Means come with 95% t intervals over the report
seeds, and each arm is compared with the ``adamw`` arm on the same base seed by seed (same
seeds: same batches; paired), with a verdict, through :mod:`muonlab.report.stats`.

The study's questions (:data:`QUESTIONS`) are answered the same way, each a list of paired
accuracy differences (:class:`Difference`): fixed Muon minus AdamW on each base; the notes'
setup and each of its bugs alone minus ``muon-kj``, with the cause the verdicts support
(:func:`bug_cause`); the pretraining optimizer's arm minus the mismatched one; the migrated
state minus fresh. Each arm's good LR range (:func:`good_lr_range`) is read from its sweep:
the contiguous swept LRs around the best whose fine-tuning val loss is within 5% of the
best's, a lower bound on the width when it reaches the grid's edge. :func:`verdict_text` is
the README's ``finetune`` verdict (:mod:`muonlab.report.verdicts`): the five answers,
differences in percentage points, then each arm's good-LR-range width; read back from a
written study by :func:`load_arms`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from muonkit.registry import ADAMW, MUON

from .metrics import Run, load_run, read_jsonl
from .plots import LEGEND_FONT, color, legend, plt, save, ticks_at
from .provenance import provenance_section, study_provenance
from .records import find_records, finished_summary, write_records
from .stats import BEHIND, Comparison, compare_runs, summarize
from .tables import markdown_table

REPORT = "report.md"
RUNS = "runs.jsonl"
CURVE_EVERY = 10  # the training-loss curve of runs.jsonl: every 10th step and the last
FT_RECORDS = "ft/*/*/*/metrics.jsonl"
BASES_DIR = "bases"  # the bases' pretraining runs: OUT/bases/<base>/lr<lr>-s<seed>
BASE_RECORDS = f"{BASES_DIR}/*/*/metrics.jsonl"
FT_KIND, BASE_KIND = "fine-tuning", "base pretraining"  # the runs' groups in the CPU time
RUN_DIR = re.compile(r"ft/([\w-]+)/([\w.-]+)/lr([\d.e+-]+)-s(\d+)$")
BASES = (ADAMW, MUON)
BASE_WORDS = {ADAMW: "AdamW", MUON: "Muon"}
KJ = "muon-kj"  # fixed Muon: the arm every bug and migrated state is measured against
NOTES_FAILED = "notes-failed"
BUGS = {"ema-only": "the EMA momentum", "max-dim-only": "the max-dim LR scaling"}


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
    lines = (run_line(out, m, tune_seed) for m in find_records(out, FT_RECORDS))
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
    difference from the ``adamw`` arm on the same base (:func:`difference`: paired by report
    seed)."""
    rows = []
    for a in arms:
        if not a.finished:
            continue
        diff = "-" if a.name == ADAMW else difference(arms, a.base, a.name, ADAMW).text()
        rms = [r["update_rms"] for r in a.report if r["update_rms"] is not None]
        rows.append([a.base, a.name, f"{a.lr:g}",
                     summarize([r["accuracy"] for r in a.report]).text(),
                     diff, summarize([forgetting(r) for r in a.report]).text(),
                     f"{np.mean(rms):.2e}" if rms else "-"])
    return markdown_table(["base", "arm", "LR", "test accuracy", "minus AdamW's",
                           "forgetting (source val loss change)", "update RMS"], rows)


@dataclass(frozen=True)
class Difference:
    """Arm ``a`` minus arm ``b`` on ``base``: test accuracy paired by report seed
    (:func:`muonlab.report.stats.compare_runs`), or None with the arms it waits for."""

    base: str
    a: str
    b: str
    comparison: Comparison | None
    unfinished: tuple[str, ...] = ()

    @property
    def verdict(self) -> str | None:
        return self.comparison.verdict if self.comparison else None

    def text(self) -> str:
        return self.comparison.text() if self.comparison else self.waiting()

    def waiting(self) -> str:
        return "unfinished: " + ", ".join(self.unfinished)


def difference(arms: list[Arm], base: str, a: str, b: str) -> Difference:
    """:class:`Difference` of arms ``a`` and ``b`` on ``base``; an arm that is unfinished
    (or not in the study) is named, never guessed."""
    by_key = {(arm.base, arm.name): arm for arm in arms if arm.finished}
    missing = tuple(f"{base}/{name}" for name in (a, b) if (base, name) not in by_key)
    if missing:
        return Difference(base, a, b, None, missing)
    return Difference(base, a, b, compare_runs(
        by_key[base, a].report, by_key[base, b].report, lambda r: r["accuracy"],
        higher_is_better=True))


@dataclass(frozen=True)
class Question:
    """One question of the study and the paired differences that answer it: (base, a, b)
    for ``a`` minus ``b`` on that base."""

    title: str
    pairs: tuple[tuple[str, str, str], ...]

    def differences(self, arms: list[Arm]) -> list[Difference]:
        return [difference(arms, *pair) for pair in self.pairs]


FIXED = Question("Does fixed Muon fine-tune each base? Each fixed Muon arm minus `adamw`",
                 tuple((b, a, ADAMW) for b in BASES for a in (KJ, "muon-moonlight")))
CAUSE = Question(f"Which of the notes' two bugs caused the failure? `{NOTES_FAILED}` and each "
                 f"bug alone minus `{KJ}` (the bugs fixed)",
                 tuple((b, a, KJ) for b in BASES for a in (NOTES_FAILED, *BUGS)))
MISMATCH = Question("Does the optimizer mismatch hurt? The arm matching the base's "
                    "pretraining optimizer minus the mismatched one",
                    ((ADAMW, ADAMW, KJ), (MUON, KJ, ADAMW)))
MIGRATED = Question(f"Does the migrated state help? Each migrated-state arm minus `{KJ}` "
                    "(fresh state)",
                    ((ADAMW, "muon-from-adamw", KJ), (MUON, "muon-carry", KJ)))
QUESTIONS = (FIXED, CAUSE, MISMATCH, MIGRATED)


def question_table(question: Question, arms: list[Arm]) -> str:
    rows = [[f"{BASE_WORDS[d.base]} base", f"`{d.a}` - `{d.b}`", d.text()]
            for d in question.differences(arms)]
    return markdown_table(["base", "difference", "test accuracy difference (paired by seed)"],
                          rows)


def bug_cause(differences: list[Difference], base: str) -> str:
    """What the intervals say caused the failure on ``base``, from :data:`CAUSE`'s
    differences: a bug whose arm alone is behind ``muon-kj`` as ``notes-failed`` is, while the
    other bug's arm is not, is the cause; nothing is named that the verdicts do not support."""
    on = {d.a: d for d in differences if d.base == base}
    where = f"on the {BASE_WORDS[base]} base"
    waiting = [u for d in on.values() for u in d.unfinished]
    if waiting:
        return f"{where} the cause is not stated: unfinished {', '.join(dict.fromkeys(waiting))}."
    if on[NOTES_FAILED].verdict != BEHIND:
        return (f"{where} `{NOTES_FAILED}` is {on[NOTES_FAILED].verdict} against `{KJ}`: the "
                "failure is not reproduced, so no cause is named.")
    behind = [b for b in BUGS if on[b].verdict == BEHIND]
    if len(behind) == 1:
        (other,) = set(BUGS) - set(behind)
        return (f"{where} `{NOTES_FAILED}` and `{behind[0]}` alone are behind `{KJ}`, "
                f"`{other}` alone is {on[other].verdict}: the intervals point to "
                f"{BUGS[behind[0]]} as the cause.")
    if behind:
        return (f"{where} `{NOTES_FAILED}` and each bug alone are behind `{KJ}`: both bugs "
                "cost accuracy.")
    return (f"{where} `{NOTES_FAILED}` is behind `{KJ}` but neither bug alone is: the "
            "intervals single out neither bug.")


GOOD_LR_TOLERANCE = 0.05  # an LR is good when its val loss is within 5% of the sweep's best


@dataclass(frozen=True)
class LRRange:
    """The good LR range of a sweep: the contiguous swept LRs around the best whose
    fine-tuning val loss is within :data:`GOOD_LR_TOLERANCE` of the best's. ``low_edge`` /
    ``high_edge``: it reaches the smallest / largest LR swept, so the true range may be wider
    and ``factor`` is a lower bound."""

    best: float
    lo: float
    hi: float
    low_edge: bool
    high_edge: bool

    @property
    def factor(self) -> float:
        return self.hi / self.lo

    @property
    def lower_bound(self) -> bool:
        return self.low_edge or self.high_edge

    def factor_text(self) -> str:
        """``8``, or ``>= 8 (reaches the grid's low edge)`` when it is a lower bound (3
        significant digits: the grid points are rounded to 6)."""
        if not self.lower_bound:
            return f"{self.factor:.3g}"
        edges = " and ".join(e for e, at in (("low", self.low_edge), ("high", self.high_edge))
                             if at)
        return f">= {self.factor:.3g} (reaches the grid's {edges} edge)"


def good_lr_range(losses: Mapping[float, float],
                  tolerance: float = GOOD_LR_TOLERANCE) -> LRRange | None:
    """:class:`LRRange` of a sweep's ``{lr: val loss}`` (the best: the lowest loss, the
    smaller LR on a tie, as the sweep chose); None when every run diverged."""
    lrs = sorted(losses)
    best = min(lrs, key=lambda lr: (losses[lr], lr))
    if not math.isfinite(losses[best]):
        return None
    limit = losses[best] + tolerance * abs(losses[best])
    lo = hi = lrs.index(best)
    while lo > 0 and losses[lrs[lo - 1]] <= limit:
        lo -= 1
    while hi < len(lrs) - 1 and losses[lrs[hi + 1]] <= limit:
        hi += 1
    return LRRange(best, lrs[lo], lrs[hi], lo == 0, hi == len(lrs) - 1)


def sweep_range(sweeps: dict, base: str, name: str) -> LRRange | None:
    """:func:`good_lr_range` of the arm's finished sweep (None: unfinished, or all diverged)."""
    sweep = sweeps.get(f"{base}/{name}")
    if sweep is None:
        return None
    return good_lr_range({float(lr): loss for lr, loss in sweep["losses"].items()})


def lr_range_table(arms: list[Arm], sweeps: dict,
                   keys: list[tuple[str, str]] | None = None) -> str:
    """One row per (base, arm) of ``keys`` (default: every arm of the study): the best LR,
    the good LR range, its width hi/lo, and the tuning seed's test accuracy over the range."""
    tuned = {(a.base, a.name): a.tune for a in arms}
    rows = []
    for base, name in keys or list(tuned):
        r = sweep_range(sweeps, base, name)
        if r is None:
            note = "every run diverged" if f"{base}/{name}" in sweeps else "sweep unfinished"
            rows.append([base, name, note, "-", "-", "-"])
            continue
        accs = [t["accuracy"] for t in tuned.get((base, name), ()) if r.lo <= t["lr"] <= r.hi]
        acc = f"{min(accs):.3f} to {max(accs):.3f}" if accs else "-"
        rows.append([base, name, f"{r.best:g}", f"[{r.lo:g}, {r.hi:g}]", r.factor_text(), acc])
    return markdown_table(["base", "arm", "best LR", "good LR range", "width hi/lo",
                           "tuning-seed accuracy in the range"], rows)


DIFFERENCES = ("Test accuracy differences in percentage points with 95% intervals, paired over "
               "the report seeds (the tuning seed chose each arm's LR; not resolved: the "
               "interval contains 0).")


def verdict_text(arms: list[Arm], sweeps: dict) -> str:
    """The study's answers to its five questions in one paragraph (the README's ``finetune``
    verdict block and the report's opening): each question's paired differences of test
    accuracy in percentage points (:func:`answer`), what the intervals say of the notes'
    bugs (:func:`bug_cause`) and each arm's good-LR-range width (:func:`range_widths`)."""
    cause = CAUSE.differences(arms)
    return (f"{DIFFERENCES} 1. Fixed Muon minus AdamW: {answer(FIXED, arms)}. 2. The notes' "
            f"failed setup and each bug alone minus {KJ}: {answer(CAUSE, arms)}. "
            + " ".join(_sentence(bug_cause(cause, b)) for b in BASES)
            + f" 3. Matching minus mismatched optimizer: {answer(MISMATCH, arms)}. 4. Migrated "
            f"state minus fresh {KJ}: {answer(MIGRATED, arms)}. 5. Width hi/lo of each arm's "
            f"good LR range (val loss within {GOOD_LR_TOLERANCE:.0%} of its sweep's best): "
            f"{range_widths(arms, sweeps)}.")


def summary_text(arms: list[Arm]) -> str:
    """:func:`verdict_text`'s questions 1 and 4 alone (the README's ``finetune-summary``
    block): fixed Muon minus AdamW, and the carried or migrated Muon state minus a fresh one."""
    return (f"{DIFFERENCES} Fixed Muon minus AdamW: {answer(FIXED, arms)}. Carried or migrated "
            f"Muon state minus fresh {KJ}: {answer(MIGRATED, arms)}.")


def answer(question: Question, arms: list[Arm]) -> str:
    """``AdamW base: muon-kj +4.2 [+3.2, +5.2] ahead, ...; Muon base: ... (paired t, n=5)``:
    the question's differences in percentage points by base, each with its verdict, the test
    and n said once when they are shared and no verdict has another reason than its interval
    (else each difference's full text), "unfinished" where an arm is."""
    differences = question.differences(arms)
    same_b = len({d.b for d in differences}) == 1
    done = [d.comparison for d in differences if d.comparison]
    shared = {(c.test, c.n) for c in done}
    compact = len(shared) == 1 and all(c.reason in ("", "the interval contains 0")
                                       for c in done)

    def item(d: Difference) -> str:
        name = d.a if same_b else f"{d.a} - {d.b}"
        if d.comparison is None:
            return f"{name} unfinished"  # (the report's tables name the arms it waits for)
        if compact:
            return f"{name} {d.comparison.interval_text(1, 100)} {d.comparison.verdict}"
        return f"{name} {d.comparison.text(1, 100)}"

    text = "; ".join(f"{BASE_WORDS[base]} base: " + ", ".join(
        item(d) for d in differences if d.base == base)
        for base in dict.fromkeys(d.base for d in differences))
    if compact:
        test, n = shared.pop()
        text += f" ({test}, n={n})"
    return text


def range_widths(arms: list[Arm], sweeps: dict) -> str:
    """Each arm's good-LR-range width per base, ``>=`` where the range reaches the grid's
    edge (a lower bound)."""
    parts = []
    for base in dict.fromkeys(a.base for a in arms):
        widths = []
        for name in dict.fromkeys(a.name for a in arms if a.base == base):
            r = sweep_range(sweeps, base, name)
            if r is None:
                width = "every run diverged" if f"{base}/{name}" in sweeps else "unfinished"
            else:
                width = (">= " if r.lower_bound else "") + f"{r.factor:.3g}"
            widths.append(f"{name} {width}")
        parts.append(f"{BASE_WORDS[base]} base " + ", ".join(widths))
    return "; ".join(parts) + " (>=: the range reaches the swept grid's edge)"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def question_sections(arms: list[Arm], sweeps: dict) -> list[str]:
    """The report's answers, one section per question of the study."""
    cause = CAUSE.differences(arms)
    text = []
    for i, q in enumerate(QUESTIONS, 1):
        text += [f"### {i}. {q.title}", "", question_table(q, arms), ""]
        if q is CAUSE:
            text += [f"- {bug_cause(cause, b)}" for b in BASES] + [""]
        if q is MISMATCH:
            text += ["The width of the good LR range (question 5) on each base: the 2026 "
                     "claim (Qu, Huang, Horvath) is that the mismatch makes Muon "
                     "LR-sensitive, a narrower range on the AdamW base.", "",
                     lr_range_table(arms, sweeps, [(b, n) for b in BASES for n in (ADAMW, KJ)]),
                     ""]
    text += ["### 5. How wide is each arm's good LR range?", "",
             f"The good LR range of an arm: the contiguous LRs of its sweep around the best "
             f"whose fine-tuning val loss (tuning seed) is within {GOOD_LR_TOLERANCE:.0%} of "
             "the best's; its width is hi/lo. A range that reaches an edge of the swept grid "
             "gives only a lower bound on the width (marked >=). One tuning seed: no "
             "interval.", "", lr_range_table(arms, sweeps), ""]
    return text


BASE_MARKERS = {ADAMW: "o", MUON: "^"}
# a marker per arm in the accuracy-vs-LR figure, hollow, so that arms whose sweeps coincide
# (the Muon arms on the AdamW base lie within 0.01 of each other) stay visible one on another
ARM_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h", "p", "*")
BELOW = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.24)}  # a legend under its panel
NEAR_BEST = 1.3  # the zoomed sweep panel: val losses up to 1.3 times the lowest


def arm_styles(arms: list[Arm]) -> dict[str, dict]:
    """Each arm's colour (:func:`muonlab.report.plots.color`) and marker, by name."""
    names = list(dict.fromkeys(a.name for a in arms))
    return {n: {"color": color(n, among=names), "marker": ARM_MARKERS[i % len(ARM_MARKERS)]}
            for i, n in enumerate(names)}


def plot_accuracy_vs_lr(arms: list[Arm], sweeps: dict, path: Path) -> Path:
    """One column per base. Top: tuning-seed test accuracy vs LR, one line per arm, and the
    report seeds' mean at the chosen LR as a star with its 95% t interval. Middle: the
    tuning runs' fine-tuning val loss vs LR (what chose the LR; log y), the good LR range of
    a finished sweep drawn thick; bottom: the same near the lowest loss (up to
    :data:`NEAR_BEST` times it), where the arms crowd. The legends stand under the panels,
    off the data."""
    bases = sorted({a.base for a in arms}) or [ADAMW]
    styles = arm_styles(arms)
    fig, axes = plt.subplots(3, len(bases), figsize=(7 * len(bases), 18), squeeze=False,
                             height_ratios=(1, 0.8, 0.8))
    for (ax, ax_loss, ax_near), base in zip(axes.T, bases):
        ns, lrs, losses_all = [], [], []
        for a in (a for a in arms if a.base == base):
            style = {**styles[a.name], "mfc": "none"}
            points = sorted((r["lr"], r["accuracy"]) for r in a.tune)
            if points:
                ax.plot(*zip(*points), label=a.name, **style)
            if a.finished:
                s = summarize([r["accuracy"] for r in a.report])
                err = 0 if s.n < 2 else [[s.mean - s.lo], [s.hi - s.mean]]
                ax.errorbar([a.lr], [s.mean], yerr=err, marker="*", markersize=12,
                            color=style["color"], capsize=3)
                ns.append(s.n)
            losses = sorted((r["lr"], r["val_loss"]) for r in a.tune
                            if math.isfinite(r["val_loss"]))
            good = sweep_range(sweeps, a.base, a.name)  # (None: the sweep is running)
            for panel in (ax_loss, ax_near):
                if losses:
                    panel.plot(*zip(*losses), ms=5, **style)
                if good is not None:
                    panel.plot(*zip(*[(x, v) for x, v in losses if good.lo <= x <= good.hi]),
                               color=style["color"], lw=5, alpha=0.35)
            lrs += [x for x, _ in points]
            losses_all += [v for _, v in losses]
        if ns:
            ax.plot([], [], "*", color="grey", markersize=10,
                    label="star: report seeds' mean at the chosen LR")
        where = BASE_WORDS.get(base, base)
        ax.set(xscale="log", ylabel="test accuracy (fraction exact match)",
               title=f"{where} base: test accuracy vs LR (tuning seed)")
        ax_loss.set(yscale="log", ylabel="fine-tuning val loss (nats/byte, log)",
                    title=f"{where} base: the sweeps (tuning seed)")
        ax_near.set(ylabel="fine-tuning val loss (nats/byte)",
                    title=f"{where} base: the sweeps near the lowest val loss")
        if losses_all:
            lowest = min(losses_all)
            ticks_at(ax_loss, loss_ticks(losses_all), axis="y")
            ax_loss.axhspan(lowest, NEAR_BEST * lowest, color="grey", alpha=0.1,
                            label="the range the panel below shows")
            ax_near.set_ylim(lowest - 0.05 * (NEAR_BEST - 1) * lowest, NEAR_BEST * lowest)
        for panel in (ax_loss, ax_near):
            panel.plot([], [], color="grey", marker="o", mfc="none", ms=5,
                       label="each arm's tuning-seed val loss (colour, marker: as above)")
            panel.plot([], [], color="grey", lw=5, alpha=0.35,
                       label=f"thick: good LR range (val loss within {GOOD_LR_TOLERANCE:.0%} "
                             "of the sweep's best)")
        for panel, n, ncol in ((ax, ns, 3), (ax_loss, None, 1), (ax_near, None, 1)):
            panel.set(xscale="log", xlabel="fine-tuning LR (the arm's swept knob)")
            if lrs:
                ticks_at(panel, lrs, fmt=lambda v: f"{v:.2g}")
                panel.tick_params(axis="x", labelsize=8, labelrotation=45)
            panel.grid(alpha=0.3)
            legend(panel, n, ncol=ncol, **BELOW)
    return save(fig, path)


def loss_ticks(losses: list[float]) -> list[float]:
    """Ticks of a log val-loss axis spanning ``losses``: 1, 1.5, 2, 3, 5 and 7 times the
    powers of ten."""
    lo, hi = min(losses), max(losses)
    return [m * 10.0 ** d
            for d in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in (1, 1.5, 2, 3, 5, 7) if lo / 1.05 <= m * 10.0 ** d <= hi * 1.05]


def plot_forgetting(arms: list[Arm], path: Path) -> Path:
    """Forgetting vs accuracy of every report run (one dot each), colour per arm, marker
    shape per base; a legend for each, beside the panel."""
    fig, ax = plt.subplots(figsize=(9.5, 5))
    styles = arm_styles(arms)
    for a in arms:
        if a.report:
            ax.scatter([r["accuracy"] for r in a.report], [forgetting(r) for r in a.report],
                       marker=BASE_MARKERS.get(a.base, "s"), color=styles[a.name]["color"])
    ax.set(xlabel="test accuracy (fraction exact match)",
           ylabel="forgetting: source val loss after - before (nats/byte)",
           title="forgetting vs accuracy, every report-seed run (no intervals: one dot a run)")
    ax.grid(alpha=0.3)
    drawn = [a for a in arms if a.report]
    # the marker legend first, as an extra artist: the layout makes room for the axes' own
    # legend (the wider, colour one) only
    ax.add_artist(ax.legend(
        handles=[plt.Line2D([], [], ls="", marker=BASE_MARKERS.get(b, "s"), color="grey",
                            label=f"{BASE_WORDS.get(b, b)} base")
                 for b in dict.fromkeys(a.base for a in drawn)],
        title="base (marker)", fontsize=LEGEND_FONT, loc="lower left", bbox_to_anchor=(1.02, 0)))
    ax.legend(handles=[plt.Line2D([], [], ls="", marker="o", color=styles[n]["color"], label=n)
                       for n in dict.fromkeys(a.name for a in drawn)],
              title="arm (colour)", fontsize=LEGEND_FONT, loc="upper left",
              bbox_to_anchor=(1.02, 1))
    return save(fig, path)


def base_lines(out: Path, sweeps: dict) -> list[str]:
    lines = []
    for base in BASES:
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


def study_runs(out: Path) -> list[Run]:
    """Every run the study recorded, finished or not: the bases' pretraining sweeps, then the
    fine-tuning runs (each labelled by :func:`run_kind`)."""
    return [load_run(m) for pattern in (BASE_RECORDS, FT_RECORDS)
            for m in find_records(out, pattern)]


def run_kind(run: Run, out: Path) -> str:
    return BASE_KIND if run.path.relative_to(out).parts[0] == BASES_DIR else FT_KIND


def hardware(out: Path) -> str:
    """Where, in which precision and at what CPU time every run of the study ran (the bases'
    pretraining included), from its records, the CPU time split into bases and fine-tuning."""
    return provenance_section(
        study_provenance(study_runs(out), out, lambda r: run_kind(r, out)), cost_by_group=True)


def read_study(out: Path) -> tuple[dict, dict]:
    """(``study.json``, ``sweeps.json``) of the study in ``out`` (no sweeps yet: {})."""
    if not (out / "study.json").exists():
        raise FileNotFoundError(f"{out} holds no fine-tuning study (no study.json)")
    settings = json.loads((out / "study.json").read_text())
    path = out / "sweeps.json"
    return settings, json.loads(path.read_text()) if path.exists() else {}


def load_arms(out_dir: str | Path) -> list[Arm]:
    """The arms of the study in ``out_dir`` from its written ``runs.jsonl`` (plain or packed)
    and ``sweeps.json``: what the README's verdict reads."""
    out = Path(out_dir)
    settings, sweeps = read_study(out)
    return arms_of(read_jsonl(out / RUNS), sweeps, sorted(settings["report_seeds"]))


def build_finetune_report(out_dir: str | Path) -> dict[str, Path]:
    """Write ``runs.jsonl`` (packed when the study's is: :func:`write_records`), the figures
    and ``report.md`` of the study in ``out_dir``; returns their paths by name."""
    out = Path(out_dir)
    settings, sweeps = read_study(out)
    lines = collect_runs(out, settings["tune_seed"])
    write_records(out / RUNS, "".join(json.dumps(line) + "\n" for line in lines))
    arms = arms_of(lines, sweeps, sorted(settings["report_seeds"]))
    paths = {"runs": out / RUNS,
             "accuracy_vs_lr": plot_accuracy_vs_lr(arms, sweeps, out / "accuracy_vs_lr.png"),
             "forgetting": plot_forgetting(arms, out / "forgetting.png")}
    unfinished = [f"{a.base}/{a.name}" for a in arms if not a.finished]
    text = [
        "# Fine-tuning study: AdamW vs Muon on an AdamW- and a Muon-pretrained base", "",
        f"Corpus sha256 {settings['corpus_sha256']}; {len(lines)} finished fine-tuning runs; "
        f"test accuracy on {settings['task_test']} word problems (greedy exact match), "
        f"report seeds {settings['report_seeds']} at each arm's LR, chosen on seed "
        f"{settings['tune_seed']} by the fine-tuning validation loss.", "",
        "## Verdict", "", verdict_text(arms, sweeps), "",
        "## Bases", "", *base_lines(out, sweeps), "",
        "## Arms (mean and 95% t interval over the report seeds)", "", *arm_lines(out, arms),
        "", arm_table(arms),
        "Unfinished: " + (", ".join(unfinished) if unfinished else "none") + ".", "",
        "## The questions (differences paired by report seed, 95% t intervals)", "",
        *question_sections(arms, sweeps),
        "## Sweeps", "",
        *[f"- {a.base}/{a.name}: {a.note}" for a in arms], "",
        "![accuracy vs LR](accuracy_vs_lr.png)", "", "![forgetting](forgetting.png)", "",
        hardware(out),
    ]
    (out / REPORT).write_text("\n".join(text))  # the hardware section ends the last line
    return {**paths, "report": out / REPORT}
