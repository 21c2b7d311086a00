"""What Newton-Schulz costs in a GPT training step, from a run's recorded config.

Muon's extra work per optimizer step is one Newton-Schulz call per hidden matrix; the model's
forward+backward costs ``flops_per_token * tokens`` (``GPT.estimate_flops_per_token``:
``6 N + 12 L C T``). Their ratio tells why a Muon step costs what it does on a tiny model and
what it will cost at another size: NS FLOPs grow like ``L d^3`` per step, the model's like
``L d^2 * tokens``, so the fraction falls as ``d / tokens per step``.
"""

from __future__ import annotations

import torch

from muonkit import registry
from muonkit.functional import options_block_shape
from muonkit.options import MuonOptions
from muonkit.precision import ns_flops_by_dtype
from muonkit.registry import MUON

from ..models.gpt import GPT, GPTConfig


def gpt_step_flops(run: dict, device: str = "cpu") -> dict | None:
    """``{"ns": NS FLOPs, "model": forward+backward FLOPs, "fraction": ns / model}`` per
    optimizer step of the GPT Muon run whose config record is ``run`` (None for runs without
    Muon groups or a GPT model config). NS FLOPs count what ``ns_dtype`` runs on ``device``
    (Gram side where cheaper) over the model's Muon matrices, as the run built them."""
    cfg = run.get("config", {})
    if run.get("optimizer") != MUON or "model" not in cfg:
        return None
    try:
        with torch.device("meta"):
            model = GPT(GPTConfig(**cfg["model"]))
            opt = registry.build_optimizer(MUON, model, **cfg.get("optimizer_options", {}))
    except (TypeError, ValueError):  # a config this version cannot rebuild: no figure
        return None
    ns = 0
    for group in opt.param_groups:
        if group.get("use_muon"):
            o = MuonOptions.from_group(group)
            if o.ns_coefficients == "svd":  # an SVD, not Newton-Schulz: no FLOP model
                return None
            shapes = [options_block_shape(p.shape, o) for p in group["params"]] * o.ns_split
            ns += sum(ns_flops_by_dtype(shapes, o.ns_steps, o.ns_dtype, device, o.ns_gram).values())
    tokens = (
        cfg.get("batch_size", 1)
        * cfg["model"]["block_size"]
        * cfg.get("grad_accum", 1)
        * cfg.get("world_size", 1)
    )
    model_flops = model.estimate_flops_per_token() * tokens
    return {"ns": ns, "model": model_flops, "fraction": ns / model_flops}
