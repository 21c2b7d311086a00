"""The update options of a Muon-style step, declared once.

:class:`MuonOptions` is a frozen dataclass of every option of the momentum and
orthogonalize-and-apply math (all but ``lr``, which stays a plain param-group entry because
LR schedulers rewrite it every step). Each field is declared with :func:`option`: its default,
its meaning (a one-line ``summary`` and ``details``) and, for options a command line sets, the
words it may be written as. Everything else comes from these declarations:

* the optimizers' keyword-only options (:func:`option_keywords` gives ``Muon``, ``NorMuon`` and
  the variants their signature and the options part of their docstring; unknown keywords are a
  ``TypeError`` naming the closest option), with :class:`MuonOptionValues` for type checkers
  and IDE completion (a test keeps it equal to the fields);
* the functional core (:mod:`muonkit.functional`), the variants and the distributed step, which
  all take a ``MuonOptions``; :meth:`MuonOptions.from_group` reads it from a param group, where
  the options live as plain keys (so ``state_dict()`` saves them and schedules such as momentum
  warmup can change them);
* the lab's ``--ns-*`` flags (``muonlab.cli.common.add_muon_option_flags``: choices, default,
  help) and the README's options table (:func:`options_table`; a test keeps them equal).

Adding an option: one :func:`option` field here (and its check in ``_validate``); then use it
where the math needs it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, TypedDict

import torch

from .orthogonalize import (
    ORTHOGONALIZE_METHODS,
    PRECONDITIONERS,
    check_preconditioner,
    resolve_schedule,
)
from .precision import NS_PRECISIONS
from .scaling import validate_rule

try:
    from typing import Unpack  # noqa: F401  (re-exported for the optimizers' signatures)
except ImportError:  # Python 3.10: torch depends on typing_extensions
    from typing_extensions import Unpack  # noqa: F401

MOMENTUM_FORMS = ("standard", "ema")
MIXINGS = ("momentum_form", "gradient_heavy")
# torch dtypes ``ns_dtype`` may also be given by name (command lines, config files, JSON)
NS_DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")


def check_choice(name: str, value: Any, valid: Sequence[Any]) -> None:
    """Raise ValueError unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")


def option(default: Any, summary: str, details: str = "", words: Mapping[str, Any] | None = None):
    """A :class:`MuonOptions` field: ``default``; its meaning, ``summary`` (one line: command-line
    help, docstrings) and ``details`` (the rest, appended as written: README table); ``words``:
    how a command line or config file writes each value (word -> value), for options with a
    flag whose values are not plain numbers."""
    return field(default=default, metadata={"summary": summary, "details": details,
                                            "words": words})


def _identity_words(values: Iterable[str]) -> dict[str, str]:
    return {v: v for v in values}


