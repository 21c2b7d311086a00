"""The update options of a Muon-style step, in one place.

:class:`MuonOptions` is a frozen dataclass of every option of the momentum and
orthogonalize-and-apply math (all but ``lr``, which stays a plain param-group entry because
LR schedulers rewrite it every step). It validates itself when built, its field defaults are
the defaults of :class:`muonkit.Muon` (``MUON_DEFAULTS`` and the optimizers' signatures are
derived from / tested against it), and :meth:`MuonOptions.from_group` reads it from a param
group, where the options live as plain keys (so ``state_dict()`` saves them and schedules such
as momentum warmup can change them). The functional core (:mod:`muonkit.muon`), the variants
and the distributed step all take this object.

Adding an option: add a field with its default and (if it has constraints) a check in
``_validate``; then add the keyword to the optimizers' signatures (a test fails until the
signatures and this class agree) and use it where the math needs it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from .orthogonalize import ORTHOGONALIZE_METHODS, resolve_schedule
from .precision import NS_PRECISIONS
from .scaling import validate_rule

MOMENTUM_FORMS = ("standard", "ema")
MIXINGS = ("momentum_form", "gradient_heavy")


def check_choice(name: str, value: Any, valid: Sequence[Any]) -> None:
    """Raise ValueError unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")


@dataclass(frozen=True)
class MuonOptions:
    """The options of one Muon update (meanings and sources: :class:`muonkit.Muon`).

    Attributes:
        momentum: mu in [0, 1).
        nesterov: orthogonalize the Nesterov update instead of the buffer.
        momentum_form: "standard" (``B = mu B + G``) or "ema" (``B = lerp(B, G, 1 - mu)``).
        weight_decay: decoupled weight decay (>= 0).
        ns_steps: Newton-Schulz iterations (int >= 0).
        ns_coefficients: a schedule name of :mod:`muonkit.orthogonalize`, "svd", or (a, b, c)s.
        ns_dtype: Newton-Schulz precision: "auto" (None: the same), "mixed" or a torch.dtype.
        lr_scaling: a rule name of :mod:`muonkit.scaling` or a callable(shape) -> float.
        ns_split: orthogonalize each parameter as this many equal row blocks (int >= 1).
        ns_gram: Gram-side Newton-Schulz: True, False or None (where cheaper).
        ns_compile: ``torch.compile`` the Newton-Schulz loop (CUDA).
        ns_batch_dims: leading dims that index independent matrices (int >= 0): 1 for an
            ``(E, out, in)`` stack of MoE experts; 0 flattens conv kernels to (shape[0], -1).
        maximize: ascend instead of descend (the gradient is negated first, as torch.optim).
        mixing: the Nesterov update: "momentum_form" (Muon's, of ``momentum_form``) or
            "gradient_heavy" (``G + mu * EMA(G)``, LoRA-Pre's printed mixing; an ablation).
        transposed: the parameters store their matrix transposed, ``(..., in, out)`` (GPT-2's
            ``Conv1D``): orthogonalization, ``ns_split`` and the LR rule use ``(out, in)``.
    """

    momentum: float = 0.95
    nesterov: bool = True
    momentum_form: str = "standard"
    weight_decay: float = 0.0
    ns_steps: int = 5
    ns_coefficients: str | Sequence = "jordan"
    ns_dtype: torch.dtype | str | None = "auto"
    lr_scaling: str | Callable = "keller"
    ns_split: int = 1
    ns_gram: bool | None = None
    ns_compile: bool = False
    ns_batch_dims: int = 0
    maximize: bool = False
    mixing: str = "momentum_form"
    transposed: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """{option name: default}."""
        return {f.name: f.default for f in fields(cls)}

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> MuonOptions:
        """The options held in a param group (or any mapping); missing keys take defaults."""
        return cls(**{name: group[name] for name in cls.names() if name in group})

    def as_dict(self) -> dict[str, Any]:
        """{option name: value} (a shallow copy, ready to merge into a param group)."""
        return {name: getattr(self, name) for name in self.names()}

    def replace(self, **changes: Any) -> MuonOptions:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)


def _validate(o: MuonOptions) -> None:
    if not 0.0 <= o.momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {o.momentum}")
    check_choice("nesterov", o.nesterov, (True, False))
    check_choice("momentum_form", o.momentum_form, MOMENTUM_FORMS)
    if not o.weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {o.weight_decay}")
    if not isinstance(o.ns_steps, int) or isinstance(o.ns_steps, bool) or o.ns_steps < 0:
        raise ValueError(f"ns_steps must be an int >= 0, got {o.ns_steps!r}")
    if isinstance(o.ns_coefficients, str):
        check_choice("ns_coefficients", o.ns_coefficients, ORTHOGONALIZE_METHODS)
    else:
        resolve_schedule(o.ns_coefficients)
    precision = isinstance(o.ns_dtype, torch.dtype) or o.ns_dtype in (None, *NS_PRECISIONS)
    if not precision:
        raise ValueError(
            f"ns_dtype must be a torch.dtype, {' or '.join(map(repr, NS_PRECISIONS))}, got "
            f"{o.ns_dtype!r}"
        )
    validate_rule(o.lr_scaling)
    if not isinstance(o.ns_split, int) or isinstance(o.ns_split, bool) or o.ns_split < 1:
        raise ValueError(f"ns_split must be an int >= 1, got {o.ns_split!r}")
    check_choice("ns_gram", o.ns_gram, (None, True, False))
    check_choice("ns_compile", o.ns_compile, (True, False))
    b = o.ns_batch_dims
    if not isinstance(b, int) or isinstance(b, bool) or b < 0:
        raise ValueError(f"ns_batch_dims must be an int >= 0, got {b!r}")
    check_choice("maximize", o.maximize, (True, False))
    check_choice("mixing", o.mixing, MIXINGS)
    check_choice("transposed", o.transposed, (True, False))


def check_seed(seed: Any) -> None:
    """A seed of an optimizer's own generator is an int >= 0."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def check_lr(lr: Any) -> None:
    """An lr is a number or a one-element tensor (as torch.optim), and >= 0."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")


def options_from_call(init: Callable, values: Mapping[str, Any], options: MuonOptions | None):
    """The :class:`MuonOptions` of an optimizer constructor call.

    ``values`` holds the constructor's keyword values (its ``locals()``); those named like an
    option are taken. With ``options`` given, it is used as it is and every option keyword of
    ``init`` must keep its signature default (passing both would be ambiguous).
    """
    signature = inspect.signature(init).parameters
    given = {n: values[n] for n in MuonOptions.names() if n in signature}
    if options is None:
        return MuonOptions(**given)
    if not isinstance(options, MuonOptions):
        raise ValueError(f"options must be a muonkit.MuonOptions, got {type(options).__name__}")
    both = [n for n, v in given.items() if v != signature[n].default]
    if both:
        raise ValueError(f"pass {both} inside options=MuonOptions(...) or as keywords, not both")
    return options


def expand_options(group: dict) -> dict:
    """A param group with an ``options`` entry (a :class:`MuonOptions`) written out as keys."""
    if "options" not in group:
        return group
    group = dict(group)
    options = group.pop("options")
    if not isinstance(options, MuonOptions):
        raise ValueError(f"options must be a muonkit.MuonOptions, got {type(options).__name__}")
    both = sorted(set(group) & set(MuonOptions.names()))
    if both:
        raise ValueError(f"param group sets {both} both as keys and in options; pick one")
    return {**group, **options.as_dict()}
