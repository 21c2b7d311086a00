"""What ``ns_dtype="auto"`` would reach on a CPU with native bf16, from a recorded run there.

Usage: ``python benchmarks/project_native.py [docs/results/bench/step_time-native-bf16.json]``.

The machine kind with AVX512-BF16 is not always at hand. Its recorded step-time run holds the
measured fp32 and bf16 matmul peaks and torch.optim.Muon's step time per set; this script
takes the products each precision choice runs on that machine kind (``auto`` as it decides
there: ``muonkit.precision.auto_dtype`` with native bf16; fp32; "mixed"; bf16), prices each at
its dtype's recorded peak, and divides by torch.optim.Muon's recorded time: the floor ratio no
implementation of that work can beat there. A projection, not a measurement: it says whether
issue 14's target (default <= 0.8x torch.optim.Muon on 128x4 and 256x1) is reachable at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from common import FRAGMENTS, gpt_matrix_shapes, markdown_table, write_fragment

from muonkit import precision

CHOICES = (("auto (native bf16)", "auto"), ("fp32", torch.float32), ("mixed", "mixed"),
           ("bf16", torch.bfloat16))


def project(run: dict) -> list[dict]:
    peaks = run["matmul_peak_gflops"]
    out = []
    native = precision.cpu_native_bf16
    precision.cpu_native_bf16 = lambda: True  # decide as auto does on that machine kind
    try:
        for entry in run["sets"]:
            if (entry["width"], entry["layers"]) not in ((128, 4), (256, 1)):
                continue
            torch_ms = entry["methods"]["torch.optim.Muon"]["median_ms"]
            shapes = gpt_matrix_shapes(entry["width"], entry["layers"])
            for label, dtype in CHOICES:
                flops = precision.ns_flops_by_dtype(shapes, 5, dtype, "cpu")
                ms = 1e3 * sum(n / (peaks[d] * 1e9) for d, n in flops.items())
                out.append(dict(set=f"{entry['width']}x{entry['layers']}", choice=label,
                                gflop={d: n / 1e9 for d, n in flops.items()}, ms_at_peak=ms,
                                torch_ms=torch_ms, floor_ratio=ms / torch_ms))
    finally:
        precision.cpu_native_bf16 = native
    return out


def gflop(by_dtype: dict) -> str:
    return f"{by_dtype.get('fp32', 0):.2f} / {by_dtype.get('bf16', 0):.2f}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else FRAGMENTS / "step_time-native-bf16.json"
    run = json.loads(path.read_text())
    rows = project(run)
    table = markdown_table(
        ["set", "precision", "GFLOP fp32 / bf16", "ms at peak", "torch.optim.Muon ms",
         "floor ratio"],
        [[r["set"], r["choice"], gflop(r["gflop"]), f"{r['ms_at_peak']:.2f}",
          f"{r['torch_ms']:.2f}", f"{r['floor_ratio']:.3f}"] for r in rows],
    )
    peaks = run["matmul_peak_gflops"]
    md = "\n".join([
        "### Projection for the native-bf16 machine (`benchmarks/project_native.py`)\n",
        f"From the recorded run above ({run['hardware']['date_utc']}; peaks fp32 "
        f"{peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s): the products each precision "
        "runs, priced at that machine's peak of their dtype, over torch.optim.Muon's measured "
        "time there. No implementation of that work can go below the floor ratio on that "
        "machine; issue 14's target there is <= 0.8.\n",
        table,
    ])
    print(md)
    write_fragment("step_time-native-bf16_projection", md, {"source": str(path), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
