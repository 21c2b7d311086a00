"""AOL preconditioning (``ns_precondition="aol"``) against Frobenius scaling: orthogonality vs time.

Usage: ``python benchmarks/aol.py [--sets 128x4,256x1] [--repeats 7] [--threads 1]``; writes
``docs/results/aol/<machine kind>.json`` (one record per figure, ``records.py``) and
regenerates the AOL table of docs/benchmarks.md from every records file there.

Inputs: each benchmark set's matrices (``common.gpt_matrix_shapes``) with singular values
log-uniform on [1e-3, 1] (a hard spectrum, every direction counted), and the 16 hidden-matrix
gradients of the tiny GPT after 5 AdamW steps (``orth_accuracy.gpt_gradients``; near
rank-deficient, so only the r largest output singular values count, r = the number of the
gradient's singular values >= 1e-2 of its largest). For each schedule, scaling and step count
(3-6), in the precision ``ns_dtype="auto"`` picks here: the orthogonality error, max
abs(sigma - 1) over those singular values of the output and their spread (max - min), worst
over the set's matrices; 1 - cos to the exact polar factor of G (AOL converges to that of the
rescaled G, which differs unless G's rows are orthogonal); and the time of
``muonkit.functional.orthogonalize_updates`` on the whole set (the step's own path, batched by
shape), median over ``repeats`` interleaved rounds (every configuration once per round, in a
fresh random order, so other processes' load falls on all alike).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from common import gpt_matrix_shapes, provenance
from orth_accuracy import GRAD_FLOOR, gpt_gradients
from records import (
    RESULTS,
    load_measured,
    markdown_table,
    provenance_line,
    update_doc,
    write_records,
)

from muonkit.functional import orthogonalize_updates
from muonkit.options import MuonOptions
from muonkit.orthogonalize import polar
from muonkit.precision import describe

FOLDER = RESULTS / "aol"
NAME = "benchmarks/aol.py"
SCHEDULES = ("jordan", "polar_express")
PRECONDITIONERS = ("frobenius", "aol")
STEPS = (3, 4, 5, 6)


def log_uniform(shape, seed: int) -> torch.Tensor:
    """A matrix of ``shape`` with singular values log-uniform on [1e-3, 1]."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return ((U * torch.logspace(-3, 0, k, dtype=torch.float64)) @ V.T).float()


def errors(out: torch.Tensor, G: torch.Tensor, floor: float) -> dict:
    """Orthogonality of ``out`` (its r largest singular values, r = G's singular values >=
    ``floor`` times the largest) and its distance to G's exact polar factor."""
    s_in = torch.linalg.svdvals(G.double())
    r = int((s_in >= floor * s_in.max()).sum())
    s = torch.linalg.svdvals(out.double())[:r]
    exact = polar(G.double())
    cos = float((out.double() * exact).sum() / (out.double().norm() * exact.norm()))
    return {"max_err": float((s - 1).abs().max()), "spread": float(s.max() - s.min()),
            "one_minus_cos": 1 - cos}


def accuracy(matrices: list[torch.Tensor], options: MuonOptions, floor: float) -> dict:
    """The worst of each error over the matrices."""
    outs = orthogonalize_updates(matrices, options)
    each = [errors(o, G, floor) for o, G in zip(outs, matrices)]
    return {k: max(e[k] for e in each) for k in each[0]}


def time_configs(matrices, configs: dict, repeats: int, rng: random.Random) -> dict:
    """{config: (median, min, max) ms} of ``orthogonalize_updates`` on ``matrices``,
    interleaved: every configuration once per round, in a fresh random order."""
    for options in configs.values():  # warm-up: allocator, first-call paths
        orthogonalize_updates(matrices, options)
    times: dict = {key: [] for key in configs}
    for _ in range(repeats):
        order = list(configs)
        rng.shuffle(order)
        for key in order:
            t0 = time.perf_counter()
            orthogonalize_updates(matrices, configs[key])
            times[key].append(1e3 * (time.perf_counter() - t0))
    return {key: (statistics.median(t), min(t), max(t)) for key, t in times.items()}


