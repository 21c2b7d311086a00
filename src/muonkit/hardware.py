"""What the machine does natively, read once and never assumed.

Matrix-multiply speed by dtype differs by an order of magnitude between machines: a CPU with
AVX512-BF16 runs bf16 matmul about 2x faster than fp32, one with AMX-BF16 tile units more than
3x, one with only AVX2 tens of times slower. Optimizer defaults and reports therefore ask this
module, which reads the CPU feature flags (``/proc/cpuinfo`` on Linux) and PyTorch's own view
of the CPU (``torch.backends.cpu.get_cpu_capability()``) instead of guessing.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

# CPU flags that decide matmul speed by dtype; reports list those present.
TIMING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# CPU flags that change the arithmetic (which kernels PyTorch runs, hence the rounding): runs
# are reproducible bit for bit only between machines with the same ones (:func:`machine_class`).
ARITHMETIC_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
# bf16 / fp32 matmul throughput at one thread, by the fastest bf16 unit present: the factor the
# ns_dtype="auto" cost rule uses (measured by benchmarks/step_time.py's matmul peaks; the
# native-bf16 section of docs/results/benchmarks.md names each machine).
BF16_SPEEDUP = {"amx_bf16": 3.5, "avx512_bf16": 2.0}


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``); empty where they cannot be read."""
    return frozenset((_cpuinfo_field("flags") or "").split())


@functools.cache
def cpu_model() -> str:
    """The CPU model name, or ``platform.processor()`` where /proc/cpuinfo is missing."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def cpu_capability() -> str:
    """PyTorch's CPU kernel level (e.g. ``"AVX2"``, ``"AVX512"``), or ``"unknown"``."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


# "0" or "1": overrides the detection (a VM that hides its flags; a study that must run the
# same precision on every machine it uses).
NATIVE_BF16_ENV = "MUONKIT_CPU_NATIVE_BF16"


def cpu_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16), unless the
    environment variable ``MUONKIT_CPU_NATIVE_BF16`` says "0" or "1".

    ``flags`` replaces the detected flags and ignores the variable (tests).
    """
    if flags is None:
        forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
        if forced in ("0", "1"):
            return forced == "1"
        if forced:
            raise ValueError(f"{NATIVE_BF16_ENV} must be 0 or 1, got {forced!r}")
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def bf16_speedup(flags: frozenset[str] | None = None) -> float:
    """How many times faster than fp32 this CPU multiplies bf16 matrices, from its fastest
    native bf16 unit (:data:`BF16_SPEEDUP`); 1.0 without one (then bf16 is far slower, and
    nothing should use it). ``flags`` replaces the detected flags (tests)."""
    flags = cpu_flags() if flags is None else flags
    return max((v for f, v in BF16_SPEEDUP.items() if f in flags), default=1.0)


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_info(device: torch.device | str | None = None) -> dict:
    """What affects timing, for run reports: CPU model, its timing flags, PyTorch's CPU
    capability, native bf16, cores, torch threads, the 1-minute load now and the GPU name."""
    info = {
        "cpu": cpu_model(),
        "cpu_flags": sorted(f for f in TIMING_FLAGS if f in cpu_flags()),
        "cpu_capability": cpu_capability(),
        "cpu_native_bf16": cpu_native_bf16(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_1min": load_average(),
        "torch": torch.__version__,
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return info


def machine_class(device: torch.device | str, threads: int | None = None) -> dict:
    """What decides a run's bits besides its flags: the device type and its name, and on a CPU
    the :data:`ARITHMETIC_FLAGS` present, PyTorch's CPU kernel level and the torch threads
    (``threads``, default ``torch.get_num_threads()``: the thread count changes how reductions
    are split), on a GPU its compute capability. The same command on two machines of one class
    computes the same bits; a resumed run compares its class with the one it started on."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"device": "cuda", "name": torch.cuda.get_device_name(device),
                "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(device)))}
    return {
        "device": device.type,
        "name": cpu_model(),
        "isa": sorted(f for f in ARITHMETIC_FLAGS if f in cpu_flags()),
        "cpu_capability": cpu_capability(),
        "threads": torch.get_num_threads() if threads is None else threads,
    }
