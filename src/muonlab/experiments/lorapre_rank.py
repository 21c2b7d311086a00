"""LoRA-Pre's momentum against dense Muon's, rank by rank, on the tiny GPT's real gradients.

Issue 25: on the tiny GPT LoRA-Pre's final loss rose with rank. This measures why, on one
trajectory: dense Muon (the hybrid of ``muonkit variants gpt``, its schedules and clipping;
or LoRA-Pre of one rank, ``driver_rank``) trains the model, and beside it a shadow
:class:`muonkit.Muon` and one shadow :class:`muonkit.variants.LoRAPreMuon` per rank, at
``lr=0`` on copies of the hidden matrices, are fed the same clipped gradients and the same
momentum each step (their real store code; the weights they would move never move). Each step,
over all hidden matrices at once (:func:`compare`):

- the momentum's relative error ``||B A - M|| / ||M||`` against Muon's buffer M, beside the
  best any rank-r matrix can do (:func:`truncation_error`, Eckart-Young), and its norm ratio;
- the update before orthogonalization (``G + mu B A`` vs ``G + mu M``) and after: RMS and
  cosine to dense Muon's, and the share of that update the gradient carries
  (``||G|| / ||G + mu B A||``);
- over each window of ``every`` steps, the displacement the orthogonalized updates add up to
  against dense Muon's (:func:`window_figures`): the effective step, momentum being what
  makes successive steps agree.

:func:`measure` returns the per-step records; ``benchmarks/lorapre_rank.py`` writes them with
their provenance and draws the figure (:func:`muonlab.report.plots.plot_lorapre_rank`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from muonkit.functional import nesterov_updates, orthogonalize_updates
from muonkit.muon import Muon
from muonkit.options import MuonOptions
from muonkit.registry import LORAPRE, MUON
from muonkit.schedules import apply_schedules, lr_multiplier, muon_momentum
from muonkit.variants import LoRAPreMuon

from ..data.text import TokenBatches, load_text
from ..models.gpt import GPT, preset_config
from ..train.gpt import gpt_optimizer
from ..train.step import lm_loss


def rms(tensors: list[Tensor]) -> float:
    """Root mean square of every element of ``tensors`` taken together."""
    total = sum(float(t.double().square().sum()) for t in tensors)
    return math.sqrt(total / sum(t.numel() for t in tensors))


def norm(tensors: list[Tensor]) -> float:
    """Frobenius norm of ``tensors`` taken as one vector."""
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def relative_error(approx: list[Tensor], exact: list[Tensor]) -> float:
    """``||approx - exact|| / ||exact||`` over the tensors taken as one vector."""
    return norm([a.double() - e.double() for a, e in zip(approx, exact)]) / norm(exact)


def cosine(a: list[Tensor], b: list[Tensor]) -> float:
    """Cosine between ``a`` and ``b``, each taken as one vector."""
    dot = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))
    return dot / (norm(a) * norm(b))


def truncation_error(matrices: list[Tensor], rank: int) -> float:
    """The smallest relative error any rank-``rank`` matrices reach (Eckart-Young: the
    singular values past the first ``rank`` of each, over all matrices as one vector)."""
    tail = 0.0
    for m in matrices:
        s = torch.linalg.svdvals(m.double())
        tail += float(s[rank:].square().sum())
    return math.sqrt(tail) / norm(matrices)


def compare(grads: list[Tensor], dense: list[Tensor], approx: list[Tensor], rank: int | None,
            options: MuonOptions) -> dict:
    """One step's figures of a momentum ``approx`` (None: dense itself) against Muon's
    buffers ``dense``, both fed ``grads``; the updates are Muon's of each
    (:func:`muonkit.functional.nesterov_updates`, then Newton-Schulz of ``options``)."""
    pre = nesterov_updates(grads, approx, options)
    pre_dense = nesterov_updates(grads, dense, options)
    orth = orthogonalize_updates(pre, options)
    orth_dense = orthogonalize_updates(pre_dense, options)
    row = {
        "momentum_rel_error": relative_error(approx, dense),
        "momentum_norm_ratio": norm(approx) / norm(dense),
        "pre_rms": rms(pre), "pre_cosine": cosine(pre, pre_dense),
        "grad_share": norm(grads) / norm(pre),
        "orth_rms": rms(orth), "orth_rms_ratio": rms(orth) / rms(orth_dense),
        "orth_cosine": cosine(orth, orth_dense),
    }
    if rank is not None:
        row["best_rank_rel_error"] = truncation_error(dense, rank)
    return row


@dataclass
class RankConfig:
    """The measured run: the study's tiny GPT and schedules (``muonkit variants gpt``)."""

    ranks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    steps: int = 300
    every: int = 5  # steps between records
    seed: int = 0
    batch_size: int = 12
    muon_lr: float = 0.02
    adamw_lr: float = 0.008
    warmup_frac: float = 0.05
    momentum_warmup_frac: float = 0.15
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    driver_rank: int | None = None  # None: dense Muon moves the weights; r: LoRA-Pre rank r
    gamma1: float | None = None  # LoRA-Pre's factor step (None: its default 1 - sqrt(momentum))


