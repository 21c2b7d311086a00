"""The verdicts the README and the study pages state, generated from the committed records.

A page states a result only inside a marked block whose text this module writes from the run
records under ``docs/results`` through the statistics layer (:mod:`muonlab.report.stats`)::

    <!-- verdict:compare-tiny -->
    ...generated text (a paragraph, wrapped at the marker's indent, or a table)...
    <!-- /verdict -->

``muonkit results verdicts`` rewrites every block's text (``--check``: lists the stale ones);
``tests/test_verdicts.py`` fails when a block's text differs from what the layer prints (a
verdict word, an interval or a number changed by hand) and when the prose outside the blocks
states a verdict word, an interval or a mean ± std of its own (:func:`unsupported_claims`).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path

from muonkit.registry import ADAMW, KRONECKER, KRONECKER_HYBRID, LORAPRE, MUON

from ..experiments import variants_gpt as variants_gpt_exp
from . import compare, finetune, horizon, variant_tuned, variants_gpt
from .stats import Comparison
from .tables import fmt_bytes, markdown_table

WIDTH = 96  # the pages' line length
WITH_DECAY = "muon-wd"  # the horizon contender with decoupled weight decay on the Muon matrices
BLOCK = re.compile(r"^(?P<indent>[ \t]*)<!-- verdict:(?P<name>[\w.-]+) -->\n(?P<body>.*?)"
                   r"^(?P=indent)<!-- /verdict -->", re.M | re.S)
# what only a block may state: verdict words, intervals [a, b], mean ± std
CLAIM = re.compile(r"\b(ahead|behind|beats?|beaten|outperforms?|better than|worse than|"
                   r"matches|not resolved|gains ground|loses ground|shrinks?|shrinking|"
                   r"narrows?|widens?)\b|\[[-+]?\d[\d.]*, [-+]?\d[\d.]*\]|\d ± \d", re.I)
MNIST = "variants/mnist-heldout"  # the MNIST variant study the verdicts read, under docs/results
# the arms the README's MNIST line names (the study's run directories)
MNIST_ARMS = (ADAMW, *(f"{LORAPRE}-r{r}" for r in (128, 32, 16, 1)), KRONECKER, KRONECKER_HYBRID)


def grouped(items: list[tuple[str, Comparison]], digits: int = 3, scale: float = 1.0) -> str:
    """``a +0.1 [..]; b -0.2 [..] (each paired t, n=2: not resolved (...))`` when the
    comparisons share test, n and verdict, else each one's full text."""
    shared = {(c.test, c.n, c.verdict, c.reason) for _, c in items}
    if len(shared) == 1 and items[0][1].n:
        c = items[0][1]
        why = f" ({c.reason})" if c.reason else ""
        listed = "; ".join(f"{label} {c.interval_text(digits, scale)}" for label, c in items)
        each = "each " if len(items) > 1 else ""
        return f"{listed} ({each}{c.test}, n={c.n}: {c.verdict}{why})"
    return "; ".join(f"{label} {c.text(digits, scale)}" for label, c in items)


def listed(by_column: dict[str, Comparison | None]) -> str:
    """The finished horizons' comparisons (:func:`grouped`), then each unfinished one (None)."""
    done = [(column, c) for column, c in by_column.items() if c is not None]
    unfinished = [column for column, c in by_column.items() if c is None]
    return "; ".join(([grouped(done)] if done else []) + [f"{c} unfinished" for c in unfinished])


def compare_tiny(results: Path) -> str:
    out = results / "compare-tiny"
    groups, sweep = compare.load_compare(out)
    numbers = compare.compare_numbers(groups, compare.tuning_seeds(sweep))
    finals = numbers["report_finals"]
    versus = numbers["versus"][MUON]["final"]
    return (f"final val loss over the report seeds (seed 0 tuned the LRs): Muon hybrid "
            f"{finals[MUON].text()}, AdamW {finals[ADAMW].text()}; Muon hybrid - AdamW "
            f"{versus.text()}.")