def measure_set(name: str, matrices, floor: float, repeats: int, rng) -> list[dict]:
    """The records of one set: every schedule x scaling x step count."""
    configs = {(c, p, k): MuonOptions(ns_coefficients=c, ns_precondition=p, ns_steps=k)
               for c in SCHEDULES for p in PRECONDITIONERS for k in STEPS}
    shapes = sorted({tuple(m.shape) for m in matrices})
    dtype = describe("auto", matrices[0].device, shapes).split(" (")[0]
    timing: dict = {}
    with load_measured(timing):
        times = time_configs(matrices, configs, repeats, rng)
    records = []
    for (c, p, k), options in configs.items():
        median, low, high = times[(c, p, k)]
        records.append(dict(
            set=name, shapes=shapes, matrices=len(matrices), coefficients=c, precondition=p,
            steps=k, dtype=dtype, repeats=repeats, median_ms=median, min_ms=low, max_ms=high,
            load_1min=timing["load_1min"], **accuracy(matrices, options, floor)))
    return records


def parse_sets(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.split("x")) for item in text.split(",")]  # type: ignore


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="128x4,256x1", help="WIDTHxLAYERS,...")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per set")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    prov = provenance(torch.device("cpu"))
    inputs = [(f"{w}x{n}, log-uniform sigma", [log_uniform(s, i) for i, s in
                                                enumerate(gpt_matrix_shapes(w, n))], 0.0)
              for w, n in parse_sets(args.sets)]
    inputs.append(("tiny GPT gradients", gpt_gradients(), GRAD_FLOOR))
    records = []
    for name, matrices, floor in inputs:
        print(f"{name}: {len(matrices)} matrices", flush=True)
        records += measure_set(name, matrices, floor, args.repeats, rng)
    print(render([{"provenance": prov, "records": records}]))
    if not args.no_write:
        path = write_records(FOLDER / f"{prov['machine_label']}.json", prov, records,
                             args=vars(args))
        print(f"wrote {path} and {update_doc(NAME, render, FOLDER)}")
    return 0


def _find(records, **key) -> dict:
    return next(r for r in records if all(r[k] == v for k, v in key.items()))


def render(runs: list[dict]) -> str:
    """The AOL table of docs/benchmarks.md, from the records files (one section per machine):
    per set, schedule and step count, Frobenius vs AOL; then whether AOL at k - 1 steps is at
    least as accurate (max abs(sigma - 1) and 1 - cos) as Frobenius at k, and its time ratio."""
    out = []
    for run in runs:
        records = run["records"]
        prov = run["provenance"]
        out.append(f"Measured on {provenance_line(prov)}.\n")
        rows = []
        for r in records:
            if r["precondition"] != "frobenius":
                continue
            a = _find(records, set=r["set"], coefficients=r["coefficients"], steps=r["steps"],
                      precondition="aol")
            rows.append([r["set"], r["coefficients"], str(r["steps"]), r["dtype"],
                         f"{r['median_ms']:.1f} / {a['median_ms']:.1f}",
                         f"{r['max_err']:.3f} / {a['max_err']:.3f}",
                         f"{r['spread']:.3f} / {a['spread']:.3f}",
                         f"{r['one_minus_cos']:.2e} / {a['one_minus_cos']:.2e}",
                         "{:.1f}-{:.1f}".format(*r["load_1min"])])
        out.append(markdown_table(
            ["input", "schedule", "steps", "dtype", "ms: Frobenius / AOL",
             "max abs(sigma-1)", "spread", "1 - cos to polar(G)", "load (1 min)"], rows))
        out.append("\nAOL at k - 1 steps against Frobenius at k steps (the paper's claim: "
                   "one step fewer, same orthogonality):\n")
        rows = []
        for r in records:
            if r["precondition"] != "frobenius" or r["steps"] - 1 not in STEPS:
                continue
            a = _find(records, set=r["set"], coefficients=r["coefficients"],
                      steps=r["steps"] - 1, precondition="aol")
            as_orthogonal = a["max_err"] <= r["max_err"]
            as_close = a["one_minus_cos"] <= r["one_minus_cos"]
            rows.append([r["set"], r["coefficients"], f"{r['steps'] - 1} vs {r['steps']}",
                         "yes" if as_orthogonal else "no", "yes" if as_close else "no",
                         f"{a['median_ms'] / r['median_ms']:.2f}"])
        out.append(markdown_table(
            ["input", "schedule", "steps: AOL vs Frobenius", "max abs(sigma-1) <= ",
             "1 - cos <=", "time ratio"], rows))
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
