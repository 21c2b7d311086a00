"""Which precision and which form Newton-Schulz runs in, and what it costs.

The FLOP model of both evaluations of the iteration (:func:`newton_schulz_flops`), the choice
of the Gram-side form where it is cheaper (:func:`use_gram`), and the compute precision
``ns_dtype="auto"`` picks from what the hardware does natively (:func:`auto_dtype`), including
mixed precision (fp32 first, bf16 last: :func:`mixed_split`). Pure functions of shapes, step
counts and the device; :mod:`muonkit.orthogonalize` runs what they choose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import hardware

GRAM_MIN_ASPECT = 2.0
GRAM_DTYPES = (torch.float32, torch.float64)


def use_gram(shape: Sequence[int], dtype: torch.dtype, gram: bool | None) -> bool:
    """Whether ``gram=None`` (auto) picks the Gram-side evaluation: fp32/fp64 and an aspect
    ratio of at least ``GRAM_MIN_ASPECT``, where it does fewer FLOPs (see
    :func:`newton_schulz`)."""
    if gram is not None:
        return gram
    m, n = sorted(shape[-2:])
    return dtype in GRAM_DTYPES and n >= GRAM_MIN_ASPECT * m


GRAM_RESTART = 5


def newton_schulz_flops(shape: Sequence[int], steps: int = 5, gram: bool = False) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of :func:`newton_schulz` on ``shape``.

    With (m, n) the wide orientation (m <= n) and B the batch size: the standard form costs
    ``steps * (4 m^2 n + 2 m^3)``; the Gram form, per segment of k <= ``GRAM_RESTART`` steps,
    ``4 m^2 n`` (R = X X^T and Q X) plus ``2 m^3 (4 k - 3)`` (one product in the first step,
    four in each later one). Elementwise work is not counted. The cost model behind
    ``GRAM_MIN_ASPECT`` and the benchmarks' achieved-FLOP/s figures.
    """
    m, n = sorted([int(d) for d in shape[-2:]])
    batch = math.prod([int(d) for d in shape[:-2]])  # lists: torch.compile traces them
    if not gram:
        return batch * steps * (4 * m * m * n + 2 * m**3)
    segments = [min(GRAM_RESTART, steps - s) for s in range(0, steps, GRAM_RESTART)]
    return batch * sum(4 * m * m * n + 2 * m**3 * (4 * k - 3) for k in segments)


NS_PRECISIONS = ("auto", "mixed")


def cpu_native_bf16() -> bool:
    """The detection ``auto`` relies on (:func:`muonkit.hardware.cpu_native_bf16`); the seam
    tests replace to force either case (tests/conftest.py forces False by default)."""
    return hardware.cpu_native_bf16()


def slow_bf16(what: str, dtype: torch.dtype | str | None, device: torch.device | str) -> str | None:
    """A warning when ``dtype`` (``what``: the setting that asks for it) puts bf16 matrix
    products on a CPU without native bf16 (:func:`cpu_native_bf16`), where they are emulated,
    many times slower than fp32 ("mixed" Newton-Schulz included); None otherwise."""
    slow = dtype in (torch.bfloat16, "bfloat16", "bf16", "mixed")
    if torch.device(device).type != "cpu" or not slow or cpu_native_bf16():
        return None
    return (f"{what} asks for bf16 on a CPU without native bf16 ({hardware.cpu_model()}: no "
            f"{' or '.join(hardware.NATIVE_BF16_FLAGS)} flag): its bf16 matrix products are "
            "emulated, many times slower than fp32")


def cpu_bf16_speedup() -> float:
    """bf16 / fp32 matmul throughput the cost rule assumes on a native-bf16 CPU
    (:func:`muonkit.hardware.bf16_speedup`: AMX-BF16 3.5, AVX512-BF16 2.0); a seam like
    :func:`cpu_native_bf16`. Without a detected bf16 unit (a forced native CPU in tests) it is
    AVX512-BF16's factor."""
    return max(hardware.bf16_speedup(), hardware.BF16_SPEEDUP["avx512_bf16"])


MIXED_BF16_STEPS = 4


def mixed_split(steps: int) -> tuple[int, int]:
    """(fp32 steps, bf16 steps) of mixed precision: fp32 first, the last ``MIXED_BF16_STEPS``
    (at most ``steps - 1``) in bf16.

    The early steps decide accuracy: rounding G or an early iterate to bf16 loses the
    directions of singular values below bf16's resolution, and every later step amplifies
    that noise (by the slope ``a`` ~3.4 at zero), so fp32 *late* steps cannot restore it.
    After fp32 steps have lifted the small singular values, bf16 steps cost little accuracy.
    Measured by benchmarks/orth_accuracy.py (switch-point table): with 4 bf16 steps the
    result stays within 10% of the fp32 iteration's error for 5 to 8 steps of both schedules.
    """
    bf16 = min(MIXED_BF16_STEPS, max(steps - 1, 0))
    return steps - bf16, bf16


def mixed_flops(shape: Sequence[int], steps: int = 5, gram: bool | None = None) -> tuple[int, int]:
    """(fp32 FLOPs, bf16 FLOPs) of mixed-precision Newton-Schulz on ``shape``: the fp32 steps
    on the Gram side where :func:`use_gram` picks it, the bf16 steps in the standard form."""
    fp32, bf16 = mixed_split(steps)
    fp32_gram = use_gram(shape, torch.float32, gram)
    return newton_schulz_flops(shape, fp32, fp32_gram), newton_schulz_flops(shape, bf16)


