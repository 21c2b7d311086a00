"""Weight RMS and update RMS of a GPT's hidden matrices during training.

Moonlight (Liu et al. 2025, "Muon is Scalable for LLM Training", section 2) attributes Muon's
fading lead in long runs without weight decay to growing weight and update RMS. To test that,
:class:`RMSMonitor` measures, for the matrices the hybrid puts on Muon (attention and MLP
weights; the same matrices under AdamW):

* ``weight_rms``: ``sqrt(sum W^2 / n)`` over all their entries, at each evaluation;
* ``update_rms``: the RMS of the actual change ``W_after - W_before`` of one optimizer step
  (learning rate, schedule and weight decay included), averaged over the steps since the
  previous evaluation; ``update_rms_last`` is that of the last step.

Each evaluation writes one ``{"kind": "rms", "step": ...}`` record to the run's metrics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from muonkit.hybrid import MUON_ROLE, param_roles


def rms(tensors: list[Tensor]) -> float:
    """RMS over all entries of ``tensors``."""
    n = sum(t.numel() for t in tensors)
    return math.sqrt(sum(float(t.float().pow(2).sum()) for t in tensors) / n) if n else 0.0


class RMSMonitor:
    """Built with the model and its optimizer; the loop calls it after each evaluation."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        roles = param_roles(model)
        self.matrices = [p for name, p in model.named_parameters() if roles.get(name) == MUON_ROLE]
        self.before: list[Tensor] = []
        self.sum_update_rms = 0.0
        self.steps = 0
        self.last = math.nan
        optimizer.register_step_pre_hook(self._snapshot)
        optimizer.register_step_post_hook(self._measure)

    def _snapshot(self, *_) -> None:
        self.before = [p.detach().clone() for p in self.matrices]

    def _measure(self, *_) -> None:
        with torch.no_grad():
            self.last = rms([p - b for p, b in zip(self.matrices, self.before, strict=True)])
        self.before = []
        self.sum_update_rms += self.last
        self.steps += 1

    def __call__(self, step: int, record: dict, logger) -> None:
        mean = self.sum_update_rms / self.steps if self.steps else math.nan
        logger.write({
            "kind": "rms",
            "step": step,
            "weight_rms": rms([p.detach() for p in self.matrices]),
            "update_rms": None if math.isnan(mean) else mean,
            "update_rms_last": None if math.isnan(self.last) else self.last,
        })
        self.sum_update_rms, self.steps = 0.0, 0
