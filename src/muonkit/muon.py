"""Muon: MomentUm Orthogonalized by Newton-Schulz, as a ``torch.optim.Optimizer``.

Keller Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024),
https://kellerjordan.github.io/posts/muon/. The update's math (momentum forms, Nesterov,
orthogonalization, LR rules, weight decay) is in :mod:`muonkit.functional`; this module holds
the classes: :class:`MuonBase` (gradients, the whole-step NaN/inf policy, options where
torch.optim keeps them), the two plug points of a Muon step (:class:`MomentumStore`: how the
momentum is kept and read, :class:`DenseMomentum` by default; :class:`PostStep`: a transform of
each orthogonalized update, none by default), the step strategies (:class:`LocalStep`; the
distributed one registers itself through :func:`register_step_strategy`) and :class:`Muon`.

A Muon variant is a store or a post step, not a class tree: :class:`MuonBase` steps every Muon
group as momentum store -> Newton-Schulz -> post step -> weight decay and the scaled step, and
a class says which store and post step it uses (``store = ...``, ``post_step = ...``; LoRA-Pre
and Kronecker momentum are stores, NorMuon's row normalization is a post step, in
:mod:`muonkit.variants`). The same two attributes on a subclass of
:class:`muonkit.hybrid.MuonWithAuxAdam` give the variant's Muon + AdamW hybrid.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .functional import (
    all_finite,
    momentum_update_,
    options_block_shape,
    orthogonalize_and_apply_,
    orthogonalize_updates,
)
from .options import (
    MuonOptions,
    MuonOptionValues,
    Unpack,
    check_choice,
    check_lr,
    expand_options,
    option_keywords,
    options_from_keywords,
)
from .orthogonalize import compiled
from .precision import describe

NONFINITE_POLICIES = ("raise", "skip")
SKIPPED_STEPS_KEY = "nonfinite_skipped_steps"


class NonFiniteGradientError(FloatingPointError):
    """A gradient held NaN or inf; the optimizer step was refused and nothing changed."""


# ---------------------------------------------------------------------------------------------
# validation shared by every Muon-style optimizer
# ---------------------------------------------------------------------------------------------


def validate_muon_options(group: dict) -> MuonOptions:
    """Check a Muon param group's lr and options and that every parameter is a matrix;
    returns the group's :class:`MuonOptions` (which checks itself)."""
    check_lr(group["lr"])
    options = MuonOptions.from_group(group)
    split, b = options.ns_split, options.ns_batch_dims
    for p in group["params"]:
        if p.ndim < 2 + b:
            raise ValueError(
                f"Muon got a parameter of shape {tuple(p.shape)}: Muon orthogonalizes matrices "
                "(2-D, or conv kernels flattened to 2-D). Give 1-D parameters (biases, norm "
                "gains) and embeddings/output heads to AdamW: use muonkit.hybrid.split_params "
                "and muonkit.hybrid.MuonWithAuxAdam. With ns_batch_dims=b, a parameter needs "
                "b + 2 dims."
            )
        if options.transposed and p.ndim > 2 + b:
            raise ValueError(
                f"transposed=True takes matrices stored (in, out) (after ns_batch_dims={b} "
                f"leading dims), got a parameter of shape {tuple(p.shape)}"
            )
        split_dim = p.ndim - 1 if options.transposed else b
        if p.shape[split_dim] % split:
            raise ValueError(
                f"ns_split={split} must divide dim {split_dim} (out) of every parameter in its "
                f"group; got a parameter of shape {tuple(p.shape)}. Put it in a group with its "
                "own ns_split."
            )
    return options


MUON_DEFAULTS: dict[str, Any] = dict(lr=0.02, **MuonOptions.defaults(), use_muon=True)


# ---------------------------------------------------------------------------------------------
# group step strategies: how a Muon group steps, chosen from where its parameters live
# ---------------------------------------------------------------------------------------------


def identity(t: Tensor) -> Tensor:
    """``t`` itself: the part of a tensor a single-device step computes on."""
    return t


