"""Where a run's numbers came from: what the loop records at the start of every session.

:func:`provenance` is the ``provenance`` object of a run's config line (its first session) and
of every ``session`` record (each resume); :func:`machine_change` compares a resumed session's
machine class with the one the run started on.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from muonkit import __version__, hardware

from .measure import ns_precisions

_launch: dict | None = None  # set by launched_as: the study run this process trains


@contextlib.contextmanager
def launched_as(spec: dict) -> Iterator[None]:
    """Inside, the runs this process trains record ``spec`` (a study's run: its label, entry
    point and threads, :func:`muonlab.experiments.runs.train_spec`) as ``launched_as``."""
    global _launch
    previous, _launch = _launch, dict(spec)
    try:
        yield
    finally:
        _launch = previous


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def git_revision() -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout muonkit is imported from (``dirty``: the
    package's files differ from the commit), or None: installed without git, or git missing.
    Never raises."""
    package = Path(__file__).resolve().parents[1]
    # a package inside some other repository (a venv in a checkout) is not that repository's
    if _git(package, "ls-files", "--error-unmatch", "__init__.py") is None:
        return None
    commit = _git(package, "rev-parse", "HEAD")
    status = _git(package, "status", "--porcelain", "--", ".")
    if commit is None or status is None:
        return None
    return {"commit": commit, "dirty": bool(status)}


def provenance(device: torch.device, dtype: torch.dtype,
               optimizers: Sequence[torch.optim.Optimizer], world_size: int = 1) -> dict:
    """What this session of a run computes with: muonkit's version and git revision
    (:func:`git_revision`), torch and Python versions; the device and its name (the GPU's,
    or the CPU model), the CPU's ``hardware.ARITHMETIC_FLAGS`` and PyTorch's CPU kernel level; the
    torch threads in use; the autocast ``dtype``; ``ns_dtype``: each Muon group's Newton-Schulz
    precision as resolved on its parameters' device ({} without Muon); ``argv``: this
    process's command line (a study's run, in its own process, gets the study's, and its own
    spec as ``launched_as``); ``world_size``: processes training together (under torchrun,
    this record is rank 0's); ``machine_class``: :func:`muonkit.hardware.machine_class`."""
    threads = torch.get_num_threads()
    cpu = hardware.cpu_model()
    return {
        "muonkit": __version__,
        "git": git_revision(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "isa": sorted(f for f in hardware.ARITHMETIC_FLAGS if f in hardware.cpu_flags()),
        "cpu_capability": hardware.cpu_capability(),
        "threads": threads,
        "dtype": str(dtype).removeprefix("torch."),
        "ns_dtype": ns_precisions(optimizers),
        "argv": list(sys.argv),
        "launched_as": _launch,
        "world_size": world_size,
        "machine_class": hardware.machine_class(device, threads),
    }


def machine_change(first: dict | None, now: dict) -> dict:
    """The ``session`` record's verdict on this session's machine class ``now`` against the
    run's first session's ``first`` (None: a run recorded before provenance was: unknown):
    ``{"machine_changed": bool | None}``, with ``first_machine_class`` when it changed."""
    if first is None:
        return {"machine_changed": None}
    if first == now:
        return {"machine_changed": False}
    return {"machine_changed": True, "first_machine_class": first}


def describe_class(cls: dict) -> str:
    """One machine class in words, e.g. ``"cpu Intel Xeon ... (avx2, avx512f; AVX512), 1
    thread(s)"``."""
    if cls["device"] == "cuda":
        return f"cuda {cls['name']} (compute capability {cls['gpu_capability']})"
    return (f"{cls['device']} {cls['name']} ({', '.join(cls['isa']) or 'no listed ISA flags'}; "
            f"{cls['cpu_capability']}), {cls['threads']} thread(s)")
