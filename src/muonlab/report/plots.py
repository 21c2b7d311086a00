"""Every figure of the lab's reports, from the result records (Agg backend: files only).

One palette keyed by optimizer (arm) name gives each optimizer the same colour in every figure
(:func:`color`); every error bar and band is a 95% t interval over seeds from the statistics
layer (:func:`muonlab.report.stats.summarize`), labelled with what it is and its n
(:func:`interval_label`; in a study's figures over its report seeds, named:
:func:`interval_entry`); log axes carry their ticks at the plotted values (:func:`ticks_at`);
every panel has a title and axis labels with units, and a legend. Every figure is written by
:func:`save`: a PNG with a 256-colour palette.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402
from PIL import Image  # noqa: E402  (matplotlib's own dependency)

from muonkit import registry  # noqa: E402
from muonkit.registry import ADAMW, KRONECKER, LORAPRE, MUON, NORMUON  # noqa: E402

from .metrics import Run, common_val_steps, mean_curve, val_loss_at  # noqa: E402
from .records import replace_file  # noqa: E402
from .stats import report_runs, summarize  # noqa: E402
from .tables import fmt_bytes  # noqa: E402

# one colour per optimizer, keyed by the name with case, punctuation and a trailing
# parenthesis removed ("LoRA-Pre r=16" and "lorapre-r16" are one optimizer)
PALETTE = {
    ADAMW: "#1f77b4", MUON: "#d62728", "muonwd": "#ff7f0e", "muonmoonlight": "#9467bd",
    "muonseed": "#8c564b", NORMUON: "#e377c2", KRONECKER: "#2ca02c",
    "kroneckerhybrid": "#17becf", "hybridkronecker": "#17becf", LORAPRE: "#bcbd22",
    "loraprer1": "#bcbd22", "loraprer2": "#dbdb8d", "loraprer4": "#7f7f7f",
    "loraprer8": "#aec7e8",
    "loraprer16": "#393b79", "loraprer32": "#637939", "loraprer64": "#8c6d31",
    "loraprer128": "#843c39", "loraprer256": "#7b4173", "muongradientheavy": "#ff9896",
    "loraprer16gradientheavy": "#9edae5", "loraprer256gradientheavy": "#c5b0d5",
    # the factor-step ablations: lighter shades of their rank's colour family
    "loraprer1gamma02": "#e7ba52", "loraprer1gamma05": "#e7cb94",
    "loraprer16gamma02": "#6b6ecf", "loraprer16gamma05": "#9c9ede",
    "muonnomomentum": "#ad494a",  # the variant study's momentum-0 ablation
    # the fine-tuning study's arms: muon-kj is Muon (muon-moonlight is above); each other arm
    # a colour no other optimizer has
    "muonkj": "#d62728", "muonfromadamw": "#e69f00", "muoncarry": "#000000",
    "notesfailed": "#666666", "emaonly": "#c51b7d", "maxdimonly": "#009e73",
    "loraadamw": "#56b4e9", "loramuon": "#808000",
}
# an unknown name's colours: matplotlib's tab20, tab20b and tab20c less the palette's own
FALLBACK = tuple(dict.fromkeys(
    c for cmap in ("tab20", "tab20b", "tab20c") for c in map(to_hex, plt.get_cmap(cmap).colors)
    if c not in PALETTE.values()))
BAND = 0.2  # alpha of the interval bands
LEGEND_INSIDE = 6  # the most legend entries a panel holds over its curves
LEGEND_FONT = 9  # legible (~9 px) in a wide multi-panel figure shown ~880 px wide


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _known(name: str) -> str | None:
    """``name``'s colour in :data:`PALETTE` (None: an unknown name)."""
    for key in (_key(name), _key(re.sub(r"\s*\((equal memory|full)\)", "", name))):
        if key in PALETTE:
            return PALETTE[key]
    return None


def color(name: str, among: Sequence[str] = ()) -> str:
    """The optimizer's colour (hex) in every figure. An unknown name gets one of
    :data:`FALLBACK`, colours no optimizer of the palette has: the one its name hashes to
    (crc32), the same in every figure. ``among``, the names one figure draws: the unknown
    ones among them (and ``name``) take their colours in sorted order, each the one it hashes
    to or, when an earlier one took that, the next free one, so that distinct unknown names
    of a figure differ (while there are fewer of them than fallback colours); a name keeps
    its hashed colour unless an earlier-sorted unknown name of the figure took it."""
    if (known := _known(name)) is not None:
        return known
    taken: dict[str, int] = {}  # unknown name's key -> its index in FALLBACK
    for key in sorted({_key(n) for n in (*among, name) if _known(n) is None}):
        slot = zlib.crc32(key.encode()) % len(FALLBACK)
        free = [i % len(FALLBACK) for i in range(slot, slot + len(FALLBACK))
                if i % len(FALLBACK) not in taken.values()]
        taken[key] = free[0] if free else slot
    return FALLBACK[taken[_key(name)]]


PAIRED = "paired over the report seeds"  # a difference's interval (the statistics layer's)