class MomentumStore:
    """The plug point before Newton-Schulz: how a Muon group keeps its momentum and reads from
    it the tensors to orthogonalize (dense buffers, low-rank factors, Kronecker factors...).

    A store holds no state of its own: it keeps each parameter's in ``optimizer.state[p]``
    (under its own keys, which are the optimizer's ``state_dict`` layout) and its options in the
    param group (``group_defaults``: the group options it adds to :class:`MuonOptions`', with
    their defaults). The momentum forms (standard / EMA, Nesterov, ``mixing``) are written once,
    in :func:`muonkit.functional.momentum_update_`: a store applies them to the buffer it keeps
    or reconstructs. ``elementwise`` says that the update of a part of a matrix is that part of
    the update (so a sharded step may run the store on each rank's shards); a store that needs
    whole matrices (compressed momentum) steps its DTensor groups on one device's terms.
    """

    group_defaults: ClassVar[dict[str, Any]] = {}
    elementwise: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def validate(self, optimizer: MuonBase, group: dict, options: MuonOptions) -> None:
        """Raise ValueError for a group this store cannot step (its options are checked)."""

    def restore(self, optimizer: MuonBase, group: dict) -> None:
        """Complete ``group`` loaded from an older state dict (after the defaults are filled)."""

    def updates(
        self,
        optimizer: MuonBase,
        group: dict,
        params: list[Tensor],
        grads: list[Tensor],
        options: MuonOptions,
        view: Callable[[Tensor], Tensor] = identity,
    ) -> list[Tensor]:
        """Update the momentum of ``params`` from ``grads`` and return the tensors to
        orthogonalize (``view`` maps a tensor to the part this rank computes on: the local
        shard of a DTensor; only an ``elementwise`` store is given another than the identity)."""
        raise NotImplementedError


class DenseMomentum(MomentumStore):
    """Muon's own store: one ``momentum_buffer`` per parameter, of its shape, updated by
    :func:`muonkit.functional.momentum_update_` (every momentum form and Nesterov)."""

    elementwise = True

    def updates(self, optimizer, group, params, grads, options, view=identity):
        bufs = optimizer._momentum_buffers(params)
        return momentum_update_([view(b) for b in bufs], [view(g) for g in grads], options)


DENSE_MOMENTUM = DenseMomentum()


@dataclass(frozen=True)
class GroupMomentum:
    """A store bound to one step of one group: what a step strategy calls for the updates."""

    store: MomentumStore
    optimizer: MuonBase
    group: dict
    params: list[Tensor]
    options: MuonOptions

    @property
    def elementwise(self) -> bool:
        return self.store.elementwise

    def updates(
        self, grads: list[Tensor], view: Callable[[Tensor], Tensor] = identity
    ) -> list[Tensor]:
        return self.store.updates(self.optimizer, self.group, self.params, grads, self.options,
                                  view)


