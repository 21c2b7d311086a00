"""Carry an AdamW checkpoint's optimizer state into Muon (fine-tuning an AdamW-pretrained model).

The rule (issue 24): each Muon-trained parameter's momentum buffer comes from AdamW's first
moment ``exp_avg`` of that parameter; parameters the hybrid trains with AdamW keep
``exp_avg``, ``exp_avg_sq`` and ``step``. AdamW's ``exp_avg`` is an EMA of the gradients,
``m <- beta1 m + (1 - beta1) g``: that is the buffer of Muon's ``"ema"`` momentum form as it
stands. The ``"standard"`` form keeps the heavy-ball sum ``B <- mu B + g``, which at steady
state is ``g / (1 - mu)``, i.e. ``1 / (1 - beta1)`` times the EMA: its buffer is
``exp_avg / (1 - beta1)``, with ``beta1`` the ``betas[0]`` of the AdamW group that held the
parameter. Neither is bias-corrected, as neither Muon buffer is.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from .muon import DenseMomentum, MuonBase
from .options import MuonOptions

ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


@torch.no_grad()
def migrate_adamw_state(
    adamw: torch.optim.Optimizer | Mapping,
    muon_optimizer: MuonBase,
    params: Iterable[Tensor] | None = None,
) -> None:
    """Replace ``muon_optimizer``'s state with one built from an AdamW (or Adam) state.

    For each parameter of ``muon_optimizer``: in a Muon group (``use_muon``, every group of
    :class:`muonkit.Muon` and :class:`muonkit.variants.NorMuon`) its ``momentum_buffer`` is
    AdamW's ``exp_avg`` for ``momentum_form="ema"`` and ``exp_avg / (1 - beta1)`` for
    ``"standard"`` (the EMA vs the heavy-ball sum of the same gradients, see the module
    docstring; ``beta1`` is ``betas[0]`` of the AdamW group that held the parameter; NorMuon's
    row moment starts empty). In an AdamW group of :class:`muonkit.MuonWithAuxAdam` (or a
    variant's hybrid) it gets ``exp_avg``, ``exp_avg_sq`` and ``step`` as they are, so AdamW
    continues where it stopped. Buffers have the parameter's own shape, so weights stored
    ``(in, out)`` (``transposed=True``) need no transpose. Tensors are copied to the
    parameter's device and dtype. Parameters the AdamW state lacks (not in it, or never
    stepped) start empty, with one warning that counts them.

    Which AdamW state belongs to which parameter:

    * ``adamw`` an optimizer instance: by identity, the same parameter tensors (build the Muon
      optimizer over the same model, after ``adamw.load_state_dict(...)`` if from disk).
    * ``adamw`` a ``state_dict()``: it numbers its parameters by position, so pass ``params``,
      the parameters the AdamW optimizer was built over, in the order of its param groups
      (for ``AdamW(model.parameters())``: ``model.parameters()``; for groups
      ``[{"params": decay}, {"params": no_decay}]``: ``decay + no_decay``).

    Raises ValueError when the counts differ, when a moment's shape is not its parameter's,
    when the state is not Adam's (no ``exp_avg``), or for LoRA-Pre and Kronecker variants,
    whose momentum is stored compressed, not as a dense buffer; TypeError when a state dict
    comes without ``params``.
    """
    if isinstance(muon_optimizer, MuonBase) and not isinstance(muon_optimizer.store, DenseMomentum):
        raise ValueError(
            f"migrate_adamw_state: {type(muon_optimizer).__name__} stores its momentum "
            "compressed (low-rank / Kronecker factors), not as a dense buffer AdamW's exp_avg "
            "could fill; migrate into Muon, MuonWithAuxAdam, NorMuon or NorMuonWithAuxAdam"
        )
    if not isinstance(muon_optimizer, MuonBase):
        raise TypeError(
            "migrate_adamw_state: the target must be a muonkit optimizer (Muon, "
            f"MuonWithAuxAdam, NorMuon...), got {type(muon_optimizer).__name__}"
        )
    sources = adamw_moments(adamw, params)
    missing = 0
    for group in muon_optimizer.param_groups:
        muon = group.get("use_muon", True)
        form = MuonOptions.from_group(group).momentum_form if muon else None
        for p in group["params"]:
            muon_optimizer.state.pop(p, None)
            if p not in sources:
                missing += 1
                continue
            state, beta1 = sources[p]
            if muon:
                buf = state["exp_avg"] if form == "ema" else state["exp_avg"] / (1.0 - beta1)
                muon_optimizer.state[p] = {"momentum_buffer": copy_like(p, buf)}
            else:
                muon_optimizer.state[p] = {
                    "step": torch.tensor(float(state["step"]), dtype=torch.float32),
                    "exp_avg": copy_like(p, state["exp_avg"]),
                    "exp_avg_sq": copy_like(p, state["exp_avg_sq"]),
                }
    if missing:
        warnings.warn(
            f"migrate_adamw_state: {missing} parameter(s) had no AdamW state; their optimizer "
            "state starts empty",
            stacklevel=3,  # the caller, past torch.no_grad's wrapper
        )


def adamw_moments(
    adamw: torch.optim.Optimizer | Mapping, params: Iterable[Tensor] | None
) -> dict[Tensor, tuple[Mapping, float]]:
    """{parameter: (its AdamW state, beta1 of its group)} for every parameter with state,
    matched as :func:`migrate_adamw_state` says; checks keys and shapes."""
    if isinstance(adamw, torch.optim.Optimizer):
        pairs = [(p, adamw.state.get(p), g) for g in adamw.param_groups for p in g["params"]]
    else:
        if params is None:
            raise TypeError(
                "migrate_adamw_state: an AdamW state dict numbers its parameters by position; "
                "pass params=, the parameters the AdamW optimizer was built over, in the order "
                "of its param groups (e.g. params=model.parameters())"
            )
        params = list(params)
        ids = [(i, g) for g in adamw["param_groups"] for i in g["params"]]
        if len(ids) != len(params):
            raise ValueError(
                f"migrate_adamw_state: the AdamW state dict holds {len(ids)} parameters, "
                f"params= gives {len(params)}; give the parameters it was built over"
            )
        pairs = [(p, adamw["state"].get(i), g) for p, (i, g) in zip(params, ids)]
    out = {}
    for k, (p, state, group) in enumerate(pairs):
        if not state:
            continue
        if not all(key in state for key in ADAM_KEYS):
            raise ValueError(
                f"migrate_adamw_state: the state of parameter {k} has keys {sorted(state)}, "
                f"not Adam's {list(ADAM_KEYS)}"
            )
        for key in ("exp_avg", "exp_avg_sq"):
            if state[key].shape != p.shape:
                raise ValueError(
                    f"migrate_adamw_state: parameter {k} has shape {tuple(p.shape)} but its "
                    f"AdamW {key} has shape {tuple(state[key].shape)}; the AdamW state belongs "
                    "to other parameters (check their order)"
                )
        out[p] = (state, group["betas"][0])
    return out


def copy_like(p: Tensor, value: Tensor) -> Tensor:
    """A new tensor with ``p``'s shape, dtype, device and layout holding ``value``."""
    return torch.empty_like(p, memory_format=torch.preserve_format).copy_(value)
