"""The optimizers muonkit builds for a model, by name: one table that the CLI's ``--optimizer``
choices, :func:`build_optimizer` (the optimizer of any ``nn.Module``, by name) and
:func:`muonkit.distributed.parallel.distribute_optimizer` read.

Each :class:`OptimizerSpec` says which hybrid class trains the model (Muon-family optimizers on
the hidden matrices, AdamW on embeddings, head and vectors; every one is
:class:`muonkit.hybrid.MuonWithAuxAdam` with a momentum store and a post step, which
``spec.store`` and ``spec.post_step`` name), which ``--parallel`` modes it can run under, and
what it becomes under DDP:

* ``ddp_class`` names a class of :mod:`muonkit.distributed` (e.g. ``DistributedMuonWithAuxAdam``):
  the same math with each matrix orthogonalized once, on one owner rank;
* ``ddp_class=None``: the optimizer runs unchanged. DDP hands every rank the same averaged
  gradients and the variants' steps are deterministic (LoRA-Pre draws from a generator of its
  own), so each rank takes the identical step: exact, with the work repeated on every rank.

Modes a spec does not list are refused by :func:`check_parallel` with one line naming both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import variants
from .hybrid import (
    MUON_ROLE,
    ROLES,
    MuonWithAuxAdam,
    check_option_names,
    classify_params,
    hybrid_param_groups,
)
from .muon import MomentumStore, Muon, PostStep

PARALLEL_MODES = ("none", "ddp", "fsdp2", "hsdp")  # --parallel of the train loop

REPLICATED_MODES = ("none", "ddp")  # the memory-saving variants need whole matrices


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of the registry: ``name`` (the ``--optimizer`` value), a one-line
    ``summary``, ``hybrid`` (the class that trains a model; None: ``torch.optim.AdamW``), the
    ``parallel`` modes it runs under, ``ddp_class`` (see the module doc), ``takes_rank`` (it
    reads ``--rank``), ``takes_dense`` (it keeps dense momentum on the matrices that
    :func:`build_optimizer`'s ``dense`` names; the lab names the GPT's last block) and
    ``why_not`` (said when a mode is refused); ``matrices``: the same optimizer over matrices
    alone, with no AdamW groups (None: torch.optim.AdamW; :func:`build_matrix_optimizer`);
    ``saves_memory``: a variant whose momentum is compressed (the variant studies compare
    every one against dense Muon)."""

    name: str
    summary: str
    hybrid: type[torch.optim.Optimizer] | None
    parallel: tuple[str, ...] = PARALLEL_MODES
    ddp_class: str | None = None
    takes_rank: bool = False
    takes_dense: bool = False
    why_not: str = ""
    matrices: type[torch.optim.Optimizer] | None = None
    saves_memory: bool = False

    @property
    def is_muon(self) -> bool:
        """A Muon-family hybrid (Muon options and the momentum warmup apply)."""
        return self.hybrid is not None

    @property
    def store(self) -> MomentumStore | None:
        """How its Muon groups keep their momentum (None for AdamW): the hybrid's store."""
        return None if self.hybrid is None else self.hybrid.store

    @property
    def post_step(self) -> PostStep | None:
        """What follows Newton-Schulz in its Muon groups (None: nothing): the hybrid's."""
        return None if self.hybrid is None else self.hybrid.post_step


# The optimizers' names, spelled here alone: the CLI, the studies and the reports use these.
ADAMW = "adamw"
MUON = "muon"
NORMUON = "normuon"
LORAPRE = "lorapre"
KRONECKER = "kronecker"
KRONECKER_HYBRID = "kronecker-hybrid"