class PostStep:
    """The plug point after Newton-Schulz: a per-matrix transform of the whole orthogonalized
    update (NorMuon's row normalization), with the per-parameter state it updates.

    Stateless, like a store: ``group_defaults`` are the group options it adds, ``validate``
    checks a group, and ``bind`` gives the transform of one group's step (a
    :class:`BoundPostStep`, which also creates the state it needs)."""

    group_defaults: ClassVar[dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def validate(self, group: dict, options: MuonOptions) -> None:
        """Raise ValueError for a group this post step cannot transform."""

    def bind(
        self, optimizer: MuonBase, group: dict, params: list[Tensor], options: MuonOptions
    ) -> BoundPostStep:
        raise NotImplementedError


class BoundPostStep:
    """One step's post step: ``transform(k, orth)`` returns the new update of ``params[k]``;
    ``state[k]`` is the state tensor of ``params[k]`` it updates (or None). A distributed step
    runs ``transform`` only on the rank that orthogonalizes the matrix (its owner) and then
    copies ``state[k]`` from the owner to every rank, so every rank holds the same state (as a
    replicated tensor must).
    """

    def __init__(self, transform: Callable[[int, Tensor], Tensor], state: Sequence[Tensor | None]):
        self.transform, self.state = transform, state

    def after(self, orthogonalize: Callable[..., list[Tensor]]) -> Callable[..., list[Tensor]]:
        """``orthogonalize`` followed by ``transform`` on every update (one device)."""

        def orthogonalize_then_transform(updates, options):
            return [self.transform(k, o) for k, o in enumerate(orthogonalize(updates, options))]

        return orthogonalize_then_transform


class LocalStep:
    """The Muon group step on one device: the store's momentum, then
    :func:`orthogonalize_and_apply_` (with the post step after Newton-Schulz).

    A step strategy holds the step's counters: ``ns_counts`` (Counter of (group index, param
    index) -> matrices orthogonalized here) and ``comm_stats`` (bytes sent to / received from
    other ranks: none here). The distributed strategy (``muonkit.distributed.muon``) extends
    this class; :func:`register_step_strategy` lets it claim DTensor parameters.
    """

    def __init__(self, compile: bool | str = False):
        self.ns_counts: Counter = Counter()
        self.comm_stats: Counter = Counter()
        self.compile = compile

    def check_group(self, group: dict) -> None:
        """Raise ValueError when this strategy cannot step ``group`` (nothing to check here)."""

    def all_finite(self, tensors: Iterable[Tensor]) -> bool:
        return all_finite(tensors)

    def __call__(
        self,
        gi: int,
        group: dict,
        params: list[Tensor],
        grads: list[Tensor],
        options: MuonOptions,
        momentum: GroupMomentum,
        post: BoundPostStep | None = None,
    ) -> None:
        """One step of group ``gi`` (``params``: those with gradients ``grads``): ``momentum``
        (the group's store) gives the updates, ``post`` changes each whole orthogonalized
        update before the step (NorMuon). With ``compile`` the orthogonalize stage (batching
        by shape, scaling, Newton-Schulz, unbatching) runs through ``torch.compile`` (with
        ``compile`` a string, in that torch.compile mode); the store's momentum and the
        LR-scaled apply (whose LR would recompile at every change) stay eager."""
        updates = momentum.updates(grads)
        mode = self.compile if isinstance(self.compile, str) else None
        orthogonalize = (compiled(orthogonalize_updates, mode) if self.compile
                         else orthogonalize_updates)
        orthogonalize = orthogonalize if post is None else post.after(orthogonalize)
        orthogonalize_and_apply_(
            params, updates, lr=float(group["lr"]), options=options, orthogonalize=orthogonalize
        )
        for k, p in zip(param_indices(group, params), params):
            self.ns_counts[(gi, k)] += math.prod(p.shape[: options.ns_batch_dims])


def param_indices(group: dict, params: Sequence[Tensor]) -> Sequence[int]:
    """The index in ``group["params"]`` of each of ``params`` (a subset, in group order)."""
    if len(params) == len(group["params"]):
        return range(len(params))
    index = {id(p): k for k, p in enumerate(group["params"])}
    return [index[id(p)] for p in params]


STEP_STRATEGIES: list[Callable[[Sequence[Tensor]], LocalStep | None]] = []


def register_step_strategy(choose: Callable[[Sequence[Tensor]], LocalStep | None]) -> None:
    """Register ``choose(params)``: a step strategy for a param group's tensors, or None.

    A Muon-style optimizer whose strategy is still the :class:`LocalStep` asks each registered
    chooser about every group it is given; the first strategy returned steps every group from
    then on (``muonkit`` registers the distributed step for DTensor parameters, so the core
    never imports it).
    """
    STEP_STRATEGIES.append(choose)


def check_param_dtypes(params: Iterable[Tensor], optimizer: str) -> None:
    """Refuse complex and integer parameters when the optimizer is built."""
    for p in params:
        if p.is_complex():
            raise ValueError(
                f"{optimizer} does not support complex parameters (got {p.dtype}, shape "
                f"{tuple(p.shape)}): orthogonalizing a complex matrix is not the real one's "
                "update. Keep the real and imaginary parts as separate real parameters."
            )
        if not p.is_floating_point():
            raise ValueError(
                f"{optimizer} optimizes floating-point parameters; got one of dtype {p.dtype} "
                f"and shape {tuple(p.shape)}"
            )


class MuonBase(torch.optim.Optimizer):
    """Shared machinery of Muon-style optimizers: non-finite gradient policy, group steps.

    Every group is a Muon group, stepped by the class's ``store`` (:class:`MomentumStore`,
    dense by default) and ``post_step`` (:class:`PostStep`, none by default); their group
    options with defaults are the class's ``variant_defaults``. A subclass sets them (and its
    constructor's keywords); the hybrid (:class:`muonkit.hybrid.MuonWithAuxAdam`) overrides
    ``_validate_group`` / ``_group_step`` for its AdamW groups.
    ``step`` first gathers every group's gradients (negated in groups with ``maximize``;
    parameters with no elements are skipped) and checks them all; with a NaN/inf it raises
    ``NonFiniteGradientError`` (``nonfinite="raise"``) or skips the whole step and counts it in
    ``optimizer.state["nonfinite_skipped_steps"]`` (``nonfinite="skip"``); in both cases no
    parameter or state is touched.

    Every option lives where torch.optim keeps options (``defaults`` and the param groups,
    ``nonfinite`` included), so ``copy.deepcopy``, pickle and ``state_dict()`` keep them.
    Groups loaded from an older state dict get the options they lack from the defaults.
    """

    group_step: LocalStep | None = None  # a subclass may set its strategy before __init__
    store: ClassVar[MomentumStore] = DENSE_MOMENTUM
    post_step: ClassVar[PostStep | None] = None
    variant_defaults: ClassVar[dict[str, Any]] = {}  # from store and post step (set below)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        post = cls.post_step.group_defaults if cls.post_step is not None else {}
        cls.variant_defaults = {**cls.store.group_defaults, **post}

    def __init__(self, params, defaults: dict, nonfinite: str = "raise"):
        if self.group_step is None:
            self.group_step = LocalStep()
        super().__init__(params, {**defaults, "nonfinite": nonfinite})

    @property
    def nonfinite(self) -> str:
        """The step's non-finite policy: "skip" when every group says so, else "raise"."""
        return "skip" if all(g["nonfinite"] == "skip" for g in self.param_groups) else "raise"

    @property
    def ns_counts(self) -> Counter:
        """(group index, param index) -> matrices this process orthogonalized."""
        return self.group_step.ns_counts

    @property
    def comm_stats(self) -> Counter:
        """Bytes this process sent to / received from other ranks in Muon steps."""
        return self.group_step.comm_stats

    def add_param_group(self, param_group: dict) -> None:
        if param_group.get("use_muon", True):
            param_group = expand_options(param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            check_choice("nonfinite", group["nonfinite"], NONFINITE_POLICIES)
            check_param_dtypes(group["params"], type(self).__name__)
            self._validate_group(group)
            if type(self.group_step) is LocalStep:
                self.group_step = self._chosen_step(group, self.group_step)
            self.group_step.check_group(group)
        except ValueError:
            self.param_groups.pop()
            raise

    @staticmethod
    def _chosen_step(group: dict, default: LocalStep) -> LocalStep:
        """The strategy a registered chooser picks for ``group``'s tensors, else ``default``."""
        chosen = (choose(group["params"]) for choose in STEP_STRATEGIES)
        return next((s for s in chosen if s is not None), default)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if self.__dict__.get("group_step") is None:  # a copy: torch keeps only the groups
            self.group_step = LocalStep(compile=self.defaults.get("compile_step", False))
            for group in self.param_groups:
                if type(self.group_step) is LocalStep:
                    self.group_step = self._chosen_step(group, self.group_step)
        for group in self.param_groups:
            for name, value in self._group_defaults(group).items():
                if name != "differentiable":  # torch's __setstate__ adds it; we never use it
                    group.setdefault(name, value)
            if group.get("use_muon", True):  # not the hybrid's AdamW groups
                self.store.restore(self, group)

    def _group_defaults(self, group: dict) -> dict:
        """The options a group of this optimizer has when it does not set them."""
        return self.defaults

    def _validate_group(self, group: dict) -> None:
        self._validate_muon_group(group)

    def _validate_muon_group(self, group: dict) -> None:
        """Muon's checks of the group, then the store's and the post step's."""
        options = validate_muon_options(group)
        self.store.validate(self, group, options)
        if self.post_step is not None:
            self.post_step.validate(group, options)

    def _group_step(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        self._muon_group_step(group, params, grads)

    def _gather(self) -> list[tuple[dict, list[Tensor], list[Tensor]]]:
        work = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None and p.numel() > 0]
            for p in params:
                if p.grad.is_sparse:
                    raise ValueError(f"{type(self).__name__} does not support sparse gradients")
            grads = [p.grad for p in params]
            if group.get("maximize", False) and grads:
                grads = list(torch._foreach_neg(grads))  # ascend: torch.optim's maximize
            work.append((group, params, grads))
        return work

    def _generator(self, group: dict, p: Tensor) -> torch.Generator:
        """The generator of ``p``'s random draws (the variants' initial factors), seeded by
        the group's ``seed`` and p's position among all parameters: the global RNG is never
        touched, and copies, resumed runs and compiled steps draw the same numbers."""
        index = [id(q) for g in self.param_groups for q in g["params"]].index(id(p))
        return torch.Generator(device=p.device).manual_seed((group["seed"] << 32) + index)

    def _refuse_nonfinite(self, work) -> bool:
        """True (and counted) when the step must be skipped; raises under "raise"."""
        if self.group_step.all_finite(g for _, _, grads in work for g in grads):
            return False
        if self.nonfinite == "skip":
            self.state[SKIPPED_STEPS_KEY] = self.state.get(SKIPPED_STEPS_KEY, 0) + 1
            return True
        for gi, (_, params, grads) in enumerate(work):
            for p, g in zip(params, grads):
                if not self.group_step.all_finite([g]):  # the same verdict on every rank
                    raise NonFiniteGradientError(
                        f"gradient of a parameter of shape {tuple(p.shape)} in param group {gi} "
                        "holds NaN or inf; no parameter or optimizer state was changed. Check "
                        "the loss scale / learning rate, clip gradients, or construct the "
                        "optimizer with nonfinite='skip' to skip such steps."
                    )
        return False  # unreachable: all_finite was False

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._gather()
        if self._refuse_nonfinite(work):
            return loss
        for group, params, grads in work:
            if params:
                self._group_step(group, params, grads)
        return loss

    def ns_precision(self) -> dict[int, str]:
        """{param group index: the Newton-Schulz precision that runs there, and why} for
        every Muon group with parameters (:func:`muonkit.precision.describe`), e.g.
        ``{0: "auto: fp32 (cpu AVX2, no native bf16)"}``; also shown by ``repr(opt)``."""
        out = {}
        for i, group in enumerate(self.param_groups):
            if not group.get("use_muon", True) or not group["params"]:
                continue
            o = MuonOptions.from_group(group)
            if o.ns_coefficients == "svd":
                out[i] = "svd: exact polar factor (fp64)"
                continue
            shapes = sorted({options_block_shape(p.shape, o) for p in group["params"]})
            device = group["params"][0].device
            out[i] = describe(o.ns_dtype, device, shapes, o.ns_steps, o.ns_gram)
        return out

    def __repr__(self) -> str:
        lines = [f"Newton-Schulz precision, group {i}: {d}" for i, d in self.ns_precision().items()]
        return super().__repr__().removesuffix(")") + "\n".join(lines) + "\n)"

    def state_bytes(self) -> dict[int, int]:
        """{index of the parameter in param-group order: bytes of its state tensors}, measured
        from the tensors actually held (parameters without state are left out)."""
        params = [p for group in self.param_groups for p in group["params"]]
        out = {}
        for i, p in enumerate(params):
            if p in self.state:
                out[i] = sum(
                    t.numel() * t.element_size()
                    for t in self.state[p].values()
                    if isinstance(t, Tensor)
                )
        return out

    def _momentum_buffers(self, params: list[Tensor]) -> list[Tensor]:
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        return bufs

    def _muon_group_step(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        """The group's step by its strategy: the store's momentum, Newton-Schulz, the post
        step, weight decay and the scaled step."""
        gi = next(k for k, g in enumerate(self.param_groups) if g is group)
        options = MuonOptions.from_group(group)
        post = None if self.post_step is None else self.post_step.bind(self, group, params, options)
        momentum = GroupMomentum(self.store, self, group, params, options)
        self.group_step(gi, group, params, grads, options, momentum, post)


@option_keywords()
class Muon(MuonBase):
    """Muon for matrix parameters (see the module docstring for the algorithm).

    Args:
        params: matrices (2-D; conv kernels are flattened to (shape[0], -1)) or param groups.
        lr: learning rate (0.02, Keller Jordan's muon.py default for hidden matrices).
        nonfinite: "raise" (default) or "skip" for steps whose gradients hold NaN/inf.
        compile_step: run the step's orthogonalize stage (batching, scaling, Newton-Schulz)
            through ``torch.compile`` (one compilation per set of shapes and options, 10-60 s on a
            CPU); equal to the eager step to fp32 rounding. On one device only: DTensor groups
            and ``DistributedMuon`` step eagerly. With ``ns_dtype="auto"`` on a CPU with
            native bf16, dynamo traces the hardware detection and breaks the graph there
            (a warning; the result is the same). ``"reduce-overhead"``: the same, compiled in
            that torch.compile mode, which on CUDA replays the stage as a CUDA graph (one
            launch instead of one per kernel: for steps whose matrices each have their own
            shape); on a CPU it is ``True``. ``benchmarks/compiled_step.py`` measures both.
        options: the options below as one :class:`muonkit.MuonOptions` (then pass none of
            them as a keyword).
        **option_values: the fields of :class:`muonkit.MuonOptions` (listed below; their
            meanings and sources are declared there), keyword-only; an unknown keyword is a
            TypeError naming the closest option.

    With ``ns_dtype=torch.bfloat16, momentum_form="ema"`` and ``lr_scaling="keller"`` this is
    torch.optim.Muon (``adjust_lr_fn="original"``) step for step.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        *,
        nonfinite: str = "raise",
        compile_step: bool | str = False,
        options: MuonOptions | None = None,
        **option_values: Unpack[MuonOptionValues],
    ):
        chosen = options_from_keywords(self, options, option_values)
        check_choice("compile_step", compile_step, (True, False, "reduce-overhead"))
        if self.group_step is None:  # not a subclass's own strategy (DistributedMuon)
            self.group_step = LocalStep(compile=compile_step)
        defaults = dict(MUON_DEFAULTS, lr=lr, **chosen.as_dict(), compile_step=compile_step)
        super().__init__(params, defaults, nonfinite=nonfinite)