def interval_label(ns: Sequence[int], over: str = "over seeds") -> str:
    """What the bars or bands are: ``95% t interval over seeds, n=3`` (``n=2-3`` when the
    cells differ; a single seed has none)."""
    lo, hi = min(ns), max(ns)
    n = f"n={lo}" if lo == hi else f"n={lo}-{hi}"
    return ("no interval (1 seed)" if hi < 2
            else f"bars/bands: 95% t interval {over}, {n}")


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, lower, upper error-bar length) of the 95% t interval (0 without one)."""
    s = summarize(values)
    if math.isnan(s.lo):
        return s.mean, 0.0, 0.0
    return s.mean, s.mean - s.lo, s.hi - s.mean


def bands(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) per column of ``values`` (runs x points): the 95% t interval."""
    sums = [summarize(values[:, j]) for j in range(values.shape[1])]
    mean = np.array([s.mean for s in sums])
    lo = np.array([s.mean if math.isnan(s.lo) else s.lo for s in sums])
    hi = np.array([s.mean if math.isnan(s.hi) else s.hi for s in sums])
    return mean, lo, hi


def ticks_at(ax, values: Sequence[float], axis: str = "x",
             fmt: Callable[[float], str] = lambda v: f"{v:g}", close: float = 1.1) -> None:
    """Major ticks of a (log) axis at the plotted values, no minor ticks; values within a
    factor ``close`` of each other share one tick, labelled with each."""
    groups: list[list[float]] = []
    for v in sorted(set(values)):
        if groups and v <= groups[-1][0] * close:
            groups[-1].append(v)
        else:
            groups.append([v])
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator([g[0] for g in groups]))
    target.set_minor_locator(NullLocator())
    labels = ["\n".join(fmt(v) for v in g) for g in groups]
    (ax.set_xticklabels if axis == "x" else ax.set_yticklabels)(labels)


def legend(ax, ns: Sequence[int] | None = None, label: str = "over seeds", **kwargs) -> None:
    """The panel's legend, with an entry saying what its bars or bands are (``label``: what
    their interval is over)."""
    handles, labels = ax.get_legend_handles_labels()
    if ns:
        handles.append(Patch(color="grey", alpha=0.35))
        labels.append(interval_label(ns, label))
    if handles:
        ax.legend(handles, labels, fontsize=kwargs.pop("fontsize", LEGEND_FONT), **kwargs)


def set_title(fig, title: str) -> None:
    """``title`` over the whole figure, wrapped to its width (~10 characters per inch at the
    title's font size), so a one-panel figure shows all of it."""
    fig.suptitle(textwrap.fill(title, width=max(30, int(10 * fig.get_figwidth()))))


def save(fig, path: str | Path, title: str = "", dpi: int = 110) -> Path:
    """Write ``fig`` (laid out, under ``title``) to the PNG ``path`` and close it. The image is
    quantised to the 256 colours it covers most pixels with (each pixel to the nearest, no
    dithering): every colour drawn on many pixels, each optimizer's line among them, stays
    exact (a median cut merged two optimizers' colours), and lines and text on white look the
    same at about a third of the bytes of matplotlib's RGBA file, which keeps the committed
    reports small. Written through a temporary file (:func:`muonlab.report.records.replace_file`):
    an interrupted save leaves the previous figure."""
    if title:
        set_title(fig, title)
    fig.tight_layout()
    rendered = io.BytesIO()
    fig.savefig(rendered, format="png", dpi=dpi)
    plt.close(fig)
    image = most_used_colours(Image.open(rendered).convert("RGB"))
    path = Path(path)
    replace_file(path, lambda f: image.save(f, format="png", optimize=True))
    return path


def _rgb(codes: np.ndarray) -> np.ndarray:
    """Colours coded ``r << 16 | g << 8 | b`` as rows (r, g, b)."""
    return np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=-1)


