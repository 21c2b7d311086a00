"""Shared helpers of the benchmarks: hardware description, matrix sets, results files.

Each benchmark writes its own fragment (``docs/results/bench/<name>.md`` plus a json with
every number) and then rebuilds ``docs/results/benchmarks.md`` from the fragments present, so
the committed page only ever holds numbers a benchmark run wrote. A fragment's links resolve
from its own folder (a figure beside it: ``name.png``); the index rebases them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from records import markdown_table  # noqa: F401  (one table writer for every benchmark)

from muonkit.hardware import machine_class, machine_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
FRAGMENTS = RESULTS / "bench"
FRAGMENT_ORDER = ("step_time-*", "gpt_step-*", "orth_accuracy")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hardware(device: torch.device) -> dict:
    """What the numbers were measured on (:func:`muonkit.hardware.machine_info`: CPU, its
    timing flags, PyTorch's CPU capability, native bf16, GPU), when, and how loaded."""
    info = machine_info(device)
    info.update(
        python=sys.version.split()[0],
        device=str(device),
        loadavg_start=list(os.getloadavg()),
        date_utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    return info


def provenance(device: torch.device) -> dict:
    """What every figure of a records file (``records.write_records``) was measured on: the
    machine class, its kind (:func:`machine_label`), the CPU's timing flags, the torch threads,
    torch's version and the date; each record adds its dtype and load."""
    info = hardware(device)
    return {
        "machine_class": machine_class(device),
        "machine_label": machine_label(info),
        "cpu_flags": info["cpu_flags"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date_utc": info["date_utc"],
    }


MACHINE_NAMES = {  # machine_label -> words for section titles
    "no-native-bf16": "a CPU without native bf16",
    "native-bf16": "a CPU with native bf16 (AVX512-BF16)",
    "native-bf16-amx": "a CPU with native bf16 (AMX-BF16)",
    "cuda": "a CUDA GPU",
}


def machine_label(info: dict) -> str:
    """``no-native-bf16``, ``native-bf16`` (AVX512-BF16) or ``native-bf16-amx`` for a CPU (the
    cases of issue 14), else the device type: the suffix of a step-time fragment, so each
    machine kind keeps its figures."""
    if info["device"].startswith("cuda"):
        return "cuda"
    native = info.get("cpu_native_bf16",  # records from before it was recorded: the flags
                      any(f in info["cpu_flags"] for f in ("avx512_bf16", "amx_bf16")))
    if not native:
        return "no-native-bf16"
    return "native-bf16-amx" if "amx_bf16" in info["cpu_flags"] else "native-bf16"


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


LINK_TARGET = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)\)")  # a markdown link or image


def rebase_links(markdown: str, folder: str) -> str:
    """``markdown``, written to resolve its relative link targets from ``folder``, with them
    rewritten to resolve from ``folder``'s parent (a fragment's figure link, in the index)."""
    def rebase(match: re.Match) -> str:
        target = match[2]
        relative = "://" not in target and not target.startswith(("#", "/"))
        return f"{match[1]}{folder}/{target})" if relative else match[0]
    return LINK_TARGET.sub(rebase, markdown)


def index_text() -> str:
    """``docs/results/benchmarks.md``: the fragments present, in :data:`FRAGMENT_ORDER`,
    their links rebased from ``bench/`` to the index's folder."""
    parts = [
        "# muonkit benchmarks\n",
        "Written by `benchmarks/step_time.py`, `gpt_step.py`, `orth_accuracy.py` (`make bench`) "
        "and `project_native.py`; every number below comes from the json beside its section in "
        "`docs/results/bench/`. Machines differ: the step-time sections are one per machine "
        "kind (a CPU with native bf16, i.e. AVX512-BF16/AMX, and one without), each naming the "
        "CPU, its flags and PyTorch's CPU capability; compare ratios within a section only.\n",
    ]
    folder = FRAGMENTS.relative_to(RESULTS).as_posix()
    for pattern in FRAGMENT_ORDER:
        for path in sorted(FRAGMENTS.glob(f"{pattern}.md")):
            parts.append(rebase_links(path.read_text(), folder))
    return "\n".join(parts)


def rebuild_index() -> Path:
    out = RESULTS / "benchmarks.md"
    out.write_text(index_text())
    return out
