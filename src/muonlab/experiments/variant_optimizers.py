"""The optimizers of a variant study: build one per arm, measure its state, pick the arms."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from muonkit import registry
from muonkit.registry import ADAMW, KRONECKER, KRONECKER_HYBRID, LORAPRE, MUON

from ..models.mlp import MLP
from ..train import optimizer_state_bytes as train_optimizer_state_bytes
from .variant_config import DATASETS, Arm, StudyConfig


def build_model(cfg: StudyConfig, seed: int) -> MLP:
    torch.manual_seed(seed)
    return MLP(DATASETS[cfg.dataset], cfg.hidden, 10, bias=False)


def arm_lr(arm: Arm, cfg: StudyConfig) -> float:
    """The study's LR of ``arm`` (AdamW: ``adamw_lr``, the Muon family: ``lr``)."""
    return cfg.lr if registry.get(arm.kind).is_muon else cfg.adamw_lr


def build_optimizer(
    arm: Arm, model: nn.Module, cfg: StudyConfig, lr: float | None = None
) -> torch.optim.Optimizer:
    """The optimizer of ``arm`` over all of ``model``'s parameters
    (:func:`muonkit.registry.build_matrix_optimizer`: no AdamW groups), at ``lr`` (None: the
    study's, :func:`arm_lr`)."""
    lr = arm_lr(arm, cfg) if lr is None else lr
    spec = registry.get(arm.kind)
    if not spec.is_muon:
        return registry.build_matrix_optimizer(arm.kind, model, lr=lr, weight_decay=0.0)
    options = dict(lr=lr, momentum=cfg.momentum, mixing=arm.mixing, **cfg.muon_options)
    if spec.takes_rank:
        options["rank"] = arm.rank
    return registry.build_matrix_optimizer(arm.kind, model, **options)


def per_param_state_bytes(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """{parameter name: state bytes}: the optimizer's ``state_bytes()`` (the variants; keys
    that are parameter indices are mapped to names), else the tensors in ``state[p]``."""
    if hasattr(optimizer, "state_bytes"):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        return {
            (names[id(params[k])] if isinstance(k, int) else str(k)): int(v)
            for k, v in optimizer.state_bytes().items()
        }
    return {
        names[id(p)]: sum(v.numel() * v.element_size() for v in s.values() if torch.is_tensor(v))
        for p, s in optimizer.state.items()
        if isinstance(p, torch.Tensor)
    }


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (the loop's measure, used in the tables)."""
    return train_optimizer_state_bytes([optimizer])


def measure_state_bytes(arm: Arm, model: nn.Module, cfg: StudyConfig) -> int:
    """State bytes of ``arm``'s optimizer after one step on random gradients (a copy of
    ``model`` is used; state shapes do not depend on the gradient values)."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer = build_optimizer(arm, model, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank clamping is reported by the real runs
        optimizer.step()
    return optimizer_state_bytes(optimizer)


def equal_memory_rank(model: nn.Module, cfg: StudyConfig) -> tuple[int, int, int]:
    """(rank, LoRA-Pre bytes, Kronecker bytes): the LoRA-Pre rank whose measured state is
    closest to KroneckerMuon's on ``model`` (ties go to the smaller rank; at least 1)."""
    target = measure_state_bytes(Arm("Kronecker", KRONECKER), model, cfg)
    max_rank = max(min(p.shape) for p in model.parameters())
    best = None
    for rank in range(1, max_rank + 1):  # state grows with the rank: stop once past the target
        size = measure_state_bytes(Arm("LoRA-Pre", LORAPRE, rank), model, cfg)
        if best is None or abs(size - target) < abs(best[1] - target):
            best = (rank, size)
        if size >= target:
            break
    return best[0], best[1], target


def study_arms(cfg: StudyConfig, model: nn.Module) -> list[Arm]:
    """The arms of ``cfg.study``. Every study has dense Muon (the reference for savings)."""
    muon, kron = Arm("Muon", MUON), Arm("Kronecker", KRONECKER)
    lora = Arm(f"LoRA-Pre r={cfg.rank}", LORAPRE, cfg.rank)
    if cfg.study == "large":
        return [Arm("AdamW", ADAMW), muon, lora, kron]
    if cfg.study == "equal-memory":
        rank, _, _ = equal_memory_rank(model, cfg)
        return [muon, kron, Arm(f"LoRA-Pre r={rank} (equal memory)", LORAPRE, rank)]
    if cfg.study == "rank-sweep":
        return [muon, kron] + [Arm(f"LoRA-Pre r={r}", LORAPRE, r) for r in cfg.ranks]
    return [muon, Arm("Hybrid Kronecker", KRONECKER_HYBRID), lora]