def most_used_colours(image: Image.Image, colors: int = 256) -> Image.Image:
    """The RGB ``image`` as a palette image of the ``colors`` colours that cover most of its
    pixels, every other pixel mapped to the nearest of them: those colours stay exact (PIL's
    own palette mapping rounds them, white to 252)."""
    rgb = np.asarray(image, dtype=np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    unique, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    kept = _rgb(unique[np.argsort(-counts, kind="stable")[:colors]]).astype(np.float32)
    seen = _rgb(unique).astype(np.float32)
    # squared distances |u|^2 - 2 u.k + |k|^2, one row per colour seen (not per pixel)
    distance = (seen ** 2).sum(1)[:, None] - 2 * seen @ kept.T + (kept ** 2).sum(1)[None, :]
    nearest = distance.argmin(1).astype(np.uint8)
    out = Image.fromarray(nearest[inverse].reshape(codes.shape), mode="P")
    out.putpalette(kept.astype(np.uint8).ravel().tolist())
    return out


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    if window <= 1 or len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def val_matrix(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray]:
    """(steps all runs evaluated, their val losses: runs x steps)."""
    steps = common_val_steps(runs)
    return (np.array(steps, dtype=float),
            np.array([[val_loss_at(r, s) for s in steps] for r in runs]))


def val_stats(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean val loss, std, mean elapsed seconds) on the steps all runs evaluated."""
    steps, losses = val_matrix(runs)
    elapsed = np.array([[next(v["elapsed_s"] for v in r.val if int(v["step"]) == s)
                         for s in steps] for r in runs])
    std = losses.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
    return steps, losses.mean(axis=0), std, elapsed.mean(axis=0)


def plot_loss_curves(groups: dict[str, Sequence[Run]], path: str | Path, title: str = "",
                     tuning_seeds: Sequence[int] = ()) -> Path:
    """The compare figure: train (smoothed, mean over the report seeds) and val loss vs step
    from step 0, and val loss vs wall-clock seconds; bands are the 95% t interval of the val
    loss over the report seeds (``tuning_seeds``, which chose the LRs, left out)."""
    fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    seeds = []
    for label, runs in groups.items():
        runs = list(report_runs(runs, tuning_seeds).report)
        if not runs:  # every run tuned: nothing to report
            continue
        c, n = color(label), len(runs)
        seeds.append([r.seed for r in runs])
        steps, mean, _ = mean_curve(runs, "loss")
        ax_step.plot(steps, smooth(mean, max(1, len(steps) // 100)), color=c, alpha=0.45, lw=1,
                     label=f"{label} train (moving average)")
        vsteps, losses = val_matrix(runs)
        vmean, lo, hi = bands(losses)
        velapsed = val_stats(runs)[3]
        for ax, x in ((ax_step, vsteps), (ax_time, velapsed)):
            ax.plot(x, vmean, "o-", color=c, lw=2, ms=3, label=f"{label} val (n={n})")
            ax.fill_between(x, lo, hi, color=c, alpha=BAND, lw=0)
    ax_step.set(xlabel="step", ylabel="loss (nats/token)",
                title="train and val loss vs step (from step 0)")
    ax_time.set(xlabel="training wall-clock (s)", ylabel="val loss (nats/token)",
                title="val loss vs training time")
    for ax in (ax_step, ax_time):
        ax.grid(alpha=0.3)
        interval_entry(ax, seeds, over="report seeds" if tuning_seeds else "seeds")
        legend(ax)
    return save(fig, path, title)


def seed_list(seeds: Sequence[int]) -> str:
    """``1-5`` for three or more consecutive seeds, else ``1, 3``."""
    s = sorted(set(seeds))
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ", ".join(map(str, s))


def interval_entry(ax, seed_sets: Sequence[Sequence[int]], what: str = "band",
                   test: str = "t", over: str = "report seeds") -> None:
    """A legend entry saying what the panel's bars or bands (``what``) are, drawn like them:
    ``band: 95% t interval over report seeds 1-5 (n=5)`` (``seed_sets``: the seeds of each
    plotted interval); with one seed per cell an empty handle, ``no interval (one report
    seed: 1)``."""
    ns = [len(s) for s in seed_sets]
    if not ns:
        return
    seeds = seed_list([s for ss in seed_sets for s in ss])
    if max(ns) < 2:  # an empty handle, in the legend's place for the panel's bars or bands
        text = f"no interval (one {over[:-1]}: {seeds})"
        if what == "band":
            ax.plot([], [], ls="none", label=text)
        else:
            ax.errorbar([], [], ls="none", color="none", label=text)
        return
    n = f"n={ns[0]}" if min(ns) == max(ns) else f"n={min(ns)}-{max(ns)}"
    text = f"{what}: 95% {test} interval over {over} {seeds} ({n})"
    if what == "band":
        ax.fill_between([], [], [], color="grey", alpha=0.35, lw=0, label=text)
    else:
        ax.errorbar([], [], yerr=[[], []], color="grey", capsize=3, ls="none", label=text)


def reported(study, cell) -> list[Run]:
    """``cell``'s runs on the report seeds: the study's tuning seed, which chose the LRs,
    left out (:func:`muonlab.report.stats.report_runs`), as the verdicts are."""
    return list(report_runs(cell.runs, (study.tuning_seed,)).report)


def offsets(n: int, step: float = 1.06) -> list[float]:
    """Factors that spread ``n`` contenders' points around a log-x position (``step`` apart,
    centred), so their error bars do not sit on top of each other."""
    return [step ** (i - (n - 1) / 2) for i in range(n)]


def study_name(study) -> str:
    """``horizon: tiny GPT on tinyshakespeare (tuned: LR)``: the study's folder, the model
    preset and data of a horizon-layout study (a built corpus by what the runs recorded of
    it: tokenizer, training tokens and the start of its sha256, not its local path) and what
    its sweeps tuned (``study.tuned()``)."""
    hashes = study.corpus_hashes()
    data = study.settings["data"]
    if len(hashes) == 1:
        rec = next((d for r in study.started
                    if (d := r.config.get("config", {}).get("data", {})).get("corpus_sha256")),
                   {})
        tokens = (f", {rec['train_tokens'] / 1e6:.1f}M training tokens"
                  if rec.get("train_tokens") else "")
        data = (f"a built {rec.get('tokenizer', 'token')}-level corpus (sha256 "
                f"{hashes[0][:8]}...{tokens})")
    return (f"{study.out.name}: {study.settings['preset']} GPT on {data} (tuned: "
            f"{study.tuned()})")


def horizon_ticks(ax, study) -> None:
    """Ticks at the horizons, labelled with their tokens per parameter (2 significant
    digits) where the study recorded them (``200\\n(2)``; the axis label says so)."""
    per_param = study.settings.get("horizon_tokens_per_param")
    tpp = dict(zip(study.horizons, per_param)) if per_param else {}
    ticks_at(ax, study.horizons,
             fmt=lambda h: f"{h:g}\n({float(f'{tpp[h]:.2g}'):g})" if h in tpp else f"{h:g}")
    ax.set_xlabel("horizon: steps (tokens per parameter), log" if tpp
                  else "horizon (steps, log)")


def plot_horizon(study, path: Path, gaps: dict) -> Path:
    """Final val loss vs horizon (95% t intervals over the report seeds) and each
    contender's gap to AdamW vs horizon: ``gaps[(horizon, name)]``, the statistics layer's
    paired comparison over the report seeds (:class:`muonlab.report.stats.Comparison`), its
    interval as bars; ticks at the horizons, each contender's points offset a little in x so
    their bars stay apart. A study of one horizon: a dot chart, one column per contender.
    The legends below the panels, off the data."""
    fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(12, 5.5))
    names = study.names()
    single = len(study.horizons) == 1
    seeds, paired = [], []
    for i, (name, shift) in enumerate(zip(names, offsets(len(names)))):
        cells = [c for h in study.horizons if (c := study.ready(h, name))]
        if not cells:
            continue
        x = {h: i if single else h * shift for h in study.horizons}  # where its points stand
        runs = [reported(study, c) for c in cells]
        seeds += [[r.seed for r in rs] for rs in runs]
        stats = [interval([r.val[-1]["val_loss"] for r in rs]) for rs in runs]
        ax_loss.errorbar([x[c.horizon] for c in cells], [s[0] for s in stats],
                         yerr=[[s[1] for s in stats], [s[2] for s in stats]], marker="o",
                         capsize=3, color=color(name), label=name)
        found = [(h, g) for h in study.horizons if (g := gaps.get((h, name))) is not None]
        if name != ADAMW and found:
            base = {h: {r.seed for r in reported(study, c)}
                    for h in study.horizons if (c := study.ready(h, ADAMW))}
            paired += [sorted({r.seed for r in reported(study, c)} & base.get(c.horizon, set()))
                       for c in cells if (c.horizon, name) in gaps]
            ax_gap.errorbar([x[h] for h, _ in found], [g.diff for _, g in found],
                            yerr=[[g.diff - g.lo for _, g in found],
                                  [g.hi - g.diff for _, g in found]],
                            marker="o", capsize=3, color=color(name), label=name)
    ax_gap.axhline(0, color="k", lw=0.8, label="AdamW (the reference: 0)")
    where = "per contender" if single else "vs horizon"
    ax_loss.set(ylabel="final val loss (nats/token)", title=f"final val loss {where}")
    ax_gap.set(ylabel="val loss - AdamW's, paired by seed (nats/token)",
               title=f"gap to AdamW {where} (below 0: lower loss)")
    interval_entry(ax_loss, seeds, "bars")
    interval_entry(ax_gap, paired, "bars", test="paired-t")
    for ax in (ax_loss, ax_gap):
        if single:
            ax.set_xticks(range(len(names)), names)
            ax.set(xlim=(-0.5, len(names) - 0.5),
                   xlabel=f"contender (each at its tuned settings, {study.horizons[0]} steps)")
        else:
            ax.set_xscale("log")
            horizon_ticks(ax, study)
        ax.grid(alpha=0.3)
        legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=9)
    tuned = (f"each contender tuned at {study.horizons[0]} steps" if single else
             "each contender tuned at each horizon (points offset in x to keep the bars apart)")
    return save(fig, path, f"{study_name(study)}: {tuned}")


def plot_val_curves(study, path: Path) -> Path:
    """Mean val loss vs step from step 0 at each horizon (one panel each), bands the 95% t
    interval over the report seeds; with more than :data:`LEGEND_INSIDE` contenders the
    legends stand beside the panels, off the curves, and a second row shows each
    contender's mean curve minus dense Muon's (mean over the report seeds), where curves
    within a few hundredths of a nat come apart."""
    names = study.names()
    beside = len(names) > LEGEND_INSIDE
    rows = 2 if beside and MUON in names else 1
    fig, axes = plt.subplots(rows, len(study.horizons), squeeze=False,
                             figsize=(max(7, (5 + 2.5 * beside) * len(study.horizons)), 4 * rows))
    for j, h in enumerate(study.horizons):
        ax = axes[0][j]
        seeds, curves = [], {}
        for name in names:
            cell = study.ready(h, name)
            if cell is None:
                continue
            runs = reported(study, cell)
            steps, losses = val_matrix(runs)
            mean, lo, hi = bands(losses)
            curves[name] = steps, mean
            seeds.append([r.seed for r in runs])
            ax.plot(steps, mean, marker=".", color=color(name), label=name)
            ax.fill_between(steps, lo, hi, color=color(name), alpha=BAND, lw=0)
        ax.set(xlabel="step", ylabel="val loss (nats/token)", title=f"val loss, {h}-step runs")
        interval_entry(ax, seeds)
        where = {"loc": "upper left", "bbox_to_anchor": (1.02, 1)} if beside else {}
        ax.grid(alpha=0.3)
        legend(ax, **where, **({"fontsize": 9} if beside else {}))
        if rows == 2:
            versus_curve(axes[1][j], curves, h)
            legend(axes[1][j], **where, fontsize=9)
    return save(fig, path, f"{study_name(study)}: val loss during training, mean over the "
                           "report seeds")


def versus_curve(ax, curves: dict, h: int) -> None:
    """Each contender's mean val curve minus dense Muon's at the steps both evaluated."""
    if MUON not in curves:
        return
    ref = dict(zip(*curves[MUON]))
    for name, (steps, mean) in curves.items():
        at = [(s, m - ref[s]) for s, m in zip(steps, mean) if s in ref and s > 0]
        if at and name != MUON:
            ax.plot(*zip(*at), marker=".", color=color(name), label=name)
    ax.axhline(0, color=color(MUON), lw=1.2, label=f"{MUON} (reference)")
    ax.set(xlabel="step", ylabel=f"val loss - {MUON}'s (nats/token)",
           title=f"minus dense Muon's mean curve, {h}-step runs")
    ax.grid(alpha=0.3)


LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "v", "D", "x", "+")


def plot_rms(study, path: Path, records, seed: int, run_of: Callable) -> Path:
    """Weight RMS (top, from the step-0 record on) and update RMS per step (bottom, the
    records that carry one) of the hidden matrices vs step, the run with ``seed`` of each
    cell (``run_of(cell)``); each contender with its own line style and marker, so curves on
    top of each other stay visible."""
    n = len(study.horizons)
    fig, axes = plt.subplots(2, n, figsize=(5 * n + 1.5, 7), squeeze=False)
    for j, h in enumerate(study.horizons):
        for i, name in enumerate(study.names()):
            cell = study.ready(h, name)
            run = run_of(cell)
            recs = records(run) if run else []
            if not recs:
                continue
            style = {"color": color(name), "label": name, "ls": LINESTYLES[i % len(LINESTYLES)],
                     "marker": MARKERS[i % len(MARKERS)], "markevery": 0.1 + 0.017 * i, "ms": 4}
            axes[0][j].plot([r["step"] for r in recs], [r["weight_rms"] for r in recs], **style)
            updates = [r for r in recs if r.get("update_rms")]
            axes[1][j].plot([r["step"] for r in updates], [r["update_rms"] for r in updates],
                            **style)
        axes[0][j].set(title=f"weight RMS, {h}-step runs (seed {seed})",
                       xlabel="step", ylabel="weight RMS (weight units)")
        axes[1][j].set(title=f"update RMS, {h}-step runs (seed {seed})",
                       xlabel="step", ylabel="RMS of one step's change (weight units, log)",
                       yscale="log")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    for ax in axes[:, -1]:  # the contenders are the same in every panel: one legend per row,
        legend(ax, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside it, off the curves
    return save(fig, path, f"{study_name(study)}: weight and update RMS of the hidden matrices")


def plot_state_memory(cells: list, state_bytes: Callable, path: Path, title: str,
                      tuning_seed: int | None = None) -> Path:
    """GPT variants: final val loss (95% t interval over the report seeds: ``tuning_seed``
    left out) against the optimizer-state bytes, total (left) and Muon part (right; AdamW
    has none), log x with ticks at the plotted sizes (sizes within 5% share one label);
    points at about the same size offset a little in x, in a fixed order, so none hides
    another; the legends beside the panels, where no point can lie under them."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    xs: list[list[int]] = [[], []]
    seeds = []
    for i, ax in enumerate(axes):
        sizes = [state_bytes(c)[1 - i] for c in cells]
        shown = [s for s in sizes if s] or [1]
        # close points 3% of the log axis apart: a marker's width on this panel
        step = max(1.03, (max(shown) / min(shown)) ** 0.03)
        for cell, x, shift in zip(cells, sizes, near_offsets(sizes, step=step)):
            if not x:
                continue
            runs = list(report_runs(cell.runs, () if tuning_seed is None else (tuning_seed,))
                        .report)
            mean, lo, hi = interval([r.val[-1]["val_loss"] for r in runs])
            if i == 0:
                seeds.append([r.seed for r in runs])
            xs[i].append(x)
            ax.errorbar([x * shift], [mean], yerr=[[lo], [hi]], marker="o", capsize=3,
                        color=color(cell.name), label=cell.name)
    for ax, which, x in zip(axes, ("total", "Muon part"), xs):
        ax.set(xscale="log", xlabel=f"optimizer state, {which} (bytes, log)",
               ylabel="final val loss (nats/token)",
               title=f"final val loss vs optimizer state ({which})")
        if x:
            ticks_at(ax, x, fmt=short_bytes, close=1.05)
            # one line per tick, every other one a line lower: neighbours cannot collide
            ax.set_xticklabels([("\n" if k % 2 else "") + one_line(t.get_text())
                                for k, t in enumerate(ax.get_xticklabels())], fontsize=9)
        ax.grid(alpha=0.3)
    interval_entry(axes[0], seeds, "bars",
                   over="report seeds" if tuning_seed is not None else "seeds")
    # one legend (every contender: AdamW has no Muon part) beside the right panel; the left
    # panel's names the interval
    axes[1].legend(*axes[0].get_legend_handles_labels(), loc="upper left",
                   bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return save(fig, path, title)


def short_bytes(n: float) -> str:
    """Bytes to 3 significant digits, for a tick: ``170 KiB``, ``3.13 MiB``."""
    return re.sub(r"^([\d.]+)", lambda m: f"{float(m[1]):.3g}", fmt_bytes(n))


def one_line(label: str) -> str:
    """A tick label of several sizes (one per line, :func:`ticks_at`) on one line, each
    value once and the unit said once where they share it: ``170 / 171 / 216 KiB``."""
    parts = list(dict.fromkeys(label.splitlines()))
    units = {p.rsplit(" ", 1)[-1] for p in parts}
    if len(parts) > 1 and len(units) == 1:
        return " / ".join(p.rsplit(" ", 1)[0] for p in parts) + f" {units.pop()}"
    return " / ".join(parts)


def near_offsets(sizes: Sequence[int], close: float = 1.05, step: float = 1.06) -> list[float]:
    """x factors for points at ``sizes``: those within a factor ``close`` of each other
    spread ``step`` apart around their group (:func:`offsets`), in the given order; 1 for a
    point alone."""
    order = sorted(range(len(sizes)), key=lambda k: sizes[k])
    out = [1.0] * len(sizes)
    group: list[int] = []
    for k in [*order, None]:
        if k is not None and group and sizes[k] and sizes[k] <= sizes[group[0]] * close:
            group.append(k)
            continue
        for g, f in zip(sorted(group), offsets(len(group), step)):
            out[g] = f
        group = [] if k is None else [k]
    return out


def plot_epoch_curves(groups: dict[str, list[Run]], rows: list[dict], path: Path,
                      title: str) -> Path:
    """MNIST variants: training loss per step (smoothed, mean over seeds), train and test
    accuracy per epoch (95% t interval bands over seeds; ticks at the evaluated epochs),
    optimizer state per optimizer (bars on a linear axis from 0, each labelled with its
    size)."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ns, evaluated = [], set()
    for row in rows:
        group, c = groups[row["optimizer"]], color(row["optimizer"])
        ns.append(len(group))
        losses = np.array([[t["loss"] for t in r.train] for r in group]).mean(0)
        steps_per_epoch = len(group[0].train) / len(group[0].epochs)
        window = max(1, int(steps_per_epoch // 10))
        x = (np.arange(len(losses)) + 1) / steps_per_epoch
        axes[0, 0].plot(x, smooth(losses, window), color=c, label=row["optimizer"])
        for ax, key in ((axes[0, 1], "train_acc"), (axes[1, 0], "test_acc")):
            vals = np.array([[100 * e[key] for e in r.epochs] for r in group])
            epochs = [e["epoch"] for e in group[0].epochs]
            evaluated.update(epochs)
            mean, lo, hi = bands(vals)
            ax.plot(epochs, mean, "o-", color=c, label=row["optimizer"])
            ax.fill_between(epochs, lo, hi, color=c, alpha=BAND)
    axes[0, 0].set(title="training loss (moving average, mean over seeds)", xlabel="epoch",
                   ylabel="cross-entropy (nats, log)", yscale="log")
    axes[0, 1].set(title="train accuracy", xlabel="epoch", ylabel="accuracy (%)")
    axes[1, 0].set(title="test accuracy", xlabel="epoch", ylabel="accuracy (%)")
    axes[0, 0].set_xticks(range(int(max(evaluated, default=0)) + 1))  # epoch boundaries
    for ax in (axes[0, 1], axes[1, 0]):
        ax.set_xticks(sorted(evaluated))  # the evaluated epochs, nothing between
    names = [r["optimizer"] for r in rows]
    sizes = [r["state_bytes"] / 1024 for r in rows]
    # bar lengths are read from 0: a linear axis, the size printed on each bar
    bars = axes[1, 1].barh(names, sizes, color=[color(n) for n in names])
    axes[1, 1].bar_label(bars, labels=[fmt_bytes(r["state_bytes"]) for r in rows], padding=3)
    axes[1, 1].set(title="optimizer state", xlabel="state (KiB)")
    axes[1, 1].invert_yaxis()
    axes[1, 1].set_xlim(0, max(sizes) * 1.25)
    for ax in axes.flat[:3]:
        ax.grid(alpha=0.3)
    legend(axes[0, 0])
    legend(axes[0, 1], ns)
    legend(axes[1, 0], ns)
    return save(fig, path, title)


def kib(n: float) -> str:
    """Bytes as KiB with 3 significant digits (``5.38``, ``24.4``, ``917``, ``1833``): a byte
    axis' tick label, the unit in the axis label."""
    k = n / 1024
    return f"{k:.2f}" if k < 10 else f"{k:.1f}" if k < 100 else f"{k:.0f}"


def staggered_byte_ticks(ax, sizes: Sequence[float]) -> None:
    """Ticks of a log byte axis at ``sizes`` in KiB (:func:`ticks_at`; sizes within 20% share
    one tick, labelled with each), horizontal, every other tick's label one row lower so that
    neighbours a factor ~1.3 apart do not overlap."""
    ticks_at(ax, sizes, fmt=kib, close=1.2)
    size = 7
    ax.tick_params(axis="x", labelsize=size)
    rows = max((t.get_text().count("\n") + 1 for t in ax.get_xticklabels()), default=1)
    for tick in ax.xaxis.get_major_ticks()[1::2]:
        tick.set_pad(tick.get_pad() + 1.25 * size * rows)


def _overlap(a: tuple, b: tuple) -> float:
    """Area shared by two boxes (x0, x1, y0, y1)."""
    return (max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
            * max(0.0, min(a[3], b[3]) - max(a[2], b[2])))


def label_points(ax, points: Sequence[tuple[float, float, str]],
                 bars: Sequence[tuple[float, float, float]], fontsize: int = 8) -> None:
    """Each point's ``(x, y, text)`` label beside it: up-right, else down-right, up-left or
    down-left, the first whose box covers no marker or error bar (``bars``: every drawn
    ``(x, low, high)``) and no label placed before it (else the one covering least). Boxes
    are estimated in points from the axes' current layout (lay the figure out first)."""
    def at(x, y):
        return ax.transData.transform((x, y)) * 72 / ax.figure.dpi

    taken = []
    for x, lo, hi in bars:
        (px, plo), (_, phi) = at(x, lo), at(x, hi)
        taken.append((px - 4, px + 4, min(plo, phi) - 4, max(plo, phi) + 4))
    for x, y, text in points:
        px, py = at(x, y)
        w, h = 0.6 * fontsize * len(text), 1.3 * fontsize
        boxes = [(px + dx, px + dx + w, py + dy, py + dy + h)
                 for dx, dy in ((4, 4), (4, -4 - h), (-4 - w, 4), (-4 - w, -4 - h))]
        box = min(boxes, key=lambda b: sum(_overlap(b, t) for t in taken))
        taken.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", fontsize=fontsize,
                    xytext=(box[0] - px, box[2] - py), ha="left", va="bottom",
                    bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none",
                          "alpha": 0.7})