@dataclass(frozen=True)
class MuonOptions:
    """The options of one Muon update; each field's meaning is declared with it (below, and
    in ``help(MuonOptions)``). Built with keywords, it checks itself (ValueError)."""

    momentum: float = option(0.95, "momentum coefficient mu, in [0, 1)", " (0.95: muon.py)")
    nesterov: bool = option(
        True, "orthogonalize the Nesterov update `G + mu*B` (standard) / `lerp(G, B, mu)` (ema) "
        "instead of the buffer `B`")
    momentum_form: str = option(
        "standard", "the momentum buffer: `\"standard\"`: `B = mu*B + G` (SGD heavy ball, Muon "
        "paper); `\"ema\"`: `B = lerp(B, G, 1-mu)` (muon.py 2025, torch.optim.Muon)",
        ". The EMA buffer is (1-mu) times the standard one; Newton-Schulz normalizes that scale "
        "away, so they differ only under a changing mu (momentum warmup) and in un-normalized "
        "variants")
    weight_decay: float = option(
        0.0, "decoupled weight decay: `W *= 1 - lr*wd` before the step (AdamW-style)")
    ns_steps: int = option(5, "Newton-Schulz iterations", " (5: muon.py)")
    ns_coefficients: str | Sequence = option(
        "jordan", "Newton-Schulz coefficient schedule",
        ": `\"jordan\"` (3.4445, -4.7750, 2.0315 each step, muon.py), `\"polar_express\"` "
        "(Amsel et al. 2025, per-step minimax quintics), `\"svd\"` (exact polar factor, slow), "
        "or a list of `(a, b, c)`; see `muonkit.orthogonalize`",
        words=_identity_words(ORTHOGONALIZE_METHODS))
    ns_dtype: torch.dtype | str | None = option(
        "auto", "Newton-Schulz precision: `\"auto\"` (from the hardware), `\"mixed\"` (the "
        "first steps fp32, the last 4 bf16) or a dtype (`torch.float32` or its name "
        "`\"float32\"`)",
        ". `\"auto\"` (None means the same) picks per device from what the hardware does "
        "natively (`muonkit.hardware`): CUDA: bf16; a CPU without native bf16 (no "
        "`avx512_bf16`/`amx_bf16` flag; bf16 matmul there is tens of times slower): fp32; a CPU "
        "with native bf16: per matrix shape the cheaper of `\"mixed\"` and fp32 (Gram side), "
        "counting a bf16 product as 1/2 (AVX512-BF16) or 1/3.5 (AMX-BF16) of an fp32 one "
        "(`muonkit.hardware.bf16_speedup`; `MUONKIT_CPU_NATIVE_BF16=0` or `1` in the "
        "environment overrides the detection). `\"mixed\"` keeps accuracy within 10% of fp32's "
        "for 5-8 steps (bf16 early steps lose it, see Benchmarks). `opt.ns_precision()`, "
        "`repr(opt)` and the run config of `muonkit train` say what ran and why",
        words=_identity_words((*NS_PRECISIONS, *NS_DTYPE_NAMES)))
    lr_scaling: str | Callable = option(
        "keller", "per-shape LR factor for an (out, in) matrix",
        ": `\"keller\"` max(1, out/in)^0.5, `\"max_dim\"` max(out, in)^0.5 (muon.py Oct 2024), "
        "`\"mup\"` (out/in)^0.5, `\"moonlight\"` 0.2*max(out, in)^0.5 (Moonshot 2025), "
        "`\"none\"`, or a callable(shape) -> float; see `muonkit.scaling`")
    ns_split: int = option(
        1, "orthogonalize each parameter as this many equal row blocks",
        ": 3 for a fused QKV weight, `3*n_head` per head (modded-nanogpt treats Q, K and V as "
        "separate matrices); the LR rule then sees the block shape")
    ns_gram: bool | None = option(
        None, "evaluate Newton-Schulz on the small Gram side: always (True), never (False) or "
        "where cheaper (None)",
        ": the same iteration, fewer FLOPs for matrices with aspect ratio >= 2 (restarted "
        "every 5 steps to bound fp32 rounding); None uses it in fp32/fp64 where cheaper, never "
        "in bf16 "
        "(nor in the bf16 steps of `\"mixed\"`); see `muonkit.orthogonalize`",
        words={"auto": None, "true": True, "false": False})
    ns_precondition: str = option(
        "frobenius", "how Newton-Schulz scales its input: `\"frobenius\"` (divide by the "
        "Frobenius norm, muon.py) or `\"aol\"` (Turbo-Muon's almost-orthogonal-layer "
        "rescaling, Boissin et al. 2025)",
        ": AOL scales each row of the wide side by `sum_j abs(X X^T)_ij ^ -1/2` (spectral norm "
        "<= 1 guaranteed, closer to orthogonal; its Gram matrix is reused by the first step, "
        "so it costs no product) and converges to the polar factor of the rescaled matrix, "
        "not exactly G's; composes with `ns_gram`, every schedule and precision; measured "
        "against Frobenius in docs/benchmarks.md",
        words=_identity_words(PRECONDITIONERS))
    ns_compile: bool = option(False, "`torch.compile` the Newton-Schulz loop (CUDA only)")
    ns_batch_dims: int = option(
        0, "leading dims that index independent matrices",
        ": 1 for a MoE stack `(E, out, in)`, each expert orthogonalized on its own (batched) "
        "and the LR rule seeing `(out, in)`; 0 flattens conv kernels to `(shape[0], -1)`")
    maximize: bool = option(
        False, "ascend the objective (gradients negated first, as in torch.optim)",
        "; `hybrid_param_groups(model, maximize=True)` sets it on every group, AdamW groups "
        "included")
    mixing: str = option(
        "momentum_form", "the update orthogonalized: `\"momentum_form\"` (Muon's Nesterov "
        "update of `momentum_form`) or `\"gradient_heavy\"` (`G + mu * EMA(G)`)",
        ", LoRA-Pre's printed mixing, for ablations")
    transposed: bool = option(
        False, "the matrices are stored `(in, out)`",
        ", as Hugging Face GPT-2's `Conv1D` (`y = x @ W + b`): `ns_split` cuts the out dim and "
        "the LR rule sees `(out, in)`, so the step is the transpose of the one for the "
        "`nn.Linear` holding the same map (Newton-Schulz alone would not care; the LR rules for "
        "non-square shapes do). `hybrid_param_groups` sets it for `Conv1D` weights; the "
        "variants refuse it")

    def __post_init__(self) -> None:
        if self.ns_dtype in NS_DTYPE_NAMES:  # one representation inside: the torch.dtype
            object.__setattr__(self, "ns_dtype", getattr(torch, self.ns_dtype))
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
    def declaration(cls, name: str) -> Field:
        """The declaration of option ``name`` (its metadata: summary, details, words)."""
        return next(f for f in fields(cls) if f.name == name)

    @classmethod
    def changes(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``values`` (option name -> value) that differ from the defaults."""
        defaults = cls.defaults()
        return {name: v for name, v in values.items() if v != defaults[name]}

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> MuonOptions:
        """The options held in a param group (or any mapping); missing keys take defaults."""
        return cls(**{name: group[name] for name in cls.names() if name in group})

    @classmethod
    def from_word(cls, name: str, word: str) -> Any:
        """The value of option ``name`` written as ``word`` (a command line, a config file):
        one of its ``words``, or a number for a numeric option; checked like the option
        (ValueError naming the valid words or the valid range)."""
        declared = cls.declaration(name)
        words, kind = declared.metadata["words"], type(declared.default)
        if words is not None:
            if word not in words:
                raise ValueError(f"invalid choice {word!r} (choose from {', '.join(words)})")
            value = words[word]
        else:
            if kind not in (int, float):
                raise TypeError(f"option {name} has no words: declare them with option()")
            try:
                value = kind(word)
            except ValueError:
                raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, "
                                 f"got {word!r}") from None
        cls(**{name: value})
        return value

    @classmethod
    def word_of(cls, name: str, value: Any) -> str:
        """How option ``name``'s ``value`` is written (inverse of :meth:`from_word`)."""
        words = cls.declaration(name).metadata["words"] or {}
        return next((w for w, v in words.items() if v is value or v == value), str(value))

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
            f"ns_dtype must be a torch.dtype, one of {[*NS_PRECISIONS, *NS_DTYPE_NAMES]} or "
            f"None, got {o.ns_dtype!r}"
        )
    validate_rule(o.lr_scaling)
    if not isinstance(o.ns_split, int) or isinstance(o.ns_split, bool) or o.ns_split < 1:
        raise ValueError(f"ns_split must be an int >= 1, got {o.ns_split!r}")
    check_choice("ns_gram", o.ns_gram, (None, True, False))
    check_preconditioner(o.ns_precondition)
    check_choice("ns_compile", o.ns_compile, (True, False))
    b = o.ns_batch_dims
    if not isinstance(b, int) or isinstance(b, bool) or b < 0:
        raise ValueError(f"ns_batch_dims must be an int >= 0, got {b!r}")
    check_choice("maximize", o.maximize, (True, False))
    check_choice("mixing", o.mixing, MIXINGS)
    check_choice("transposed", o.transposed, (True, False))


