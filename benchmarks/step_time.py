"""Optimizer step time of muonkit's Muon against its peers, in one process, interleaved.

Usage: ``python benchmarks/step_time.py [--sets 128x4,256x1,...] [--repeats N] [--threads T]``
(``make bench`` runs it with the defaults and writes docs/results/benchmarks.md).

For each GPT-shaped matrix set (``common.gpt_matrix_shapes``) every method gets its own copy
of the same parameters and gradients, a few warm-up steps (this is where heavyball's
torch.compile runs; its time is reported), then ``repeats`` rounds; in each round the methods
run one step each in a fresh random order, so load from other processes on a shared machine
falls on all of them alike. Reported per method: median, min and max ms/step, ratio to the
muonkit default, the effective rate (FLOPs of standard 5-step Newton-Schulz per second, the
same yardstick for every method) and the share of the matmul peak measured on this machine in
the method's dtype that the products it actually runs reach (``Method.flops``: the Gram form
does fewer). The targets table adds the floor: the muonkit default's FLOPs at that peak, the
fastest any implementation of the same work could run here.

The methods and peers are listed in ``methods.py``. The muonkit default runs
``ns_dtype="auto"``: each set's title says what that picked on this machine (PyTorch's CPU
capability and native bf16 are in the header), and the targets table checks issue 14's targets
for this machine kind. A peer that does not install or cannot step is listed with the reason,
not dropped.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch
from common import (
    FRAGMENTS,
    MACHINE_NAMES,
    gpt_matrix_shapes,
    hardware,
    machine_label,
    markdown_table,
    provenance,
    sync,
    write_fragment,
)
from methods import Method, Unavailable, methods
from records import update_doc

from muonkit.precision import describe, newton_schulz_flops


def seconds_at_peak(flops: dict[str, int], peaks: dict[str, float]) -> float:
    """The time the products would take at this machine's measured peak of each dtype."""
    return sum(n / (peaks[d] * 1e9) for d, n in flops.items() if n)


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------


def matmul_peak(dtype: torch.dtype, device: torch.device, budget_s: float = 10.0) -> float:
    """Best observed GFLOP/s of a square matmul in ``dtype`` (the physical limit here): the
    best over 1024^3 and 512^3 products, each repeated up to 60 times or ``budget_s / 2``
    seconds (many short tries find the moments a loaded machine leaves a core free)."""
    best = 0.0
    for n in (1024, 512):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        start = time.perf_counter()
        for _ in range(60):
            sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
            if time.perf_counter() - start > budget_s / 2:
                break
    return best


def make_params(shapes, device, seed=0):
    """Parameters and their gradients (the same for every method of a set)."""
    g = torch.Generator().manual_seed(seed)
    params, grads = [], []
    for shape in shapes:
        params.append(torch.nn.Parameter((torch.randn(shape, generator=g) * 0.02).to(device)))
        grads.append(torch.randn(shape, generator=g).to(device))
    return params, grads


def set_grads(params, grads) -> None:
    """Fresh gradients before every step, outside the timed region: some peers clear
    ``p.grad`` after a step (heavyball) or modify it in place (muon.py's Nesterov lerp_), and a
    step without gradients does nothing."""
    for p, g in zip(params, grads):
        p.grad = g.clone()