def plot_memory_tradeoff(rows: list[dict], path: Path, title: str) -> Path:
    """MNIST variants: final test accuracy (left) and final-epoch train loss (right) against
    optimizer-state bytes, 95% t intervals over seeds: the LoRA-Pre ranks as points in each
    rank's colour joined by a grey line, every other optimizer (AdamW, dense Muon, Kronecker) as
    a square with a dashed line at its mean; the legends beside the panels, off the points."""
    fig, axes = plt.subplots(1, 2, figsize=(16, 5))
    # records of older studies carry a former kind name ("lora_pre")
    lora = [r for r in rows if registry.get(registry.canonical_name(r["kind"])).takes_rank]
    others = [r for r in rows if r not in lora]
    ns = [len(r["test_accs"]) for r in rows]
    labels = []
    for ax, key, scale, ylabel, panel in (
        (axes[0], "test_accs", 100, "test accuracy (%)", "final test accuracy"),
        (axes[1], "train_losses", 1, "train loss (cross-entropy, nats)",
         "final-epoch train loss"),
    ):
        stats = [interval([scale * v for v in r[key]]) for r in [*lora, *others]]
        xs = [r["state_bytes"] for r in [*lora, *others]]
        if lora:
            ax.plot(xs[:len(lora)], [s[0] for s in stats[:len(lora)]], color="grey", lw=1,
                    zorder=1)
        for r, x, (mean, lo, hi) in zip(lora, xs, stats):
            ax.errorbar([x], [mean], yerr=[[lo], [hi]], fmt="o", capsize=3,
                        color=color(f"lorapre-r{r['rank']}"), label=f"LoRA-Pre r={r['rank']}")
        for r, x, (mean, lo, hi) in zip(others, xs[len(lora):], stats[len(lora):]):
            ax.axhline(mean, color=color(r["optimizer"]), ls="--", lw=1)
            # "s--" on one point draws no line: the legend's entry shows marker and dashes
            ax.errorbar([x], [mean], yerr=[[lo], [hi]], fmt="s--", color=color(r["optimizer"]),
                        capsize=3, label=f"{r['optimizer']} (dashed: its mean)")
        ax.set(xscale="log", xlabel="optimizer state (KiB, log)", ylabel=ylabel,
               title=f"{panel} vs optimizer state")
        staggered_byte_ticks(ax, xs)
        ax.grid(alpha=0.3)
        legend(ax, ns, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        labels.append((ax, [(x, s[0], f"r={r['rank']}") for r, x, s in zip(lora, xs, stats)],
                       [(x, m - lo, m + hi) for x, (m, lo, hi) in zip(xs, stats)]))
    set_title(fig, title)
    fig.tight_layout()  # the layout save() keeps: the labels are placed in it
    for ax, points, bars in labels:
        label_points(ax, points, bars)
    return save(fig, path)


def plot_lorapre_rank(records: list[dict], path: Path, title: str) -> Path:
    """LoRA-Pre's momentum against dense Muon's per rank over one run
    (:mod:`muonlab.experiments.lorapre_rank`): momentum error (dashed: the best rank-r
    matrix), cosine of the orthogonalized update to Muon's, and the window displacement
    against Muon's (the effective step); the legends under the panels, off the curves."""
    panels = [
        ("momentum_rel_error", "relative error of the momentum\n||BA - M|| / ||M||",
         "momentum vs dense buffer"),
        ("orth_cosine", "cosine to dense Muon's update", "orthogonalized update, per step"),
        ("window_drift_ratio", "||sum of updates|| / dense Muon's",
         "displacement over each window"),
    ]
    ranks = sorted({r["rank"] for r in records if r["rank"] is not None})
    fig, axes = plt.subplots(1, 3, figsize=(14, 5.2))
    for ax, (key, ylabel, panel_title) in zip(axes, panels):
        for r in ranks:
            rows = [x for x in records if x["rank"] == r]
            steps = [x["step"] for x in rows]
            ax.plot(steps, [x[key] for x in rows], color=color(f"lorapre-r{r}"),
                    label=f"LoRA-Pre r={r}")
            if key == "momentum_rel_error":
                ax.plot(steps, [x["best_rank_rel_error"] for x in rows], ls="--", lw=0.8,
                        color=color(f"lorapre-r{r}"))
        if key == "momentum_rel_error":
            ax.plot([], [], ls="--", color="grey", label="best rank-r matrix (SVD)")
        else:
            ax.axhline(1.0, color=color(MUON), lw=1, label="dense Muon")
        ax.set(title=panel_title, xlabel="training step", ylabel=ylabel)
        # below the panel: inside, it covered a curve on some records
        legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return save(fig, path, title)


def coinciding(curves: dict[str, Sequence[float]], tol: float = 0.02) -> list[list[str]]:
    """Groups (of two or more) of the ``curves`` that agree within a relative ``tol`` at
    every point: drawn, they lie on top of each other. Each curve joins the first group whose
    first curve it matches."""
    groups: list[list[str]] = []
    for name, values in curves.items():
        for group in groups:
            first = curves[group[0]]
            if all(abs(a - b) <= tol * max(abs(a), abs(b)) for a, b in zip(values, first)):
                group.append(name)
                break
        else:
            groups.append([name])
    return [g for g in groups if len(g) > 1]


PRECISION_STYLE = {"fp32": "-", "bf16": "--", "mixed": ":"}
# Newton-Schulz coefficients (not optimizers: none of the palette's colours)
NS_COLOUR = {"jordan": "#000000", "polar_express": "#d95f02"}


def plot_orth_accuracy(results: list[dict], methods: dict[str, tuple[str, str, bool]],
                       path: Path, title: str) -> Path:
    """Newton-Schulz accuracy against the exact polar factor vs the number of steps, from the
    records of ``benchmarks/orth_accuracy.py`` (``results``: one per method and step count):
    max |sigma - 1| and 1 - cosine, on the synthetic matrix and on the GPT gradients (worst
    over them). ``methods``: label -> (coefficients, precision, standard form): the colour is
    the coefficients', the line style the precision's, a cross marks the standard form; one
    legend, beside the top-right panel, for all four. Each panel names the variants that
    coincide there (within 2% at every step count)."""
    panels = [("synthetic_max_err", "max |sigma - 1| (log)", "synthetic matrix: max |sigma - 1|"),
              ("synthetic_cos", "1 - cosine to U V^T (log)", "synthetic matrix: 1 - cosine"),
              ("gpt_max_err", "worst max |sigma - 1| (log)", "GPT gradients: max |sigma - 1|"),
              ("gpt_min_cos", "1 - worst cosine (log)", "GPT gradients: 1 - cosine")]
    fig, axes = plt.subplots(2, 2, figsize=(17, 10))
    for ax, (key, ylabel, panel) in zip(axes.flat, panels):
        curves = {}
        for label, (coeffs, precision, standard) in methods.items():
            short = f"{coeffs} {precision}" + (" standard form" if standard and precision == "fp32"
                                               else "")
            rows = sorted((r for r in results if r["method"] == label), key=lambda r: r["steps"])
            steps = [r["steps"] for r in rows]
            values = [1 - r[key] if key.endswith("cos") else r[key] for r in rows]
            curves[short] = values
            ax.plot(steps, values, PRECISION_STYLE[precision], marker="x" if standard else "o",
                    ms=5, lw=1.5, color=NS_COLOUR.get(coeffs, "grey"), label=label)
        ticks_at(ax, steps)
        ax.set(yscale="log", xlabel="Newton-Schulz steps", ylabel=ylabel, title=panel)
        ax.grid(alpha=0.3)
        same = coinciding(curves)
        note = ("drawn on top of each other (within 2% at every step count): "
                + "; ".join(" = ".join(g) for g in same)) if same else "no two lines coincide"
        ax.text(0.0, -0.13, textwrap.fill(note, 85), transform=ax.transAxes,
                fontsize=LEGEND_FONT, va="top")
    legend(axes[0, 1], loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path, title)
