"""The optimizers muonkit builds for a model, by name: one table that the CLI's ``--optimizer``
choices, the GPT's ``configure_optimizers`` and
:func:`muonkit.distributed.parallel.distribute_optimizer` read.

Each :class:`OptimizerSpec` says which hybrid class trains the model (Muon-family optimizers on
the hidden matrices, AdamW on embeddings, head and vectors), which ``--parallel`` modes it can
run under, and what it becomes under DDP:

* ``ddp_class`` names a class of :mod:`muonkit.distributed` (e.g. ``DistributedMuonWithAuxAdam``):
  the same math with each matrix orthogonalized once, on one owner rank;
* ``ddp_class=None``: the optimizer runs unchanged. DDP hands every rank the same averaged
  gradients and the variants' steps are deterministic (LoRA-Pre draws from a generator of its
  own), so each rank takes the identical step: exact, with the work repeated on every rank.

Modes a spec does not list are refused by :func:`check_parallel` with one line naming both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import variants
from .hybrid import MuonWithAuxAdam

PARALLEL_MODES = ("none", "ddp", "fsdp2", "hsdp")  # --parallel of the train loop

REPLICATED_MODES = ("none", "ddp")  # the memory-saving variants need whole matrices


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of the registry: ``name`` (the ``--optimizer`` value), a one-line
    ``summary``, ``hybrid`` (the class that trains a model; None: ``torch.optim.AdamW``), the
    ``parallel`` modes it runs under, ``ddp_class`` (see the module doc), ``takes_rank`` (it
    reads ``--rank``), ``dense_last_block`` (the last block's matrices keep dense momentum:
    ``models.gpt.dense_head_side_group``) and ``why_not`` (said when a mode is refused)."""

    name: str
    summary: str
    hybrid: type[torch.optim.Optimizer] | None
    parallel: tuple[str, ...] = PARALLEL_MODES
    ddp_class: str | None = None
    takes_rank: bool = False
    dense_last_block: bool = False
    why_not: str = ""

    @property
    def is_muon(self) -> bool:
        """A Muon-family hybrid (Muon options and the momentum warmup apply)."""
        return self.hybrid is not None


_VARIANT_LIMIT = "its compressed momentum needs whole matrices on every rank"

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("adamw", "torch.optim.AdamW on every parameter (nanoGPT's groups)", None),
        OptimizerSpec(
            "muon", "the Muon hybrid: Muon on hidden matrices, AdamW on the rest",
            MuonWithAuxAdam,
            ddp_class="DistributedMuonWithAuxAdam",
        ),
        OptimizerSpec(
            "normuon", "NorMuon (row-normalized Muon) hybrid", variants.NorMuonWithAuxAdam,
            ddp_class="DistributedNorMuonWithAuxAdam",
        ),
        OptimizerSpec(
            "lorapre", "LoRA-Pre (low-rank momentum) hybrid", variants.LoRAPreMuonWithAuxAdam,
            parallel=REPLICATED_MODES, takes_rank=True, why_not=_VARIANT_LIMIT,
        ),
        OptimizerSpec(
            "kronecker", "Kronecker-factored momentum hybrid", variants.KroneckerMuonWithAuxAdam,
            parallel=REPLICATED_MODES, why_not=_VARIANT_LIMIT,
        ),
        OptimizerSpec(
            "kronecker-hybrid", "Kronecker momentum, dense Muon momentum on the last block",
            variants.KroneckerMuonWithAuxAdam,
            parallel=REPLICATED_MODES, dense_last_block=True, why_not=_VARIANT_LIMIT,
        ),
    )
}

OPTIMIZER_NAMES = tuple(OPTIMIZERS)


def get(name: str) -> OptimizerSpec:
    """The spec of ``name``; an unknown name is a ValueError listing the valid ones."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}") from None


def _refuse_mode(who: str, spec: OptimizerSpec, mode: str) -> None:
    if mode not in spec.parallel:
        raise ValueError(
            f"{who} cannot run under --parallel {mode} ({spec.why_not}); "
            f"it runs under --parallel {' or '.join(spec.parallel)}"
        )


def check_parallel(name: str, mode: str) -> None:
    """Refuse ``--parallel mode`` for an optimizer that cannot run under it (one line)."""
    spec = get(name)
    if mode not in PARALLEL_MODES:
        raise ValueError(f"unknown --parallel mode {mode!r}; valid: {list(PARALLEL_MODES)}")
    _refuse_mode(f"--optimizer {name}", spec, mode)


def check_optimizer_parallel(optimizer: torch.optim.Optimizer, mode: str) -> None:
    """Refuse ``mode`` for a built registry optimizer that cannot run under it (one line naming
    its class: one class may serve several names, e.g. kronecker and kronecker-hybrid)."""
    spec = spec_of(optimizer)
    if spec is not None:
        _refuse_mode(type(optimizer).__name__, spec, mode)


def spec_of(optimizer: torch.optim.Optimizer) -> OptimizerSpec | None:
    """The spec whose class ``optimizer`` is exactly (subclasses are other optimizers), or None:
    ``torch.optim.AdamW`` is "adamw"; kronecker and kronecker-hybrid share a class, so specs of
    one class must agree on ``parallel`` and ``ddp_class`` (tested)."""
    cls = type(optimizer)
    if cls is torch.optim.AdamW:
        return OPTIMIZERS["adamw"]
    for spec in OPTIMIZERS.values():
        if spec.hybrid is cls:
            return spec
    return None