def time_set(shapes, device, chosen: list[Method], repeats: int, warmup: int, rng):
    """Interleaved timing of one matrix set; returns per-method records."""
    records: dict[str, dict] = {}
    live: dict[str, tuple] = {}
    for m in chosen:
        rec = records[m.name] = {"dtype": m.dtype, "note": m.note, "muon": m.muon}
        try:
            params, grads = make_params(shapes, device)
            opt = m.make(params)
            t0 = time.perf_counter()
            for _ in range(warmup):
                set_grads(params, grads)
                opt.step()
            sync(device)
            rec["warmup_s"] = time.perf_counter() - t0
        except Unavailable as e:
            rec["status"] = f"not installed: {e}"
            continue
        except Exception as e:  # a peer that imports but cannot step here
            rec["status"] = f"installed, step fails: {type(e).__name__}: {e}"
            continue
        rec["status"] = "ok"
        rec["times_ms"] = []
        live[m.name] = (opt, params, grads)
    for _ in range(repeats):
        order = list(live)
        rng.shuffle(order)
        for name in order:
            opt, params, grads = live[name]
            set_grads(params, grads)
            sync(device)
            t0 = time.perf_counter()
            opt.step()
            sync(device)
            records[name]["times_ms"].append((time.perf_counter() - t0) * 1e3)
    for rec in records.values():
        if rec["status"] == "ok":
            t = rec["times_ms"]
            rec.update(median_ms=statistics.median(t), min_ms=min(t), max_ms=max(t))
    return records