class MuonOptionValues(TypedDict, total=False):
    """The fields of :class:`MuonOptions` as keywords, for type checkers and IDE completion of
    ``Muon(params, lr, **options)`` (``tests/test_options.py`` keeps it equal to the fields)."""

    momentum: float
    nesterov: bool
    momentum_form: str
    weight_decay: float
    ns_steps: int
    ns_coefficients: str | Sequence
    ns_dtype: torch.dtype | str | None
    lr_scaling: str | Callable
    ns_split: int
    ns_gram: bool | None
    ns_precondition: str
    ns_compile: bool
    ns_batch_dims: int
    maximize: bool
    mixing: str
    transposed: bool


def _default_text(value: Any) -> str:
    return f'`"{value}"`' if isinstance(value, str) else str(value)


def options_doc(defaults: Mapping[str, Any] = {}, indent: str = "        ") -> str:  # noqa: B006
    """One line per option, ``name (default): summary``, for docstrings; ``defaults``
    overrides the declared ones (a variant's own momentum)."""
    return "\n".join(
        f"{indent}{f.name} ({defaults.get(f.name, f.default)!r}): "
        f"{f.metadata['summary'].replace('`', '')}"
        for f in fields(MuonOptions)
    )


def options_table() -> str:
    """The README's rows of the options (``| `name` | default | meaning |``, one per line)."""
    return "\n".join(
        f"| `{f.name}` | {_default_text(f.default)} | "
        f"{f.metadata['summary']}{f.metadata['details']} |"
        for f in fields(MuonOptions)
    )


