"""Shared helpers of the benchmarks: hardware description, matrix sets, results files.

Each benchmark writes its own fragment (``docs/results/bench/<name>.md`` plus a json with
every number) and then rebuilds ``docs/results/benchmarks.md`` from the fragments present, so
the committed page only ever holds numbers a benchmark run wrote.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
FRAGMENTS = RESULTS / "bench"
FRAGMENT_ORDER = ("step_time", "orth_accuracy")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU feature flags that decide matmul speed by dtype (AVX-512, bf16, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2")))
    except OSError:
        pass
    return []


def hardware(device: torch.device) -> dict:
    """What the numbers were measured on, and how loaded the machine was."""
    info = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "device": str(device),
        "loadavg_start": list(os.getloadavg()),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def gpt_matrix_shapes(width: int, layers: int) -> list[tuple[int, int]]:
    """The hidden matrices of a GPT block stack (nanoGPT layout, weights as (out, in)).

    Per layer: fused qkv (3d, d), attention output proj (d, d), MLP fc (4d, d), MLP proj (d, 4d).
    """
    d = width
    return [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * layers


def write_fragment(name: str, markdown: str, data: dict) -> Path:
    """Write one benchmark's markdown + json and rebuild docs/results/benchmarks.md."""
    FRAGMENTS.mkdir(parents=True, exist_ok=True)
    (FRAGMENTS / f"{name}.md").write_text(markdown)
    (FRAGMENTS / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    return rebuild_index()


def rebuild_index() -> Path:
    parts = [
        "# muonkit benchmarks\n",
        "Written by `benchmarks/step_time.py` and `benchmarks/orth_accuracy.py` (`make bench`); "
        "every number below comes from the json beside its section in `docs/results/bench/`.\n",
    ]
    for name in FRAGMENT_ORDER:
        path = FRAGMENTS / f"{name}.md"
        if path.exists():
            parts.append(path.read_text())
    out = RESULTS / "benchmarks.md"
    out.write_text("\n".join(parts))
    return out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