def horizon_gaps(results: Path, folder: str = "horizon"
                 ) -> tuple[horizon.Study, dict[str, dict[str, Comparison | None]]]:
    """The horizon study in ``results / folder`` and {contender: {column: its final val loss -
    AdamW's, None where unfinished}}, a column per horizon (:meth:`horizon.Study.columns`)."""
    study = horizon.load_study(results / folder)
    return study, {name: by_column(study, gaps)
                   for name, gaps in horizon.gaps_to(study, ADAMW).items()}


def by_column(study: horizon.Study, by_horizon: dict[int, Comparison | None]
              ) -> dict[str, Comparison | None]:
    """``by_horizon`` keyed by the study's column names (steps, tokens per parameter)."""
    return dict(zip(study.columns(), (by_horizon[h] for h in study.horizons), strict=True))


def muon_text(study: horizon.Study, gaps: dict[str, dict[str, Comparison | None]]) -> str:
    return (f"tuned Muon hybrid - AdamW, final val loss over the report seeds (seed "
            f"{study.tuning_seed} tuned): " + listed(gaps[MUON]))


def horizon_muon(results: Path, folder: str = "horizon") -> str:
    return muon_text(*horizon_gaps(results, folder)) + "."


def compare_2d(results: Path, folder: str = "compare-2d") -> str:
    """:func:`horizon_muon` of the comparison whose sweeps are two-dimensional (AdamW: LR x
    beta2, the hybrid: LR x weight decay on its matrices), with the pairs they chose."""
    study, gaps = horizon_gaps(results, folder)
    h = study.horizons[-1]
    chosen = [f"{name} LR {cell.lr:g}{cell.second}" for name in (ADAMW, MUON)
              if (cell := study.ready(h, name))]
    return (muon_text(study, gaps) + f"; chosen on seed {study.tuning_seed}: "
            + "; ".join(chosen) + ".")


def compare_groups(results: Path, folder: str = "compare-groups",
                   single: str = "compare-heldout") -> str:
    """:func:`compare_2d`'s text for the study whose arms also tuned their AdamW groups' LRs
    (``--group-lrs``), and each arm minus the same arm with one AdamW LR (the study
    ``single``: the same settings otherwise), paired by report seed."""
    study, one_lr = (horizon.load_study(results / f) for f in (folder, single))
    h = study.horizons[-1]
    items, same = [], []
    for name in (ADAMW, MUON):
        cell, base = study.ready(h, name), one_lr.ready(h, name)
        if cell is None or base is None:
            continue
        if cell.second:
            items.append((f"{name} (LR {cell.lr:g}{cell.second} vs LR {base.lr:g})",
                          horizon.gap(study, cell, base)))
        else:
            same.append(name)
    versus = (f"; with its AdamW groups' LRs tuned minus one AdamW LR ({single}, the same "
              f"seeds): " + grouped(items)) if items else ""
    kept = (f"; {' and '.join(same)} kept every group at x1, so its report runs repeat "
            f"{single}'s") if same else ""
    return compare_2d(results, folder)[:-1] + versus + kept + "."


def horizon_weight_decay(results: Path, folder: str = "horizon-gpu") -> str:
    """``muon-wd`` - ``muon`` at every horizon (:func:`horizon.versus_muon`) and their hidden
    matrices' weight RMS at the end of the longest horizon: does decoupled weight decay on
    the Muon matrices change the loss, and how much does it change the weights?"""
    study = horizon.load_study(results / folder)
    diffs = by_column(study, horizon.versus_muon(study)[WITH_DECAY])
    h = study.horizons[-1]
    rms = {name: horizon.final_weight_rms(study, cell) if (cell := study.ready(h, name))
           else None for name in (WITH_DECAY, MUON)}
    weights = ("" if None in rms.values() else
               f"; the hidden matrices' weight RMS at the end of {h} steps (seed "
               f"{horizon.rms_seed(study)}): {rms[WITH_DECAY]:.3f} with decay, {rms[MUON]:.3f} "
               "without")
    return ("Muon hybrid with decoupled weight decay 0.1 on its matrices - without, each tuned, "
            f"final val loss over the report seeds (seed {study.tuning_seed} tuned): "
            + listed(diffs) + weights + ".")