MuonOptions.__doc__ = (MuonOptions.__doc__ or "") + (
    "\n\n    Options (name (default): meaning):\n\n" + options_doc(indent="    "))


def unexpected_keyword(owner: str, name: str, valid: Iterable[str]) -> TypeError:
    """The TypeError for an unknown keyword ``name`` of ``owner``, naming the closest valid
    ones (a misspelt ``ns_step`` must not ride along unused)."""
    close = difflib.get_close_matches(name, sorted(valid), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return TypeError(f"{owner}() got an unexpected keyword argument {name!r}{hint}")


def option_keywords(**own_defaults: Any) -> Callable[[type], type]:
    """Class decorator for an optimizer whose ``__init__`` takes the options as
    ``**options: Unpack[MuonOptionValues]``: its signature (``inspect.signature``, ``help``,
    notebooks) gets every option as a keyword-only parameter with its default
    (``own_defaults`` override the declared ones, e.g. a variant's momentum), its docstring the
    options' lines, and the class ``option_defaults`` (read by :func:`options_from_keywords`)."""

    def decorate(cls: type) -> type:
        init = cls.__init__
        own = [p for p in inspect.signature(init).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        defaults = {**MuonOptions.defaults(), **own_defaults}
        options = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=defaults[f.name],
                              annotation=f.type)
            for f in fields(MuonOptions)
        ]
        init.__signature__ = inspect.Signature(own + options)
        cls.option_defaults = dict(own_defaults)
        cls.__doc__ = (cls.__doc__ or "").rstrip() + (
            "\n\n    Options (keywords, or one ``options=MuonOptions(...)``):\n\n"
            + options_doc(defaults, indent="        ")
        )
        return cls

    return decorate


def _keywords(cls: type) -> set[str]:
    """The keywords the constructors of ``cls`` and its bases name, and the options."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {*MuonOptions.names()} | {
        p.name for c in cls.__mro__ if "__init__" in vars(c)
        for p in inspect.signature(vars(c)["__init__"]).parameters.values()
        if p.kind in named and p.name != "self"
    }


def options_from_keywords(
    optimizer: Any, options: MuonOptions | None, values: Mapping[str, Any]
) -> MuonOptions:
    """The :class:`MuonOptions` of an optimizer built with option keywords ``values`` or one
    ``options`` object (not both); ``optimizer``'s class gives the name in errors and its
    ``option_defaults`` (see :func:`option_keywords`). An unknown keyword is a TypeError naming
    the closest option."""
    for name in values:
        if name not in MuonOptions.names():
            raise unexpected_keyword(type(optimizer).__name__, name, _keywords(type(optimizer)))
    if options is None:
        return MuonOptions(**{**getattr(optimizer, "option_defaults", {}), **values})
    if not isinstance(options, MuonOptions):
        raise ValueError(f"options must be a muonkit.MuonOptions, got {type(options).__name__}")
    if values:
        raise ValueError(f"pass {sorted(values)} inside options=MuonOptions(...) or as "
                         "keywords, not both")
    return options


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
