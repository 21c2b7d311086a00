"""What a run measures about itself: optimizer-state bytes, peak memory, MFU, LRs, the summary."""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence

import torch
from torch import Tensor

from muonkit.muon import MuonBase

# Dense bf16 tensor-core peaks (vendor data sheets) used for MFU when --peak-flops is not given.
KNOWN_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}



def tensor_bytes(obj) -> int:
    """Bytes of the tensors in ``obj`` (a tensor, or dicts / lists / tuples of them)."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def optimizer_state_bytes(optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """Bytes held by tensors in the optimizers' ``state`` (momentum buffers, moments, steps)."""
    return sum(tensor_bytes(dict(opt.state)) for opt in optimizers)


def muon_state_bytes(optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """The part of :func:`optimizer_state_bytes` held for parameters that a Muon-family
    optimizer (:class:`muonkit.muon.MuonBase`) steps as Muon: groups whose ``use_muon`` is
    True or absent. 0 for other optimizers (e.g. torch's AdamW)."""
    return sum(
        tensor_bytes(opt.state.get(p, {}))
        for opt in optimizers
        if isinstance(opt, MuonBase)
        for g in opt.param_groups
        if g.get("use_muon", True)
        for p in g["params"]
    )



def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: ``max_memory_allocated``; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB



def default_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in KNOWN_PEAK_FLOPS.items() if k in name), None)



def summary_record(
    steps, device, optimizers, val_records, step_times, step_tokens, fpt, peak
) -> dict:
    """Throughput over this session's steps, leaving out the first (warm-up/compile) if >1."""
    times, toks = (step_times[1:], step_tokens[1:]) if len(step_times) > 1 else (
        step_times, step_tokens
    )
    total_time = sum(times)
    tokens_per_s = sum(toks) / total_time if total_time > 0 else 0.0
    mfu = fpt * tokens_per_s / peak if (fpt and peak) else None
    return {
        "kind": "summary",
        "steps": steps,
        "final_val_loss": val_records[-1]["val_loss"] if val_records else None,
        "tokens_per_s": tokens_per_s,
        "step_time_s": total_time / len(times) if times else 0.0,
        "peak_mem_bytes": peak_memory_bytes(device),
        "optimizer_state_bytes": optimizer_state_bytes(optimizers),
        "muon_state_bytes": muon_state_bytes(optimizers),
        "mfu": mfu,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
    }


def group_lrs(optimizers) -> dict[str, float]:
    """The LR of every param group, named by its ``role`` (:func:`muonkit.hybrid_param_groups`
    sets one) or ``<optimizer index>.<group index>``."""
    lrs: dict[str, float] = {}
    for i, opt in enumerate(optimizers):
        for j, group in enumerate(opt.param_groups):
            name = str(group.get("role", f"{i}.{j}"))
            lrs[name if name not in lrs else f"{name}.{i}.{j}"] = group["lr"]
    return lrs


def ns_precisions(optimizers) -> dict[str, str]:
    """The Newton-Schulz precision of every Muon group, as resolved on its parameters' device
    (:meth:`muonkit.muon.MuonBase.ns_precision`), by group index (``<optimizer index>.<group
    index>`` when there are several optimizers); {} when no optimizer runs Newton-Schulz."""
    several = len(optimizers) > 1
    return {
        f"{i}.{g}" if several else str(g): description
        for i, opt in enumerate(optimizers) if isinstance(opt, MuonBase)
        for g, description in opt.ns_precision().items()
    }