def horizon_change(results: Path, folder: str = "horizon-gpu") -> str:
    """Does each tuned contender gain or lose ground to AdamW as the runs get longer: its gap
    at a horizon minus at the one before (:func:`horizon.gap_changes`), paired by seed."""
    study = horizon.load_study(results / folder)
    each = [f"{name}: {listed(by)}" for name, by in horizon.gap_changes(study).items()]
    return ("each tuned contender's gap to AdamW (its final val loss minus AdamW's, per report "
            f"seed; seed {study.tuning_seed} tuned) at a training length minus its gap at the "
            "length before: " + ". ".join(each) + ".")


def horizon_decay_change(results: Path, folder: str = "horizon-gpu") -> str:
    """:func:`horizon_change` of ``muon-wd``'s gap to the hybrid without decay: does weight
    decay on the Muon matrices change how the hybrid's standing moves with the length?"""
    study = horizon.load_study(results / folder)
    decay = horizon.gap_changes(study, MUON).get(WITH_DECAY) if MUON in study.names() else None
    return (f"{WITH_DECAY}'s gap to {MUON} (final val loss with decay minus without, per report "
            f"seed; seed {study.tuning_seed} tuned) at a training length minus its gap at the "
            "length before: " + (listed(decay) if decay else "unfinished") + ".")


SAME_SETUP = ("preset", "data", "batch_size", "block_size", "model_overrides", "warmup_frac",
              "momentum_warmup_frac", "min_lr_ratio", "grad_clip", "evals_per_run",
              "eval_batches", "tune_seed", "seeds", "machine_class")


def horizon_tuned_decay(results: Path, folder: str = "horizon-micro-wd2d",
                        without: str = "horizon-micro") -> str:
    """``muon-wd`` with its decay swept with the LR (the study's ``--wd-grid``, 0 among the
    values) minus AdamW, then minus the hybrid without decay of the study ``without`` (the
    same model, corpus, batch, schedule, seeds and machine class, refused otherwise; each
    tuned in its own study), paired by report seed at each of ``folder``'s lengths, with the
    pairs chosen and the weight RMS at the end of the longest."""
    study, base = (horizon.load_study(results / f) for f in (folder, without))
    differ = [k for k in SAME_SETUP if study.settings.get(k) != base.settings.get(k)]
    if differ:
        raise ValueError(f"{folder} and {without} differ in {', '.join(differ)}: their runs "
                         "do not pair by seed")
    grid = ", ".join(f"{w:g}" for w in study.settings["wd_grid"])
    versus_adamw = by_column(study, horizon.gaps_to(study, ADAMW)[WITH_DECAY])
    versus_none = by_column(study, {
        h: horizon.gap(study, cell, other)
        if (cell := study.ready(h, WITH_DECAY)) and (other := base.ready(h, MUON)) else None
        for h in study.horizons})
    chosen = [f"{column} LR {cell.lr:g}{cell.second}"
              for h, column in zip(study.horizons, study.columns(), strict=True)
              if (cell := study.ready(h, WITH_DECAY))]
    h = study.horizons[-1]
    rms = [horizon.final_weight_rms(s, cell) if (cell := s.ready(h, name)) else None
           for s, name in ((study, WITH_DECAY), (base, MUON))]
    weights = ("" if None in rms else
               f"; the hidden matrices' weight RMS at the end of {h} steps (seed "
               f"{horizon.rms_seed(study)}): {rms[0]:.3f} with the chosen decay, {rms[1]:.3f} "
               "without")
    return (f"Muon hybrid with the weight decay on its matrices swept with the LR ({grid}; seed "
            f"{study.tuning_seed} tuned) - AdamW, final val loss over the report seeds: "
            + listed(versus_adamw) + f"; - the hybrid without decay ({without}, tuned there, "
            "the same seeds): " + listed(versus_none) + f"; chosen on seed {study.tuning_seed}: "
            + ("; ".join(chosen) or "none yet") + weights + ".")


