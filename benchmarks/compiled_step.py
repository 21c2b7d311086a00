"""Muon's compiled step (``compile_step=True``) against its eager step and torch.optim.Muon.

Usage: ``python benchmarks/compiled_step.py [--sets 128x4,256x1] [--repeats 11] [--threads 1]``;
writes ``docs/results/compiled_step/<machine kind>.json`` (one record per method and set, each
with its dtype and the load around the set's timing; ``records.py``) and regenerates the
compiled-step table of docs/benchmarks.md from every records file there.

On a machine with a CUDA device it times there (``docs/results/compiled_step/cuda.json``);
``compile_step="reduce-overhead"`` replays the compiled stage as a CUDA graph there.

The timing is step_time.py's (``time_set``): every method its own copy of the same parameters
and gradients, warm-up steps (where the compile happens; its time is recorded), then
interleaved rounds in a fresh random order.
"""

from __future__ import annotations

import argparse
import random

import torch
from common import gpt_matrix_shapes, provenance
from methods import KellerSingleDevice, Method
from records import (
    RESULTS,
    load_measured,
    markdown_table,
    provenance_line,
    update_doc,
    write_records,
)
from step_time import parse_sets, time_set

from muonkit import Muon
from muonkit.precision import describe

FOLDER = RESULTS / "compiled_step"
NAME = "benchmarks/compiled_step.py"
METHODS = [
    Method("muonkit Muon() eager", "auto", Muon),
    Method("muonkit Muon(compile_step=True)", "auto", lambda p: Muon(p, compile_step=True)),
    Method("muonkit Muon(compile_step='reduce-overhead')", "auto",
           lambda p: Muon(p, compile_step="reduce-overhead")),
    Method("torch.optim.Muon", "bf16", torch.optim.Muon),
    Method("Keller Jordan's algorithm in fp32", "fp32",
           lambda p: KellerSingleDevice(p, dtype=torch.float32)),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="128x4,256x1", help="WIDTHxLAYERS,...")
    ap.add_argument("--repeats", type=int, default=11, help="timed rounds per set")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (the compile)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = random.Random(args.seed)
    prov = provenance(device)
    records = []
    for width, layers in parse_sets(args.sets):
        shapes = gpt_matrix_shapes(width, layers)
        auto = describe("auto", device, sorted(set(shapes))).split(" (")[0]
        timing: dict = {}
        with load_measured(timing):
            recs = time_set(shapes, device, METHODS, args.repeats, args.warmup, rng)
        for m in METHODS:
            rec = recs[m.name]
            records.append(dict(
                set=f"{width}x{layers}", method=m.name,
                dtype=auto if m.dtype == "auto" else m.dtype, status=rec["status"],
                repeats=args.repeats, warmup_s=rec.get("warmup_s"),
                median_ms=rec.get("median_ms"), min_ms=rec.get("min_ms"),
                max_ms=rec.get("max_ms"), load_1min=timing["load_1min"]))
        print(f"set {width}x{layers} done", flush=True)
    print(render([{"provenance": prov, "records": records}]))
    if not args.no_write:
        path = write_records(FOLDER / f"{prov['machine_label']}.json", prov, records,
                             args=vars(args))
        print(f"wrote {path} and {update_doc(NAME, render, FOLDER)}")
    return 0


def render(runs: list[dict]) -> str:
    """The compiled-step table of docs/benchmarks.md: per machine and set, each method's
    median ms/step, its ratio to the eager step and to torch.optim.Muon, its warm-up (the
    compile) and the load."""
    out = []
    for run in runs:
        out.append(f"Measured on {provenance_line(run['provenance'])}.\n")
        rows = []
        for r in run["records"]:
            same_set = {x["method"]: x for x in run["records"] if x["set"] == r["set"]}
            eager = same_set["muonkit Muon() eager"]["median_ms"]
            peer = same_set["torch.optim.Muon"]["median_ms"]
            if r["status"] != "ok":
                rows.append([r["set"], r["method"], r["dtype"], r["status"], "", "", "", ""])
                continue
            rows.append([r["set"], r["method"], r["dtype"], f"{r['median_ms']:.1f}",
                         f"{r['median_ms'] / eager:.2f}", f"{r['median_ms'] / peer:.3f}",
                         f"{r['warmup_s']:.1f}", "{:.1f}-{:.1f}".format(*r["load_1min"])])
        out.append(markdown_table(
            ["set", "method", "dtype", "ms/step (median)", "/ eager", "/ torch.optim.Muon",
             "warm-up s (compile)", "load (1 min)"], rows))
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
