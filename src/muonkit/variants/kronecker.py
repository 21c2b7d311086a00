"""Kronecker-factored momentum for Muon.

The momentum matrix M (out x in) is stored as a Kronecker product ``F1 (x) F2`` with F1
(m1 x n1), F2 (m2 x n2), m1 m2 = out, n1 n2 = in: (m1 n1 + m2 n2) floats instead of out * in.
Each step forms the dense candidate buffer of ``momentum_form`` from the stored one,
``T = mu F1 (x) F2 + G`` (standard heavy ball) or ``T = lerp(F1 (x) F2, G, 1 - mu)`` (EMA),
replaces the factors by the nearest Kronecker product of T, and orthogonalizes Muon's update
of T (:func:`muonkit.functional.nesterov_updates`: ``G + mu T`` / ``lerp(G, T, mu)`` with Nesterov,
T without; ``mixing="gradient_heavy"`` as in Muon) with Muon's Newton-Schulz.

Nearest Kronecker product (Van Loan & Pitsianis, "Approximation with Kronecker Products",
1993): ``||T - F1 (x) F2||_F = ||R(T) - vec(F1) vec(F2)^T||_F`` where R(T) rearranges the
(m2 x n2) blocks of T into rows, so the best factors are the leading singular pair of R(T),
found here by power iteration warm-started from the current factors (``power_iters`` steps;
exact after one step when T is itself a Kronecker product).

Orthogonalization acts on the full update matrix, as dense Muon. The update equals dense
Muon's exactly only when every gradient is a multiple of one fixed Kronecker product
``c_t A (x) B``: then T is one too and the fit loses nothing. Gradients that are Kronecker
products with changing factors ``A_t (x) B_t`` are not enough: T is then a sum of different
products, the fit drops part of it, and the updates drift from dense Muon's (both cases are
tested). (For a Kronecker product alone, polar(A (x) B) = polar(A) (x) polar(B) would be
cheaper, but the Nesterov update is not one in general.)

Factor shapes: the divisors of out and in closest to their square roots. Where that saves
less than ``min_savings`` x (e.g. out and in both prime), the matrix keeps dense momentum; such
parameters are listed in ``optimizer.dense_fallback`` and a warning names them.

The factors are a momentum store (:class:`KroneckerMomentum`, a
:class:`muonkit.muon.MomentumStore`) that keeps Muon's dense buffer (the
:class:`muonkit.muon.DenseMomentum` store) for the matrices its group's ``dense_momentum``
lists: :class:`KroneckerMuon` and :class:`HybridKroneckerMuon` are Muon with it,
:class:`KroneckerMuonWithAuxAdam` the Muon + AdamW hybrid with it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..functional import matrix_shape, momentum_update_
from ..heads import HEAD_NAMES, head_modules
from ..hybrid import MuonWithAuxAdam, param_picker
from ..muon import DENSE_MOMENTUM, MUON_DEFAULTS, MomentumStore, MuonBase, identity
from ..options import (
    MuonOptions,
    MuonOptionValues,
    Unpack,
    check_seed,
    option_keywords,
    options_from_keywords,
)
from .lowrank import check_whole_matrices


def closest_divisor_to_sqrt(n: int) -> int:
    """The divisor d of n that is closest to sqrt(n) (the smaller one on ties)."""
    root = math.sqrt(n)
    divisors = [d for d in range(1, int(root) + 2) if n % d == 0]
    divisors += [n // d for d in divisors]
    return min(divisors, key=lambda d: (abs(d - root), d))


def kronecker_shapes(out_dim: int, in_dim: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((m1, n1), (m2, n2)) with m1 m2 = out_dim, n1 n2 = in_dim, each near the square root."""
    m1, n1 = closest_divisor_to_sqrt(out_dim), closest_divisor_to_sqrt(in_dim)
    return (m1, n1), (out_dim // m1, in_dim // n1)


def useful_factorization(shape: Sequence[int], min_savings: float) -> bool:
    """Whether Kronecker factors of a parameter of ``shape`` are ``min_savings`` x smaller
    than the dense matrix."""
    out_dim, in_dim = matrix_shape(shape)
    if out_dim * in_dim == 0:
        return True  # nothing to store; the step skips empty parameters
    (m1, n1), (m2, n2) = kronecker_shapes(out_dim, in_dim)
    return out_dim * in_dim >= min_savings * (m1 * n1 + m2 * n2)


def rearrange(T: Tensor, shape1: tuple[int, int], shape2: tuple[int, int]) -> Tensor:
    """Van Loan's R(T): row (i1, j1) is the flattened block T[i1*m2:(i1+1)*m2, j1*n2:...]."""
    (m1, n1), (m2, n2) = shape1, shape2
    return T.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def nearest_kronecker(
    T: Tensor,
    F1: Tensor,
    F2: Tensor,
    power_iters: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Factors (F1, F2) minimizing ||T - F1 (x) F2||_F, by power iteration on R(T) started
    from the given factors (from a Gaussian drawn with ``generator`` if they are zero).
    Balanced: ||F1||_F = ||F2||_F."""
    R = rearrange(T, tuple(F1.shape), tuple(F2.shape))
    v = F2.reshape(-1)
    if not bool(v.any()):
        v = torch.randn(v.shape, dtype=T.dtype, device=T.device, generator=generator)
    for _ in range(power_iters):
        u = R @ v
        u_norm = u.norm()
        if u_norm == 0:  # T is zero: so are the factors
            return torch.zeros_like(F1), torch.zeros_like(F2)
        u = u / u_norm
        v = R.mT @ u
    sigma = v.norm()
    if sigma == 0:
        return torch.zeros_like(F1), torch.zeros_like(F2)
    scale = sigma.sqrt()
    return (u * scale).reshape(F1.shape), (v / sigma * scale).reshape(F2.shape)


def dense_momentum_list(group: dict, requested: set[int], state: dict | None = None) -> list[int]:
    """Positions of the group's matrices that keep dense momentum: those ``requested`` (by
    id), those without a useful factorization, and (a state dict from before groups listed
    them: ``state``) those whose state holds a dense buffer."""
    return [
        i
        for i, p in enumerate(group["params"])
        if id(p) in requested
        or not useful_factorization(p.shape, group["min_savings"])
        or (state is not None and "momentum_buffer" in state.get(p, {}))
    ]


class KroneckerMomentum(MomentumStore):
    """The Kronecker store (module docstring): ``kron_f1``, ``kron_f2`` per matrix, or Muon's
    ``momentum_buffer`` for the positions the group lists under ``dense_momentum`` (asked for,
    or without a useful factorization); group options ``power_iters``, ``min_savings``,
    ``seed``. Each step forms the candidate buffer of the group's momentum form from the
    factors with :func:`muonkit.functional.momentum_update_` (Muon's forms, written once),
    reads the update from it the same way and refits the factors to it."""

    group_defaults = dict(power_iters=2, min_savings=4.0, seed=0)

    def validate(self, optimizer, group, options):
        check_whole_matrices("KroneckerMuon", options)
        if not isinstance(group["power_iters"], int) or group["power_iters"] < 1:
            raise ValueError(f"power_iters must be an int >= 1, got {group['power_iters']!r}")
        check_seed(group["seed"])
        requested = getattr(optimizer, "_requested_dense", set())  # a copy has no such request
        for p in group["params"]:
            if id(p) not in requested and not useful_factorization(p.shape, group["min_savings"]):
                (m1, n1), (m2, n2) = kronecker_shapes(*matrix_shape(p.shape))
                warnings.warn(
                    f"KroneckerMuon: no useful Kronecker factorization of a "
                    f"{' x '.join(map(str, matrix_shape(p.shape)))} matrix (best {m1}x{n1} (x) "
                    f"{m2}x{n2}); it keeps dense momentum",
                    stacklevel=5,  # where the group is added
                )
        dense = set(group.get("dense_momentum", ())) | set(dense_momentum_list(group, requested))
        group["dense_momentum"] = sorted(dense)

    def restore(self, optimizer, group):
        if "dense_momentum" not in group:  # a state dict from before groups listed them
            group["dense_momentum"] = dense_momentum_list(group, set(), optimizer.state)

    def buffer_update(
        self, optimizer: MuonBase, group: dict, p: Tensor, g: Tensor, options: MuonOptions
    ) -> Tensor:
        """Update p's factors from the dense buffer T of the group's momentum form (module
        docstring); returns the update to orthogonalize, read from T."""
        state = optimizer.state[p]
        if "kron_f1" not in state:
            shape1, shape2 = kronecker_shapes(*matrix_shape(p.shape))
            state["kron_f1"] = torch.zeros(shape1, dtype=p.dtype, device=p.device)
            state["kron_f2"] = torch.zeros(shape2, dtype=p.dtype, device=p.device)
        F1, F2 = state["kron_f1"], state["kron_f2"]
        T = torch.kron(F1, F2)
        (update,) = momentum_update_([T], [g.reshape(T.shape)], options)  # T: the new buffer
        generator = None if bool(F2.any()) else optimizer._generator(group, p)
        new1, new2 = nearest_kronecker(T, F1, F2, group["power_iters"], generator)
        F1.copy_(new1)
        F2.copy_(new2)
        return update.reshape(p.shape)

    def updates(self, optimizer, group, params, grads, options, view=identity):
        dense_ids = {id(group["params"][i]) for i in group["dense_momentum"]}
        dense = [i for i, p in enumerate(params) if id(p) in dense_ids]
        updates: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
        if dense:
            dense_updates = DENSE_MOMENTUM.updates(
                optimizer, group, [params[i] for i in dense], [grads[i] for i in dense], options
            )
            for i, u in zip(dense, dense_updates):
                updates[i] = u
        for i, (p, g) in enumerate(zip(params, grads)):
            if updates[i] is None:
                updates[i] = self.buffer_update(optimizer, group, p, g, options)
        return updates


KRONECKER_MOMENTUM = KroneckerMomentum()


@option_keywords(momentum=0.9)
class KroneckerMuon(MuonBase):
    """Muon whose momentum is a Kronecker product of two small factors (module docstring).

    Args:
        params: matrices (conv kernels flattened to (shape[0], -1)) or param groups.
        lr: learning rate (0.02, as :class:`muonkit.Muon`).
        power_iters: power-iteration steps of the nearest-Kronecker fit per update (2).
        min_savings: matrices whose Kronecker state would be less than this many times smaller
            than dense keep dense momentum (4).
        dense: parameters (tensors) that keep dense momentum whatever their shape.
        seed: seeds the random start of the first power iteration (a generator of the
            optimizer's own, never the global RNG; see :meth:`MuonBase._generator`).
        nonfinite, options, **option_values: as :class:`muonkit.Muon`, with ``momentum`` 0.9;
            ``ns_split`` 1, ``ns_batch_dims`` 0 and ``transposed`` False only.

    State per matrix: ``kron_f1``, ``kron_f2`` (or ``momentum_buffer`` for dense fallbacks).
    Each param group lists the positions of its dense-momentum parameters under
    ``dense_momentum`` (so copies and state dicts keep the choice).
    """

    store = KRONECKER_MOMENTUM

    def __init__(
        self,
        params,
        lr: float = 0.02,
        *,
        power_iters: int = 2,
        min_savings: float = 4.0,
        dense: Iterable[Tensor] = (),
        seed: int = 0,
        nonfinite: str = "raise",
        options: MuonOptions | None = None,
        **option_values: Unpack[MuonOptionValues],
    ):
        chosen = options_from_keywords(self, options, option_values)
        self._requested_dense = {id(p) for p in dense}
        defaults = dict(
            MUON_DEFAULTS, lr=lr, power_iters=power_iters, min_savings=min_savings, seed=seed,
            **chosen.as_dict(),
        )
        super().__init__(params, defaults, nonfinite=nonfinite)

    @property
    def dense_fallback(self) -> list[tuple[int, ...]]:
        """Shapes of the matrices that keep dense momentum for want of a useful factorization."""
        return [
            tuple(p.shape)
            for group in self.param_groups
            for p in group["params"]
            if not useful_factorization(p.shape, group["min_savings"])
        ]


def output_layer_params(model: nn.Module, head_names: Sequence[str] = HEAD_NAMES) -> list[Tensor]:
    """The output layer's matrices: a module named like a head, else the last nn.Linear."""
    heads = head_modules(model, head_names)
    if not heads:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        heads = linears[-1:]
    return [p for m in heads for p in m.parameters() if p.ndim >= 2]


class HybridKroneckerMuon(KroneckerMuon):
    """Kronecker momentum on the hidden layers, dense Muon momentum on the output layer.

    Built from a model: every matrix parameter of ``model`` is optimized; the output layer (a
    module named ``lm_head``/``head``/``output``/``classifier``, else the last ``nn.Linear``)
    and the modules named in ``dense_modules`` keep dense momentum, the rest Kronecker. The
    output layer maps to the classes/vocabulary, where a Kronecker structure is least plausible
    and which is small for classifiers. Vectors (biases, norms) are not accepted: train them
    with AdamW alongside (or build the model without biases).
    """

    def __init__(self, model: nn.Module, *, dense_modules: Sequence[str] = (), **kwargs):
        named = dict(model.named_modules())
        unknown = [n for n in dense_modules if n not in named]
        if unknown:
            raise ValueError(f"dense_modules {unknown} are not modules of the model")
        dense = output_layer_params(model)
        dense += [p for n in dense_modules for p in named[n].parameters() if p.ndim >= 2]
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, dense=dense, **kwargs)

    @property
    def dense_params(self) -> list[int]:
        """Positions (in param-group order) of the parameters with dense momentum."""
        out, offset = [], 0
        for group in self.param_groups:
            out += [offset + i for i in group["dense_momentum"]]
            offset += len(group["params"])
        return out


class KroneckerMuonWithAuxAdam(MuonWithAuxAdam):
    """Kronecker-factored momentum (:class:`KroneckerMuon`) on the Muon groups, AdamW on the
    others (the hybrid with :class:`KroneckerMomentum`). A Muon group with ``dense_momentum``
    listing all its parameters keeps dense Muon momentum for them (the "hybrid Kronecker" of
    the GPT study: :func:`dense_momentum_groups` makes such groups)."""

    store = KRONECKER_MOMENTUM


def dense_momentum_groups(
    model: nn.Module,
    groups: list[dict],
    dense: Sequence[str] | Callable[[str, Tensor], bool],
) -> list[dict]:
    """``groups`` (of :func:`muonkit.hybrid.hybrid_param_groups`) with the matrices that
    ``dense`` picks (parameter names of ``model``, or a predicate ``(name, param) -> bool``)
    moved out of each Muon group into a group of their own (role "muon_dense", right after
    the rest of its group) whose ``dense_momentum`` lists them all: there
    :class:`KroneckerMuonWithAuxAdam` keeps dense Muon momentum."""
    picked = param_picker(dense)
    ids = {id(p) for name, p in model.named_parameters() if picked(name, p)}
    out = []
    for g in groups:
        if not g["use_muon"]:
            out.append(g)
            continue
        rest = [p for p in g["params"] if id(p) not in ids]
        kept = [p for p in g["params"] if id(p) in ids]
        if rest:
            out.append({**g, "params": rest})
        if kept:
            out.append({**g, "params": kept, "role": "muon_dense",
                        "dense_momentum": list(range(len(kept)))})
    return out