def horizon_table(results: Path) -> str:
    study, gaps = horizon_gaps(results)
    rows = [[name] + [c.text() if (c := g[column]) is not None else "unfinished"
                      for column in study.columns()]
            for name, g in gaps.items()]
    return markdown_table(["contender - AdamW", *study.columns()], rows)


GPT_VARIANTS = "variants/gpt-heldout"  # the GPT variant study the verdicts read, under docs/results


def gpt_variants(results: Path) -> tuple[horizon.Study, horizon.Cell, list]:
    """The GPT variant study, its dense Muon cell and its other finished contenders with
    their difference to dense Muon."""
    study = horizon.load_study(results / GPT_VARIANTS)
    dense = study.ready(study.horizons[0], variants_gpt.DENSE)
    cells = [c for c in variants_gpt.finished_cells(study) if c.name != variants_gpt.DENSE]
    return study, dense, [(c, variants_gpt.versus_dense(study, c, dense)) for c in cells]


def variants_gpt_text(results: Path) -> str:
    study, dense, cells = gpt_variants(results)
    items = [(f"{c.name} ({fmt_bytes(variants_gpt.state_bytes(c)[1])})", v)
             for c, v in cells if c.name in variants_gpt_exp.DEFAULT_CONTENDERS
             and c.name != ADAMW]
    return (f"tiny GPT, {study.horizons[0]} steps, final val loss minus dense Muon's "
            f"({fmt_bytes(variants_gpt.state_bytes(dense)[1])} of state) over the report "
            f"seeds (seed {study.tuning_seed} tuned): " + grouped(items) + ".")


def variants_gpt_gamma(results: Path) -> str:
    """Each LoRA-Pre factor-step ablation (``lorapre-r<r>-gamma<g>``) minus LoRA-Pre of the
    same rank at the default ``gamma1``, and the highest rank minus the lowest at each
    factor step, each contender at its own tuned LR, paired by report seed."""
    study = horizon.load_study(results / GPT_VARIANTS)
    h = study.horizons[0]
    items, suffixes = [], [""]
    for name in study.names():
        rank, gamma = name.partition("-gamma")[::2]
        if gamma and (cell := study.ready(h, name)) and (base := study.ready(h, rank)):
            items.append((f"{rank} gamma1={gamma} (LR {cell.lr:g} vs {base.lr:g})",
                          horizon.gap(study, cell, base)))
            suffixes += [] if f"-gamma{gamma}" in suffixes else [f"-gamma{gamma}"]
    if not items:
        return "LoRA-Pre factor-step ablation: unfinished."
    low, high = (f"{LORAPRE}-r{r}" for r in (variants_gpt_exp.RANKS[0],
                                             variants_gpt_exp.RANKS[-1]))
    ranks = [(f"gamma1={suffix.removeprefix('-gamma')}" if suffix else "default gamma1",
              horizon.gap(study, a, b)) for suffix in sorted(suffixes)
             if (a := study.ready(h, high + suffix)) and (b := study.ready(h, low + suffix))]
    steps = [(a.removeprefix("-gamma"), b.removeprefix("-gamma"))
             for a, b in zip(sorted(suffixes)[1:], sorted(suffixes)[2:])]
    further, rank_moves = [], []
    for a, b in steps:
        further += [(f"{rank} gamma1={b} minus gamma1={a}", horizon.gap(study, x, y))
                    for rank in (low, high) if (x := study.ready(h, f"{rank}-gamma{b}"))
                    and (y := study.ready(h, f"{rank}-gamma{a}"))]
        gaps = [horizon.seed_gaps(study, hi, lo)
                if (hi := study.ready(h, f"{high}-gamma{g}")) and
                (lo := study.ready(h, f"{low}-gamma{g}")) else None for g in (b, a)]
        if (moved := horizon.gaps_change(*gaps)) is not None:
            rank_moves.append((f"at gamma1={b} minus at gamma1={a}", moved))
    between = ("; between factor steps: " + grouped(further)) if further else ""
    moves = (f"; {high}'s gap to {low} " + grouped(rank_moves)) if rank_moves else ""
    return (f"tiny GPT, {h} steps, final val loss over the report seeds (seed "
            f"{study.tuning_seed} tuned), each contender at its own tuned LR: LoRA-Pre with a "
            "faster factor step minus the default gamma1 (1 - sqrt(momentum)) at the same rank: "
            + grouped(items) + f"; {high} minus {low}: " + grouped(ranks) + between + moves
            + ".")