def measure(cfg: RankConfig, data: str | None = None) -> list[dict]:
    """Train the tiny GPT ``cfg.steps`` steps with the dense Muon hybrid (or, with
    ``cfg.driver_rank``, the LoRA-Pre hybrid of that rank), Muon's buffer and the LoRA-Pre
    stores of ``cfg.ranks`` in shadow optimizers at LR 0 beside it; every ``cfg.every`` steps
    one record per rank and one for dense (``rank`` None), :func:`compare`'s figures and
    :func:`window_figures` of the updates since the last record."""
    torch.manual_seed(cfg.seed)
    tokens = load_text(data) if data else load_text()
    model = GPT(preset_config("tiny", vocab_size=tokens.vocab_size))
    variant = {} if cfg.driver_rank is None else {"rank": cfg.driver_rank, "gamma1": cfg.gamma1}
    opt = gpt_optimizer(model, LORAPRE if variant else MUON, lr=cfg.adamw_lr,
                        muon_lr=cfg.muon_lr, muon_weight_decay=0.0, **variant)
    (group,) = [g for g in opt.param_groups if g.get("use_muon")]
    hidden = list(group["params"])
    options = MuonOptions.from_group(group)

    def copies():
        return [copy.deepcopy(p.detach()) for p in hidden]

    shadows = {None: Muon(copies(), lr=0.0, options=options),
               **{r: LoRAPreMuon(copies(), lr=0.0, rank=r, gamma1=cfg.gamma1, seed=cfg.seed,
                                 options=options)
                  for r in cfg.ranks}}
    batches = TokenBatches(tokens.train, cfg.batch_size, model.config.block_size,
                           seed=cfg.seed, split="train")
    warmup, m_warmup = round(cfg.warmup_frac * cfg.steps), round(cfg.momentum_warmup_frac
                                                                  * cfg.steps)
    records: list[dict] = []
    windows: dict = {}  # rank (None: dense) -> the sum of its orthogonalized updates
    for step in range(cfg.steps):
        mu = muon_momentum(step, warmup_steps=m_warmup)
        apply_schedules(opt, step, muon_momentum=mu,
                        lr_mult=lr_multiplier(step, total_steps=cfg.steps, warmup_steps=warmup,
                                              min_lr_ratio=cfg.min_lr_ratio))
        opt.zero_grad()
        loss = lm_loss(model, batches.next_batch())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grads = [p.grad.detach().clone() for p in hidden]
        opt.step()
        for shadow in shadows.values():
            for q, g in zip(shadow.param_groups[0]["params"], grads):
                q.grad = g
            shadow.param_groups[0]["momentum"] = mu
            shadow.step()
        now = MuonOptions.from_group(group)
        dense = [shadows[None].state[q]["momentum_buffer"]
                 for q in shadows[None].param_groups[0]["params"]]
        momenta = {None: dense, **{r: [s.state[q]["lowrank_B"] @ s.state[q]["lowrank_A"]
                                       for q in s.param_groups[0]["params"]]
                                   for r, s in shadows.items() if r is not None}}
        for r, m in momenta.items():
            orth = orthogonalize_updates(nesterov_updates(grads, m, now), now)
            sums, norms = windows.get(r, ([torch.zeros_like(o) for o in orth], 0.0))
            windows[r] = ([a + o for a, o in zip(sums, orth)], norms + norm(orth))
        if (step + 1) % cfg.every and step + 1 != cfg.steps:
            continue
        base = {"step": step + 1, "loss": float(loss.detach()), "momentum": mu}
        dense_sum = windows[None][0]
        for r, m in momenta.items():
            sums, norms = windows[r]
            records.append({**base, "rank": r, **compare(grads, dense, m, r, now),
                            **window_figures(sums, norms, dense_sum)})
        windows.clear()
    return records


def window_figures(sums: list[Tensor], norms: float, dense_sum: list[Tensor]) -> dict:
    """Where a window of orthogonalized updates takes the weights: ``persistence``
    ``||sum O_t|| / sum ||O_t||`` (1: every step the same direction; 1/sqrt(k) for k
    orthogonal ones), its displacement against dense Muon's over the same window (norm ratio,
    cosine)."""
    return {"persistence": norm(sums) / norms,
            "window_drift_ratio": norm(sums) / norm(dense_sum),
            "window_cosine": cosine(sums, dense_sum)}


def summary(records: list[dict], after: int = 0) -> dict[str, dict[str, float]]:
    """Per rank ("dense" for None), the mean of each figure over the records past step
    ``after``."""
    out: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(str(r["rank"] or "dense") for r in records):
        rows = [r for r in records if str(r["rank"] or "dense") == key and r["step"] > after]
        figures = [k for k in rows[0] if k not in ("step", "rank", "loss", "momentum")]
        out[key] = {k: sum(r[k] for r in rows) / len(rows) for k in figures}
    return out