_VARIANT_LIMIT = "its compressed momentum needs whole matrices on every rank"

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec(ADAMW, "torch.optim.AdamW on every parameter (nanoGPT's groups)", None),
        OptimizerSpec(
            MUON, "the Muon hybrid: Muon on hidden matrices, AdamW on the rest",
            MuonWithAuxAdam,
            ddp_class="DistributedMuonWithAuxAdam", matrices=Muon,
        ),
        OptimizerSpec(
            NORMUON, "NorMuon (row-normalized Muon) hybrid", variants.NorMuonWithAuxAdam,
            ddp_class="DistributedNorMuonWithAuxAdam", matrices=variants.NorMuon,
        ),
        OptimizerSpec(
            LORAPRE, "LoRA-Pre (low-rank momentum) hybrid", variants.LoRAPreMuonWithAuxAdam,
            parallel=REPLICATED_MODES, takes_rank=True, why_not=_VARIANT_LIMIT,
            matrices=variants.LoRAPreMuon, saves_memory=True,
        ),
        OptimizerSpec(
            KRONECKER, "Kronecker-factored momentum hybrid", variants.KroneckerMuonWithAuxAdam,
            parallel=REPLICATED_MODES, why_not=_VARIANT_LIMIT, matrices=variants.KroneckerMuon,
            saves_memory=True,
        ),
        OptimizerSpec(
            KRONECKER_HYBRID, "Kronecker momentum, dense Muon momentum on the last block",
            variants.KroneckerMuonWithAuxAdam,
            parallel=REPLICATED_MODES, takes_dense=True, why_not=_VARIANT_LIMIT,
            matrices=variants.HybridKroneckerMuon, saves_memory=True,
        ),
    )
}

OPTIMIZER_NAMES = tuple(OPTIMIZERS)

# Names that records written before the registry named every optimizer carry (the MLP variant
# studies' kinds): read back as the registry's (:func:`canonical_name`), never written.
FORMER_NAMES = {"lora_pre": LORAPRE, "hybrid_kronecker": KRONECKER_HYBRID}


def canonical_name(name: str) -> str:
    """The registry's name of ``name``, which may be a :data:`FORMER_NAMES` spelling."""
    return FORMER_NAMES.get(name, name)