NO_MOMENTUM = "muon-no-momentum"  # the GPT variant study's ablation: Muon at momentum 0


def variants_gpt_no_momentum(results: Path) -> str:
    """Every LoRA-Pre contender (each rank and factor step) and dense Muon minus Muon without
    momentum (LoRA-Pre's rank -> 0 limit), each at its own tuned LR, paired by report seed."""
    study = horizon.load_study(results / GPT_VARIANTS)
    h = study.horizons[0]
    base = study.ready(h, NO_MOMENTUM)
    names = [n for n in study.names() if n.startswith(LORAPRE)] + [variants_gpt.DENSE]
    items = [(f"{name} (LR {cell.lr:g})", horizon.gap(study, cell, base)) for name in names
             if base is not None and (cell := study.ready(h, name))]
    if not items:
        return "Muon without momentum: unfinished."
    return (f"tiny GPT, {h} steps, final val loss over the report seeds (seed "
            f"{study.tuning_seed} tuned), each contender at its own tuned LR, minus dense Muon "
            f"at momentum 0 (LR {base.lr:g}): " + grouped(items) + ".")


def variants_gpt_table(results: Path) -> str:
    _, _, cells = gpt_variants(results)
    rows = [[c.name, fmt_bytes(variants_gpt.state_bytes(c)[1]), v.text()] for c, v in cells]
    return markdown_table(["contender", "state (total)", "minus dense Muon, report seeds"],
                          rows)


def mnist_rows(results: Path) -> tuple[dict, list[int]]:
    out = results / MNIST
    study = variant_tuned.load_study(out) | {"out": str(out)}
    return variant_tuned.arm_rows(study), study["study"]["seeds"][:1]


def variants_mnist_text(results: Path) -> str:
    rows, tuned = mnist_rows(results)
    ref = rows[variant_tuned.REFERENCE]
    items = [(f"{rows[s]['label']} ({fmt_bytes(rows[s]['state_bytes'])})",
              variant_tuned.difference(rows[s], ref, "test_acc", tuned))
             for s in MNIST_ARMS if s in rows]
    return ("MNIST MLP, test accuracy minus dense Muon's, pp, over the report seeds (seed 0 "
            "tuned): " + grouped(items, 2, 100) + ".")


def variants_mnist_table(results: Path) -> str:
    rows, tuned = mnist_rows(results)
    ref = rows[variant_tuned.REFERENCE]
    cells = [[r["label"], fmt_bytes(r["state_bytes"]),
              f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_std']:.2f}",
              variant_tuned.fmt_difference(r, ref, "test_acc", tuned)] for r in rows.values()]
    return markdown_table(["optimizer", "state", "test acc % (every seed)",
                           "minus dense Muon, pp, report seeds"], cells)


