"""LoRA adapters (Hu et al. 2021, arXiv 2106.09685) for the GPT's linear layers.

``W x + b`` becomes ``W x + b + (alpha / r) B A x`` with the pretrained ``W``, ``b`` frozen and
only ``A`` (r x in, Kaiming-uniform as in the paper's reference code) and ``B`` (out x r,
zeros, so training starts exactly at the pretrained function) trained. ``A`` and ``B`` are
matrices, so the hybrid gives them to Muon (LoRA-Muon) or, with ``--optimizer adamw``, AdamW.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TARGETS = ("c_attn", "c_proj", "c_fc")  # the attention and MLP projections of every block


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` whose ``weight``/``bias`` are frozen and which adds ``(alpha / rank)
    lora_B lora_A x``. :meth:`from_linear` wraps an existing layer, sharing its parameters."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float,
                 bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if rank < 1:
            raise ValueError(f"--lora-rank must be >= 1, got {rank}")
        self.rank, self.alpha = rank, alpha
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int, alpha: float) -> LoRALinear:
        out = cls(layer.in_features, layer.out_features, rank, alpha, bias=layer.bias is not None)
        out.to(layer.weight.device)
        out.weight, out.bias = layer.weight, layer.bias
        out.weight.requires_grad_(False)
        if out.bias is not None:
            out.bias.requires_grad_(False)
        return out

    def forward(self, x: Tensor) -> Tensor:
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + (self.alpha / self.rank) * update


def add_lora(model: nn.Module, rank: int, alpha: float, targets=TARGETS) -> list[str]:
    """Freeze every parameter of ``model`` and wrap each ``nn.Linear`` named in ``targets``
    (attribute names, e.g. ``c_attn``) in a :class:`LoRALinear`; returns the wrapped modules'
    names. Only the adapters train afterwards."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for attr, child in list(module.named_children()):
            if attr in targets and type(child) is nn.Linear:
                setattr(module, attr, LoRALinear.from_linear(child, rank, alpha))
                wrapped.append(f"{name}.{attr}" if name else attr)
    if not wrapped:
        raise ValueError(f"no nn.Linear named {list(targets)} to put LoRA adapters on")
    return wrapped