def get(name: str) -> OptimizerSpec:
    """The spec of ``name``; an unknown name is a ValueError listing the valid ones."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}") from None


def build_matrix_optimizer(name: str, model: nn.Module, **options) -> torch.optim.Optimizer:
    """The optimizer ``name`` over every parameter of ``model``, all of them matrices (a
    bias-free MLP): no AdamW groups. "adamw" is ``torch.optim.AdamW(params, **options)``; a
    Muon-family name its spec's ``matrices`` class with ``options`` (an optimizer that keeps
    dense momentum on some matrices, "kronecker-hybrid", is built from ``model`` and keeps it
    on the output layer)."""
    spec = get(name)
    if spec.matrices is None:
        return torch.optim.AdamW(list(model.parameters()), **options)
    if spec.takes_dense:
        return spec.matrices(model, **options)
    return spec.matrices(list(model.parameters()), **options)


def adamw_role_groups(model: nn.Module, lr: float, weight_decay: float,
                      role_lrs: dict[str, float | None]) -> list[dict]:
    """AdamW param groups of ``model`` by :func:`muonkit.hybrid.classify_params` role: the
    hidden matrices at ``lr``, the embeddings, the head and the vectors each at its
    ``role_lrs`` entry (None: ``lr``); ``weight_decay`` on every parameter of 2+ dims, none on
    vectors (nanoGPT's split). Roles without parameters get no group; each group carries its
    ``role``."""
    by_role: dict[str, list[Tensor]] = {}
    for _, p, role in classify_params(model):
        by_role.setdefault(role, []).append(p)
    lrs = {MUON_ROLE: lr, **{r: lr if v is None else v for r, v in role_lrs.items()}}
    return [{"params": by_role[role], "lr": lrs[role], "role": role,
             "weight_decay": 0.0 if role == "vector" else weight_decay}
            for role in ROLES if by_role.get(role)]


def build_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float = 6e-4,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    muon_lr: float = 0.02,
    muon_weight_decay: float = 0.0,
    embedding_lr: float | None = None,
    head_lr: float | None = None,
    vector_lr: float | None = None,
    qkv_split: bool = False,
    dense: Sequence[str] | Callable[[str, Tensor], bool] | None = None,
    fused: bool | None = None,
    **muon_options,
) -> torch.optim.Optimizer:
    """The optimizer ``name`` of :data:`OPTIMIZERS` over ``model``'s trainable parameters.

    ``"adamw"`` is nanoGPT's ``configure_optimizers``: torch.optim.AdamW with lr 6e-4, betas
    (0.9, 0.95), weight decay 0.1 on every parameter of 2+ dims (matmul weights and
    embeddings) and none on biases and norm gains; ``fused`` defaults to True when every
    parameter is on CUDA. Given any of ``embedding_lr``, ``head_lr``, ``vector_lr``, its
    groups are the roles of :func:`adamw_role_groups` (the hidden matrices keep ``lr``), as
    nanochat gives its AdamW embeddings and head LRs of their own.

    The others are the spec's hybrid over :func:`muonkit.hybrid.hybrid_param_groups`: the
    hidden matrices on Muon (or the variant) with ``muon_lr`` (0.02, Keller Jordan's muon.py)
    and ``muon_weight_decay``; the embeddings, the head (tied: the embedding) and all vectors
    on AdamW with the settings above (``lr``, ``betas``, ``eps``, ``weight_decay`` on
    embeddings and head, none on vectors); ``embedding_lr``, ``head_lr``, ``vector_lr``
    override ``lr`` per role. ``qkv_split`` orthogonalizes each fused QKV weight
    (:func:`muonkit.hybrid.fused_qkv_params`) as three blocks Q, K, V (``ns_split=3``).
    ``dense`` (parameter names, or a predicate ``(name, param) -> bool``; required by, and
    only for, an optimizer whose spec ``takes_dense``, e.g. "kronecker-hybrid") picks the
    matrices that keep dense Muon momentum
    (:func:`muonkit.variants.dense_momentum_groups`). ``muon_options`` go to the Muon groups:
    :class:`muonkit.options.MuonOptions` fields (momentum, nesterov, ns_steps, ...) and the
    variant's own (``rank`` of "lorapre", default 16); any other keyword is a TypeError naming
    the closest valid ones.
    """
    spec = get(name)
    check_option_names(muon_options, "build_optimizer")
    if "rank" in muon_options and not spec.takes_rank:
        raise ValueError(f"rank is not an option of optimizer {name!r}")
    if dense is not None and not spec.takes_dense:
        raise ValueError(f"dense is not an option of optimizer {name!r}")
    if spec.takes_dense and dense is None:
        raise ValueError(f"optimizer {name!r} needs dense=: the names of the matrices that "
                         "keep dense momentum, or a predicate (name, param) -> bool")
    if not spec.is_muon:
        if muon_options:
            raise ValueError(f"Muon options {sorted(muon_options)} given for optimizer {name!r}")
        params = [p for p in model.parameters() if p.requires_grad]
        role_lrs = {"embedding": embedding_lr, "head": head_lr, "vector": vector_lr}
        if any(v is not None for v in role_lrs.values()):
            groups = adamw_role_groups(model, lr, weight_decay, role_lrs)
        else:
            groups = [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ]
        if fused is None:
            fused = all(p.is_cuda for p in params)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    groups = hybrid_param_groups(
        model,
        muon_lr=muon_lr,
        adamw_lr=lr,
        embedding_lr=embedding_lr,
        head_lr=head_lr,
        vector_lr=vector_lr,
        muon_weight_decay=muon_weight_decay,
        adamw_weight_decay=weight_decay,
        adamw_betas=betas,
        adamw_eps=eps,
        qkv_split=3 if qkv_split else 1,
        **muon_options,
    )
    if dense is not None:
        groups = variants.dense_momentum_groups(model, groups, dense)
    return spec.hybrid(groups)


def _refuse_mode(who: str, spec: OptimizerSpec, mode: str) -> None:
    if mode not in spec.parallel:
        raise ValueError(
            f"{who} cannot run under --parallel {mode} ({spec.why_not}); "
            f"it runs under --parallel {' or '.join(spec.parallel)}"
        )


def check_known_mode(mode: str) -> None:
    """Refuse a ``--parallel`` value that is not one of :data:`PARALLEL_MODES`."""
    if mode not in PARALLEL_MODES:
        raise ValueError(f"unknown --parallel mode {mode!r}; valid: {list(PARALLEL_MODES)}")


def check_parallel(name: str, mode: str) -> None:
    """Refuse ``--parallel mode`` for an optimizer that cannot run under it (one line)."""
    spec = get(name)
    check_known_mode(mode)
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
        return OPTIMIZERS[ADAMW]
    for spec in OPTIMIZERS.values():
        if spec.hybrid is cls:
            return spec
    return None
