"""The methods step_time.py times: muonkit's settings and the peers, each as a ``Method``.

Peers: torch.optim.Muon; Keller Jordan's muon.py ``SingleDeviceMuon`` from the pip package
``muon-optimizer`` (bf16 Newton-Schulz as shipped); the same algorithm in fp32, written out
below (``keller_fp32``: the package hard-codes the bf16 cast); ``muon-fsdp2`` and
``heavyball.Muon`` where they import and step; torch.optim.AdamW (foreach, fused) as the floor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from muonkit.muon import Muon
from muonkit.precision import ns_flops_by_dtype
from muonkit.variants import NorMuon

KELLER_ABC = (3.4445, -4.7750, 2.0315)


# ---------------------------------------------------------------------------------------------
# Keller Jordan's algorithm with the compute dtype as a parameter (labelled "faithful copy")
# ---------------------------------------------------------------------------------------------


def keller_newton_schulz(G: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """Keller Jordan's ``zeropower_via_newtonschulz5`` (github.com/KellerJordan/Muon, muon.py),
    restated with the cast dtype as an argument: cast; transpose tall inputs; divide by
    ||X||_F + 1e-7; ``steps`` times A = X X^T, B = b A + c A A, X = a X + B X (separate
    elementwise ops, as published); transpose back. Returns the compute dtype, as published.
    """
    a, b, c = KELLER_ABC
    tall = G.size(-2) > G.size(-1)
    X = G.to(dtype)
    X = X.mT if tall else X
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if tall else X


class KellerSingleDevice(torch.optim.Optimizer):
    """Keller Jordan's ``SingleDeviceMuon`` step (EMA momentum, Nesterov by lerp on the
    gradient, per-matrix Newton-Schulz, update scaled by sqrt(max(1, rows/cols)), decoupled
    weight decay), one parameter at a time as published, with ``dtype`` for Newton-Schulz."""

    def __init__(self, params, lr=0.02, weight_decay=0.0, momentum=0.95, dtype=torch.float32):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))
        self.dtype = dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - beta)
                update = p.grad.lerp_(buf, beta)
                update = keller_newton_schulz(update.view(len(update), -1), 5, self.dtype)
                update *= max(1, p.size(-2) / p.size(-1)) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.view_as(p), alpha=-group["lr"])


# ---------------------------------------------------------------------------------------------
# the methods
# ---------------------------------------------------------------------------------------------


class Unavailable(Exception):
    """A peer that cannot be imported or cannot step here; the message says why."""


@dataclass
class Method:
    name: str
    dtype: str  # Newton-Schulz precision: "fp32", "bf16", "mixed", "auto" ("" for AdamW)
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    note: str = ""
    muon: bool = True
    ns_gram: bool | None = False  # muonkit's ns_gram (None = auto); False for every peer

    def flops(self, shapes, device) -> dict[str, int]:
        """Matrix-product FLOPs of one step's Newton-Schulz by compute dtype ("fp32",
        "bf16"): the Gram form where it runs, each shape in the precision it runs in."""
        named = {"fp32": torch.float32, "bf16": torch.bfloat16}
        dtype = named.get(self.dtype, self.dtype)
        return ns_flops_by_dtype(shapes, 5, dtype, device, self.ns_gram)


def _keller_package(params):
    try:
        import muon as keller
    except ImportError as e:
        raise Unavailable(f"pip package muon-optimizer not installed ({e})") from None
    return keller.SingleDeviceMuon(params)


def _muon_fsdp2(params):
    try:
        import muon_fsdp2
    except ImportError as e:
        raise Unavailable(f"pip package muon-fsdp2 not installed ({e})") from None
    return muon_fsdp2.Muon([dict(params=params, use_muon=True, rms_scale=False)])


def _heavyball(params):
    try:
        import heavyball
    except ImportError as e:
        raise Unavailable(f"pip package heavyball not installed ({e})") from None
    return heavyball.Muon(params)


def methods(device: torch.device) -> list[Method]:
    out = [
        Method(
            "muonkit Muon() default",
            "auto",
            Muon,
            "jordan, 5 steps, ns_dtype='auto', Gram-NS where cheaper",
            ns_gram=None,
        ),
        Method("muonkit jordan, Gram off", "auto", lambda p: Muon(p, ns_gram=False)),
        Method(
            "muonkit polar_express",
            "auto",
            lambda p: Muon(p, ns_coefficients="polar_express"),
            ns_gram=None,
        ),
        Method(
            "muonkit polar_express, Gram off",
            "auto",
            lambda p: Muon(p, ns_coefficients="polar_express", ns_gram=False),
        ),
        Method(
            "muonkit ns_dtype=bf16 (opt-in)",
            "bf16",
            lambda p: Muon(p, ns_dtype=torch.bfloat16),
            "torch.optim.Muon's precision; Gram-NS never runs in bf16",
            ns_gram=None,
        ),
        Method(
            "muonkit ns_dtype='mixed'",
            "mixed",
            lambda p: Muon(p, ns_dtype="mixed"),
            "first step fp32 (Gram side where cheaper), last 4 bf16",
            ns_gram=None,
        ),
        Method(
            "muonkit NorMuon default",
            "auto",
            NorMuon,
            "Muon's default + per-row normalization (Li et al. 2025)",
            ns_gram=None,
        ),
        Method("torch.optim.Muon", "bf16", torch.optim.Muon, "as shipped in torch"),
        Method(
            "Keller Jordan muon.py SingleDeviceMuon",
            "bf16",
            _keller_package,
            "pip muon-optimizer, as shipped",
        ),
        Method(
            "Keller Jordan algorithm in fp32",
            "fp32",
            lambda p: KellerSingleDevice(p, dtype=torch.float32),
            "faithful copy in this benchmark (package hard-codes bf16)",
        ),
        Method("muon-fsdp2 Muon", "bf16", _muon_fsdp2, "pip muon-fsdp2"),
        Method(
            "heavyball.Muon",
            "bf16",
            _heavyball,
            "pip heavyball, torch.compile'd step; NS input stochastically rounded to bf16",
        ),
        Method(
            "torch.optim.AdamW foreach",
            "",
            lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
            muon=False,
        ),
        Method(
            "torch.optim.AdamW fused",
            "",
            lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
            muon=False,
        ),
    ]
    return out