def parse_sets(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        width, _, layers = item.partition("x")
        out.append((int(width), int(layers)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="128x4,256x1,256x4,768x1", help="WIDTHxLAYERS,...")
    ap.add_argument("--repeats", type=int, default=21, help="timed rounds per set")
    ap.add_argument("--repeats-large", type=int, default=5, help="rounds for width >= 768")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine, 2 OpenMP threads stall "
        "at every barrier while another process holds a core)",
    )
    ap.add_argument("--methods", default="", help="comma-separated substrings to keep")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = random.Random(args.seed)
    chosen = methods(device)
    if args.methods:
        keep = [s.strip() for s in args.methods.split(",")]
        chosen = [m for m in chosen if any(k in m.name for k in keep)]
    hw = hardware(device)
    peaks = {
        "fp32": matmul_peak(torch.float32, device),
        "bf16": matmul_peak(torch.bfloat16, device),
    }
    print(f"hardware: {hw}\nmatmul peak GFLOP/s: {peaks}")

    results = []
    for width, layers in parse_sets(args.sets):
        shapes = gpt_matrix_shapes(width, layers)
        repeats = args.repeats_large if width >= 768 else args.repeats
        precision = describe("auto", device, sorted(set(shapes)))
        print(f"set {width}x{layers}: muonkit default runs {precision}", flush=True)
        load0 = os.getloadavg()[0]
        recs = time_set(shapes, device, chosen, repeats, args.warmup, rng)
        load1 = os.getloadavg()[0]
        flops = sum(newton_schulz_flops(s, 5, gram=False) for s in shapes)
        base = recs.get(chosen[0].name, {}).get("median_ms")
        for m in chosen:
            rec = recs[m.name]
            if rec["status"] != "ok":
                continue
            rec["ratio_to_muonkit"] = rec["median_ms"] / base if base else None
            if m.dtype == "auto":  # show what auto ran: "auto: fp32", "auto: mixed", ...
                rec["dtype"] = describe("auto", device, sorted(set(shapes)), 5, m.ns_gram)
                rec["dtype"] = rec["dtype"].split(" (")[0]
            if rec["muon"]:
                seconds = rec["median_ms"] * 1e-3
                run = m.flops(shapes, device)
                rec["gflop_run"] = {d: n / 1e9 for d, n in run.items()}
                rec["ms_at_peak"] = 1e3 * seconds_at_peak(run, peaks)
                rec["gflops"] = flops / seconds / 1e9
                rec["pct_of_peak"] = 100 * rec["ms_at_peak"] / rec["median_ms"]
        entry = {
            "width": width,
            "layers": layers,
            "shapes": shapes,
            "params": sum(r * c for r, c in shapes),
            "ns_gflop_per_step": flops / 1e9,
            "repeats": repeats,
            "loadavg_1min": [load0, load1],
            "default_precision": precision,
            "methods": recs,
        }
        results.append(entry)
        print(render_set(entry))

    data = {"hardware": hw, "provenance": provenance(device), "matmul_peak_gflops": peaks,
            "args": vars(args), "sets": results}
    data["targets"] = check_targets(results, chosen[0].name, machine_label(hw))
    md = render(data)
    print(render_targets(data["targets"]))
    if not args.no_write:
        print(f"wrote {write_fragment('step_time-' + machine_label(hw), md, data)} and "
              f"{update_doc(SUMMARY, render_summary, FRAGMENTS, 'step_time-*.json')}")
    return 0


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def render_set(entry: dict) -> str:
    header = [
        "method",
        "NS dtype",
        "median ms",
        "min",
        "max",
        "x muonkit",
        "effective GFLOP/s",
        "% peak",
    ]
    rows = []
    for name, rec in entry["methods"].items():
        if rec["status"] != "ok":
            rows.append([name, rec["dtype"] or "-", rec["status"], "", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                rec["dtype"] or "-",
                _fmt(rec["median_ms"]),
                _fmt(rec["min_ms"]),
                _fmt(rec["max_ms"]),
                _fmt(rec["ratio_to_muonkit"]),
                _fmt(rec.get("gflops"), ".1f"),
                _fmt(rec.get("pct_of_peak"), ".0f"),
            ]
        )
    title = (
        f"### width {entry['width']} x {entry['layers']} layers "
        f"({len(entry['shapes'])} matrices, {entry['params'] / 1e6:.2f} M params, "
        f"{entry['ns_gflop_per_step']:.2f} GFLOP of standard NS per step; median of "
        f"{entry['repeats']}; 1-min load {entry['loadavg_1min'][0]:.1f} -> "
        f"{entry['loadavg_1min'][1]:.1f})\n\nmuonkit default: {entry['default_precision']}.\n"
    )
    return title + "\n" + markdown_table(header, rows)


TARGET_SETS = ((128, 4), (256, 1))
# issue 14: (peer, bound on the muonkit default's ratio) per machine kind (common.machine_label)
TARGETS = {
    "no-native-bf16": (("torch.optim.Muon", 0.05), ("Keller Jordan algorithm in fp32", 0.65)),
    "native-bf16": (("torch.optim.Muon", 0.8),),
    "native-bf16-amx": (("torch.optim.Muon", 0.8),),
    "cuda": (),
}


def check_targets(results, default_name: str, machine: str) -> list[dict]:
    """Each target ratio of this machine kind as measured, and the floor: the ratio the muonkit
    default would have if its matrix products ran at this machine's measured peak of each
    dtype they run in, with no other cost."""
    out = []
    for entry in results:
        if (entry["width"], entry["layers"]) not in TARGET_SETS:
            continue
        recs = entry["methods"]
        default = recs.get(default_name, {})
        ours = default.get("median_ms")
        floor_ms = default.get("ms_at_peak")
        for peer, bound in TARGETS[machine]:
            theirs = recs.get(peer, {}).get("median_ms")
            ratio = ours / theirs if ours and theirs else None
            out.append(
                {
                    "set": f"{entry['width']}x{entry['layers']}",
                    "peer": peer,
                    "target": bound,
                    "ratio": ratio,
                    "met": ratio is not None and ratio <= bound,
                    "floor_ms": floor_ms,
                    "floor_ratio": floor_ms / theirs if floor_ms and theirs else None,
                }
            )
    return out


def render_targets(targets: list[dict]) -> str:
    rows = [
        [
            t["set"],
            t["peer"],
            f"<= {t['target']}",
            _fmt(t["ratio"], ".3f"),
            "met" if t["met"] else "NOT met",
            _fmt(t.get("floor_ratio"), ".3f"),
        ]
        for t in targets
    ]
    header = ["set", "muonkit default / peer", "target", "measured", "", "floor (at peak)"]
    return markdown_table(header, rows)


def render(data: dict) -> str:
    hw, peaks = data["hardware"], data["matmul_peak_gflops"]
    lines = [
        f"## Optimizer step time on {MACHINE_NAMES[machine_label(hw)]} "
        "(`benchmarks/step_time.py`)\n",
        f"Measured {hw['date_utc']} on "
        + (f"{hw['gpu']} (capability {hw['gpu_capability']}), host " if hw.get("gpu") else "")
        + f"{hw['cpu']} ({hw['logical_cores']} logical cores, "
        f"torch {hw['torch']}, {hw['torch_threads']} torch thread(s), device {hw['device']}). "
        "Measured matmul peak (best of 1024^3 and 512^3 products): "
        f"fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s. "
        f"CPU flags: {' '.join(hw['cpu_flags']) or '-'}; "
        f"PyTorch CPU capability {hw['cpu_capability']}; native bf16: "
        f"{'yes' if hw['cpu_native_bf16'] else 'no'}. Per set, the title says what the "
        "muonkit default (`ns_dtype=\"auto\"`) runs there.\n",
        "Load averages are given per set (other jobs on a shared machine inflate absolute "
        "times and widen min/max); methods run interleaved in random order each round, so "
        "load falls on all of them alike. Ratios within one set are the figure to read. "
        "Effective GFLOP/s counts the work of standard 5-step Newton-Schulz for "
        "every method (Gram-NS does fewer FLOPs, so its effective rate can pass the peak); "
        "`% peak` counts the products a method actually runs against the matmul peak of its NS "
        "dtype (fp32 and bf16 parts of mixed precision each at its own peak). In the targets "
        "table, `floor (at peak)` is the ratio the muonkit default would "
        "reach if its products ran at the peak of its NS dtype with nothing else to do: no "
        "implementation of the same work in that dtype can beat it on this machine.\n",
    ]
    for entry in data["sets"]:
        lines.append(render_set(entry))
        warm = [
            f"{n}: {r['warmup_s']:.1f} s"
            for n, r in entry["methods"].items()
            if r.get("warmup_s", 0) > 5
        ]
        if warm:
            lines.append(f"Warm-up ({data['args']['warmup']} steps) over 5 s: {'; '.join(warm)}.\n")
    lines.append("### Targets of issue 14 (this run)\n")
    lines.append(render_targets(data["targets"]))
    lines.append(
        f"\nCommand: `python benchmarks/step_time.py --sets {data['args']['sets']} "
        f"--repeats {data['args']['repeats']} --repeats-large {data['args']['repeats_large']} "
        f"--threads {data['args']['threads']}`\n"
    )
    return "\n".join(lines)


SUMMARY = "benchmarks/step_time.py"


def render_summary(runs: list[dict]) -> str:
    """docs/benchmarks.md's step-time table of every machine kind, from the step-time records
    (``docs/results/bench/step_time-<machine>.json``): per machine, the CPU/GPU, its flags, the
    torch threads and the date; per set, each method's median ms/step with the precision it ran
    and the load around the set."""
    out = []
    for data in runs:
        if "sets" not in data:  # a derived file (project_native.py's projection)
            continue
        hw = data["hardware"]
        sets = data["sets"]
        where = f"{hw['gpu']}, host " if hw.get("gpu") else ""
        out.append(
            f"**{MACHINE_NAMES[machine_label(hw)]}**: {where}{hw['cpu']}; flags "
            f"{' '.join(hw['cpu_flags']) or '-'}; {hw['torch_threads']} torch thread(s); "
            f"torch {hw['torch']}; {hw['date_utc']}; load (1 min) per set: "
            + ", ".join(f"{e['width']}x{e['layers']} {e['loadavg_1min'][0]:.1f}-"
                        f"{e['loadavg_1min'][1]:.1f}" for e in sets) + ".\n")
        names = list(dict.fromkeys(n for e in sets for n in e["methods"]))
        rows = []
        for name in names:
            cells = []
            for e in sets:
                rec = e["methods"].get(name, {})
                ok = rec.get("status") == "ok"
                cells.append(f"{rec['median_ms']:.2f} ({rec['dtype'] or '-'})" if ok else "-")
            rows.append([name, *cells])
        out.append(markdown_table(
            ["ms/step, median (NS dtype)", *(f"{e['width']} x {e['layers']}" for e in sets)],
            rows))
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