def auto_dtype(
    device: torch.device | str,
    shape: Sequence[int] = (1, 1),
    steps: int = 5,
    gram: bool | None = None,
    native_bf16: bool | None = None,
    bf16_speedup: float | None = None,
) -> torch.dtype | str:
    """The precision ``dtype="auto"`` runs Newton-Schulz in, from what the device does natively.

    * CUDA: bfloat16 (tensor cores; what every reference implementation uses).
    * CPU without native bf16 (no AVX512-BF16 / AMX-BF16 flag, :func:`muonkit.hardware.
      cpu_native_bf16`; such CPUs run bf16 matmul tens of times slower than fp32): float32.
    * CPU with native bf16: ``"mixed"`` (:func:`mixed_split`) where its cost, a bf16 product
      counted as ``1 / bf16_speedup`` of an fp32 one (:func:`cpu_bf16_speedup`), is below that
      of fp32 (Gram side where cheaper); else float32. With AVX512-BF16 (2x) square and 3:1
      matrices go mixed and 4:1 ones stay fp32 Gram; with AMX-BF16 (3.5x) all of them go mixed.
    * any other device: float32.

    ``native_bf16`` and ``bf16_speedup`` replace the CPU detection (tests force each case).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16
    if device.type != "cpu":
        return torch.float32
    if native_bf16 is None:
        native_bf16 = cpu_native_bf16()
    if not native_bf16:
        return torch.float32
    if bf16_speedup is None:
        bf16_speedup = cpu_bf16_speedup()
    fp32, bf16 = mixed_flops(shape, steps, gram)
    full = newton_schulz_flops(shape, steps, use_gram(shape, torch.float32, gram))
    return "mixed" if fp32 + bf16 / bf16_speedup < full else torch.float32


def resolve_dtype(
    dtype: torch.dtype | str | None, device, shape=(1, 1), steps: int = 5, gram=None
) -> torch.dtype | str:
    """A torch.dtype or ``"mixed"``: ``dtype`` itself, or :func:`auto_dtype` for "auto"/None."""
    if dtype is None or dtype == "auto":
        return auto_dtype(device, shape, steps, gram)
    if dtype == "mixed" or isinstance(dtype, torch.dtype):
        return dtype
    raise ValueError(f"ns_dtype must be a torch.dtype, 'auto' or 'mixed', got {dtype!r}")


def precision_name(dtype: torch.dtype | str) -> str:
    """"fp32", "bf16", "mixed" (fp32 then bf16), or the dtype's name, for reports."""
    short = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return short.get(dtype, str(dtype).removeprefix("torch."))  # type: ignore[arg-type]


def describe(
    ns_dtype: torch.dtype | str | None,
    device: torch.device | str,
    shapes: Sequence[Sequence[int]],
    steps: int = 5,
    gram: bool | None = None,
) -> str:
    """What ``ns_dtype`` runs as for matrices of ``shapes`` on ``device``, and why, in one
    line for reprs and run reports, e.g. ``"auto: fp32 (cpu AVX2, no native bf16)"``."""
    if not (ns_dtype is None or ns_dtype == "auto"):
        return f"{precision_name(resolve_dtype(ns_dtype, device))} (explicit)"
    device = torch.device(device)
    counts: dict[str, int] = {}
    for shape in shapes:
        name = precision_name(auto_dtype(device, shape, steps, gram))
        counts[name] = counts.get(name, 0) + 1
    if len(counts) <= 1:
        chosen = next(iter(counts), precision_name(auto_dtype(device)))
    else:
        chosen = ", ".join(f"{name} for {n} shapes" for name, n in counts.items())
    if device.type == "cpu":
        native = (f"native bf16, {cpu_bf16_speedup():g}x fp32" if cpu_native_bf16()
                  else "no native bf16")
        why = f"cpu {hardware.cpu_capability()}, {native}"
    else:
        why = device.type
    return f"auto: {chosen} ({why})"


def ns_flops_by_dtype(
    shapes: Sequence[Sequence[int]],
    steps: int = 5,
    ns_dtype: torch.dtype | str | None = "auto",
    device: torch.device | str = "cpu",
    gram: bool | None = None,
) -> dict[str, int]:
    """Matrix-product FLOPs of one Newton-Schulz call per shape, by the precision each product
    runs in (e.g. ``{"fp32": ..., "bf16": ...}``): each shape resolved as ``ns_dtype`` resolves
    it on ``device``, the Gram side where :func:`use_gram` picks it."""
    out: dict[str, int] = {}
    for shape in shapes:
        dtype = resolve_dtype(ns_dtype, device, shape, steps, gram)
        if dtype == "mixed":
            parts = dict(zip(("fp32", "bf16"), mixed_flops(shape, steps, gram)))
        else:
            flops = newton_schulz_flops(shape, steps, use_gram(shape, dtype, gram))
            parts = {precision_name(dtype): flops}
        for name, n in parts.items():
            out[name] = out.get(name, 0) + n
    return out
