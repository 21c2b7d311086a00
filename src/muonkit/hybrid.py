"""The Muon + AdamW hybrid that real training uses.

Muon is defined for the hidden weight matrices of a network. Everything else (token and
position embeddings, the output head, norm gains and biases) is trained with AdamW, as in
Keller Jordan's ``MuonWithAuxAdam`` (muon.py), modded-nanogpt and nanochat. Embeddings and
heads are matrices, but their rows are looked up (or scored) one token at a time, so the
"orthogonalize the whole update" geometry does not apply to them (Jordan 2024; Bernstein &
Newhouse, "Modular Duality", 2024).

``classify_params`` assigns each parameter a role; ``split_params`` returns the two lists;
``hybrid_param_groups`` builds groups with one LR per role; ``MuonWithAuxAdam`` steps them all
in one optimizer object.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.adamw import adamw as torch_adamw

from .diagnostics import warn_once
from .heads import HEAD_NAMES, head_modules, is_transposed_linear, output_layer
from .muon import MUON_DEFAULTS, MuonBase
from .options import MuonOptions, check_choice, check_lr, expand_options, unexpected_keyword

MUON_ROLE = "muon"  # the hidden matrices' role (and group name), not an optimizer name
ROLES = (MUON_ROLE, "embedding", "head", "vector")
ADAMW_DEFAULTS: dict[str, Any] = dict(
    lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, maximize=False, use_muon=False,
    foreach=True, fused=False,
)


def classify_params(
    model: nn.Module, head_names: Sequence[str] = HEAD_NAMES
) -> list[tuple[str, Tensor, str]]:
    """(name, param, role) for every trainable parameter, each listed once.

    Roles: "embedding" (weights of nn.Embedding / nn.EmbeddingBag), "vector" (any other
    parameter with fewer than 2 dims: biases (the head's too), norm gains, scalars), "head"
    (the matrices of a module whose attribute name is in ``head_names``, or else of the output
    layer :func:`muonkit.heads.head_modules` finds; a head tied to an embedding is the
    embedding's weight and is listed once as "embedding"), "muon" (every
    other matrix or conv kernel).
    """
    embedding_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    head_ids = {id(p) for m in head_modules(model, head_names) for p in m.parameters()}
    out = []
    for name, p in model.named_parameters():  # deduplicates tied parameters
        if not p.requires_grad:
            continue
        if id(p) in embedding_ids:
            role = "embedding"
        elif p.ndim < 2:
            role = "vector"
        elif id(p) in head_ids:
            role = "head"
        else:
            role = MUON_ROLE
        out.append((name, p, role))
    return out


def param_roles(model: nn.Module, head_names: Sequence[str] = HEAD_NAMES) -> dict[str, str]:
    """name -> role of every trainable parameter (:func:`classify_params`)."""
    return {name: role for name, _, role in classify_params(model, head_names)}


def split_named_params(
    model: nn.Module, head_names: Sequence[str] = HEAD_NAMES
) -> tuple[list[tuple[str, Tensor]], list[tuple[str, Tensor]]]:
    """((name, p) for Muon, (name, p) for AdamW); see :func:`classify_params`."""
    roles = classify_params(model, head_names)
    muon = [(n, p) for n, p, r in roles if r == MUON_ROLE]
    adamw = [(n, p) for n, p, r in roles if r != MUON_ROLE]
    return muon, adamw


def split_params(
    model: nn.Module, head_names: Sequence[str] = HEAD_NAMES
) -> tuple[list[Tensor], list[Tensor]]:
    """(Muon params, AdamW params) of ``model``: hidden matrices vs the rest."""
    muon, adamw = split_named_params(model, head_names)
    return [p for _, p in muon], [p for _, p in adamw]


def fused_qkv_params(model: nn.Module) -> list[Tensor]:
    """The fused query-key-value weights of ``model``: ``in_proj_weight`` of every
    nn.MultiheadAttention that packs Q, K and V in one matrix, and the weight of every module
    named ``c_attn`` (nanoGPT / GPT-2)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out.append(m.in_proj_weight)
        elif name.rsplit(".", 1)[-1] == "c_attn" and isinstance(getattr(m, "weight", None), Tensor):
            out.append(m.weight)
    return out


def transposed_params(model: nn.Module) -> list[Tensor]:
    """The weights of ``model`` stored transposed, ``(in, out)``: those of every module for
    which :func:`is_transposed_linear` holds."""
    return [m.weight for m in model.modules() if is_transposed_linear(m)]


def param_picker(
    chosen: Sequence[str] | Callable[[str, Tensor], bool],
) -> Callable[[str, Tensor], bool]:
    """A predicate ``(name, param) -> bool`` from parameter names or a predicate."""
    if callable(chosen):
        return chosen
    names = set(chosen)
    return lambda name, p: name in names


_VARIANT_GROUP_OPTIONS: set[str] = set()


def register_group_options(names: Iterable[str]) -> None:
    """Declare group options that Muon variants add to :class:`MuonOptions`' (LoRA-Pre's
    ``rank``, NorMuon's ``beta2``, ...): :func:`hybrid_param_groups` then takes them as
    keywords. :mod:`muonkit.variants` registers its own when imported, and ``import muonkit``
    imports it (the variants build on this module, so it cannot import them)."""
    _VARIANT_GROUP_OPTIONS.update(names)


def check_option_names(muon_options: dict, owner: str = "hybrid_param_groups") -> None:
    """TypeError for a keyword that is neither an argument of :func:`hybrid_param_groups`, a
    :class:`MuonOptions` field nor a variant's group option (a misspelt ``muon_lrr`` would
    otherwise ride along in the group unused), naming ``owner`` (the function called) and the
    closest valid names."""
    valid = {f.name for f in dataclasses.fields(MuonOptions)} | {"options"}
    valid |= _VARIANT_GROUP_OPTIONS
    valid |= set(inspect.signature(hybrid_param_groups).parameters) - {"model", "muon_options"}
    for name in muon_options:
        if name not in valid:
            raise unexpected_keyword(owner, name, valid)


def hybrid_param_groups(
    model: nn.Module,
    *,
    muon_lr: float = 0.02,
    adamw_lr: float = 3e-4,
    embedding_lr: float | None = None,
    head_lr: float | None = None,
    vector_lr: float | None = None,
    muon_weight_decay: float = 0.0,
    adamw_weight_decay: float = 0.0,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    adamw_eps: float = 1e-8,
    head_names: Sequence[str] = HEAD_NAMES,
    experts: Sequence[str] | Callable[[str, Tensor], bool] = (),
    qkv_split: int = 1,
    transposed_weights: Sequence[str] | Callable[[str, Tensor], bool] | None = None,
    **muon_options: Any,
) -> list[dict]:
    """Param groups for :class:`MuonWithAuxAdam`: one Muon group and one AdamW group per role.

    The head is the modules named in ``head_names`` or, with none so named, the output layer
    :func:`muonkit.heads.output_layer` finds (the last Linear of an ``nn.Sequential``
    classifier; a head tied to the embedding trains as the embedding); when it cannot tell,
    a :class:`muonkit.diagnostics.MuonWarning` says why.
    Embedding, head and vector LRs default to ``adamw_lr``. AdamW weight decay applies to
    embeddings and the head's matrices, never to vectors (biases, the head's included, and
    gains), as in nanoGPT. ``qkv_split`` > 1 puts the fused QKV weights
    (:func:`fused_qkv_params`) in a Muon group of their own (role "muon_qkv") with
    ``ns_split=qkv_split``: 3 orthogonalizes Q, K and V separately, ``3 * n_head`` each head's
    block; other matrices are not split. ``experts`` (parameter names, or a predicate
    ``(name, param) -> bool``) picks MoE expert stacks ``(E, out, in)``: they get a Muon group
    of their own (role "muon_experts") with ``ns_batch_dims=1``, so each expert is
    orthogonalized as its own matrix. ``transposed_weights`` (names or a predicate; None: the
    weights of Hugging Face ``Conv1D`` layers, :func:`transposed_params`) picks matrices stored
    ``(in, out)``: their Muon group (role suffixed "_transposed") gets ``transposed=True``, so
    the LR rule and ``ns_split`` see ``(out, in)`` as for the ``nn.Linear`` with the same map.
    ``muon_options`` (or ``options=MuonOptions(...)``) go to the Muon group(s), except
    ``maximize``, which every group takes (the AdamW groups too: the whole model ascends).
    Each group carries its ``role`` so schedules and reports can tell them apart.
    """
    check_option_names(muon_options)
    if not head_modules(model, head_names):
        found = output_layer(model)
        if found.doubt:
            warn_once(model, f"hybrid_param_groups could not tell the output layer of "
                      f"{type(model).__name__} ({found.reason}): every matrix trains with Muon")
    role_lr = {
        "embedding": adamw_lr if embedding_lr is None else embedding_lr,
        "head": adamw_lr if head_lr is None else head_lr,
        "vector": adamw_lr if vector_lr is None else vector_lr,
    }
    is_expert = param_picker(experts)
    in_out = {id(p) for p in transposed_params(model)} if transposed_weights is None else set()
    is_transposed = (
        param_picker(transposed_weights)
        if transposed_weights is not None
        else (lambda name, p: id(p) in in_out)
    )
    by_role: dict[str, list[Tensor]] = {r: [] for r in (*ROLES, "muon_experts")}
    transposed_ids = set()
    for name, p, role in classify_params(model, head_names):
        by_role["muon_experts" if role == MUON_ROLE and is_expert(name, p) else role].append(p)
        if role == MUON_ROLE and is_transposed(name, p):
            transposed_ids.add(id(p))
    if "options" in muon_options:  # a MuonOptions carries its own weight_decay
        if muon_weight_decay != 0.0:
            raise ValueError("pass weight_decay inside options=MuonOptions(...), not both")
    else:
        muon_options = {"weight_decay": muon_weight_decay, **muon_options}
    options = muon_options.get("options")
    maximize = options.maximize if options is not None else muon_options.get("maximize", False)
    if qkv_split != 1 and "ns_split" in muon_options:
        raise ValueError("pass qkv_split (fused QKV weights only) or ns_split (all), not both")
    qkv_ids = {id(p) for p in fused_qkv_params(model)} if qkv_split != 1 else set()
    muon_groups = {
        MUON_ROLE: ([p for p in by_role[MUON_ROLE] if id(p) not in qkv_ids], {}),
        "muon_qkv": ([p for p in by_role[MUON_ROLE] if id(p) in qkv_ids], {"ns_split": qkv_split}),
        "muon_experts": (by_role["muon_experts"], {"ns_batch_dims": 1}),
    }
    for role, (params, extra) in list(muon_groups.items()):
        muon_groups[role] = ([p for p in params if id(p) not in transposed_ids], extra)
        kept = [p for p in params if id(p) in transposed_ids]
        muon_groups[f"{role}_transposed"] = (kept, {**extra, "transposed": True})
    groups: list[dict] = []
    for role, (params, extra) in muon_groups.items():
        if params:
            if "options" in muon_options and extra:
                options = dict(muon_options, options=muon_options["options"].replace(**extra))
            else:
                options = dict(muon_options, **extra)
            groups.append(dict(params=params, use_muon=True, role=role, lr=muon_lr, **options))
    for role in ("embedding", "head", "vector"):
        if by_role[role]:
            groups.append(
                dict(
                    params=by_role[role],
                    use_muon=False,
                    role=role,
                    lr=role_lr[role],
                    betas=adamw_betas,
                    eps=adamw_eps,
                    weight_decay=0.0 if role == "vector" else adamw_weight_decay,
                    maximize=maximize,
                )
            )
    return groups


def adamw_update_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    foreach: bool = True,
    fused: bool = False,
) -> None:
    """One AdamW step (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019).

    ``p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = b2 v + (1-b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, run by torch.optim.AdamW's
    own functional step: its multi-tensor path (``foreach``: a few fused passes over the
    whole list), its ``fused`` kernel, or with neither its single-tensor loop, so each equals
    torch.optim.AdamW with the same flag. ``grads`` are already negated under ``maximize``.
    """
    torch_adamw(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        foreach=foreach and not fused,
        fused=fused,
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=weight_decay,
        eps=eps,
        maximize=False,
    )


def validate_adamw_options(group: dict) -> None:
    check_lr(group["lr"])
    check_choice("maximize", group["maximize"], (True, False))
    beta1, beta2 = group["betas"]
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must each be in [0, 1), got {group['betas']}")
    if not group["eps"] >= 0:
        raise ValueError(f"eps must be >= 0, got {group['eps']}")
    if not group["weight_decay"] >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']}")
    check_choice("foreach", group["foreach"], (True, False))
    check_choice("fused", group["fused"], (True, False))


class MuonWithAuxAdam(MuonBase):
    """One optimizer object: Muon on groups with ``use_muon=True``, AdamW on the others.

    Args:
        param_groups: dicts, each with ``params`` and ``use_muon``. Muon groups take Muon's
            options (defaults as :class:`muonkit.Muon`: lr 0.02, momentum 0.95, ...), as keys
            or as one ``options=MuonOptions(...)`` entry; AdamW
            groups take ``lr`` (3e-4), ``betas`` ((0.9, 0.95)), ``eps`` (1e-8),
            ``weight_decay`` (0), ``foreach`` (True: torch.optim.AdamW's multi-tensor step;
            False: its per-tensor loop) and ``fused`` (False; True: its fused kernel). Build
            them with :func:`hybrid_param_groups`.
        nonfinite: "raise" or "skip", for the whole step (see :class:`muonkit.muon.MuonBase`).

    State per AdamW parameter: ``step`` (a float32 scalar tensor; a state dict whose steps
    are numbers loads too, as with torch.optim.AdamW), ``exp_avg``, ``exp_avg_sq``; per Muon
    parameter: ``momentum_buffer``.

    This is the one hybrid of every Muon variant: a subclass that sets ``store`` (a
    :class:`muonkit.muon.MomentumStore`) and/or ``post_step`` (a
    :class:`muonkit.muon.PostStep`) steps its Muon groups with them (e.g.
    :class:`muonkit.variants.LoRAPreMuonWithAuxAdam`); their group options (``variant_defaults``,
    e.g. LoRA-Pre's ``rank``) go in as Muon options of :func:`hybrid_param_groups`.

    ``defaults`` holds Muon's ``momentum`` so that schedulers which cycle momentum
    (``OneCycleLR(cycle_momentum=True)``) find it; they then cycle the Muon groups' momentum
    (AdamW groups keep their betas and ignore a ``momentum`` key).
    """

    def __init__(self, param_groups: Iterable[dict], *, nonfinite: str = "raise"):
        groups = list(param_groups)
        for g in groups:
            if not isinstance(g, dict) or "use_muon" not in g:
                raise ValueError(
                    "MuonWithAuxAdam takes a list of param-group dicts, each with 'use_muon' "
                    "True or False; build them with muonkit.hybrid.hybrid_param_groups(model)"
                )
        defaults = dict(momentum=MUON_DEFAULTS["momentum"])
        super().__init__(groups, defaults=defaults, nonfinite=nonfinite)

    def add_param_group(self, param_group: dict) -> None:
        check_choice("use_muon", param_group.get("use_muon"), (True, False))
        if param_group["use_muon"]:
            param_group = {**MUON_DEFAULTS, **self.variant_defaults, **expand_options(param_group)}
        else:
            param_group = {**ADAMW_DEFAULTS, **param_group}
        momentum_given = "momentum" in param_group
        super().add_param_group(param_group)
        if not param_group["use_muon"] and not momentum_given:
            self.param_groups[-1].pop("momentum")  # torch copied defaults' Muon momentum in

    def _group_defaults(self, group: dict) -> dict:
        if group.get("use_muon", True):
            return {**self.variant_defaults, "nonfinite": self.defaults["nonfinite"],
                    **MUON_DEFAULTS}
        return {"nonfinite": self.defaults["nonfinite"], **ADAMW_DEFAULTS}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for p_state in self.state.values():
            if isinstance(p_state, dict) and "step" in p_state:
                if not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=torch.float32)

    def _validate_group(self, group: dict) -> None:
        if group["use_muon"]:
            self._validate_muon_group(group)
        else:
            validate_adamw_options(group)

    def _group_step(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        if group["use_muon"]:
            self._muon_group_step(group, params, grads)
            return
        for p in params:
            state = self.state[p]
            if "step" not in state:  # on the parameter's device for the fused kernel, as torch's
                device = p.device if group["fused"] else None
                state["step"] = torch.tensor(0.0, dtype=torch.float32, device=device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adamw_update_(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states],
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            foreach=group["foreach"],
            fused=group["fused"],
        )