def finetune_text(results: Path) -> str:
    """The fine-tuning study's answers to: does fixed Muon fine-tune each base, which bug
    caused the notes' failure, does the migrated state help (unfinished arms named)."""
    out = results / "finetune"
    return finetune.verdict_text(finetune.load_arms(out), finetune.read_study(out)[1])


def finetune_summary(results: Path) -> str:
    """:func:`finetune_text`'s answers on Muon vs AdamW and on the carried or migrated state."""
    return finetune.summary_text(finetune.load_arms(results / "finetune"))


GENERATORS: dict[str, Callable[[Path], str]] = {
    "compare-tiny": compare_tiny,
    "horizon": horizon_muon,
    "horizon-table": horizon_table,
    "horizon-gpu": lambda results: horizon_muon(results, "horizon-gpu"),
    "horizon-gpu-wd": horizon_weight_decay,
    "horizon-gpu-change": horizon_change,
    "horizon-gpu-wd-change": horizon_decay_change,
    "horizon-micro": lambda results: horizon_muon(results, "horizon-micro"),
    "horizon-micro-change": lambda results: horizon_change(results, "horizon-micro"),
    "horizon-micro-wd": lambda results: horizon_weight_decay(results, "horizon-micro"),
    "horizon-micro-wd-change": lambda results: horizon_decay_change(results, "horizon-micro"),
    "horizon-micro-wd2d": horizon_tuned_decay,
    "compare-heldout": lambda results: horizon_muon(results, "compare-heldout"),
    "compare-2d": compare_2d,
    "compare-groups": compare_groups,
    "variants-gpt": variants_gpt_text,
    "variants-gpt-table": variants_gpt_table,
    "variants-gpt-gamma": variants_gpt_gamma,
    "variants-gpt-no-momentum": variants_gpt_no_momentum,
    "variants-mnist": variants_mnist_text,
    "variants-mnist-table": variants_mnist_table,
    "finetune": finetune_text,
    "finetune-summary": finetune_summary,
}


def block_names(text: str) -> list[str]:
    return [m["name"] for m in BLOCK.finditer(text)]


def generate(names: list[str], results: Path) -> dict[str, str]:
    """{name: the block's text} for each name, from the records under ``results``."""
    unknown = sorted(set(names) - set(GENERATORS))
    if unknown:
        raise ValueError(f"unknown verdict block(s) {', '.join(unknown)}; known: "
                         f"{', '.join(GENERATORS)}")
    return {name: GENERATORS[name](results) for name in dict.fromkeys(names)}


def body(text: str, indent: str) -> str:
    """A block's lines: a table as it is, a paragraph wrapped at the marker's indent."""
    if text.startswith("|"):
        return textwrap.indent(text.rstrip("\n"), indent) + "\n"
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False) + "\n"


def render(text: str, blocks: dict[str, str]) -> str:
    """``text`` with every verdict block's body replaced by ``blocks[name]``."""
    def fill(m: re.Match) -> str:
        indent = m["indent"]
        return (f"{indent}<!-- verdict:{m['name']} -->\n{body(blocks[m['name']], indent)}"
                f"{indent}<!-- /verdict -->")

    return BLOCK.sub(fill, text)


def stale_blocks(text: str, blocks: dict[str, str]) -> list[str]:
    """The names of the blocks whose text differs from the generated one."""
    return [m["name"] for m in BLOCK.finditer(text)
            if m["body"] != body(blocks[m["name"]], m["indent"])]


def unsupported_claims(text: str) -> list[str]:
    """The lines outside the verdict blocks that state a verdict word, an interval or a
    mean ± std: only the statistics layer's generated text may."""
    outside = BLOCK.sub("", text)
    return [line.strip() for line in outside.splitlines() if CLAIM.search(line)]


def results_section(readme: str) -> str:
    """The README's results section: its heading up to the next one."""
    start = readme.index("## Results")
    end = readme.find("\n## ", start + 1)
    return readme[start:] if end < 0 else readme[start:end]
