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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..functional import matrix_shape, momentum_update_, nesterov_updates, orthogonalize_and_apply_
from ..heads import HEAD_NAMES, head_modules
from ..muon import MUON_DEFAULTS, MuonBase, validate_muon_options
from ..options import (
    MuonOptions,
    MuonOptionValues,
    Unpack,
    check_seed,
    option_keywords,
    options_from_keywords,
)


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

    def _validate_group(self, group: dict) -> None:
        options = validate_muon_options(group)
        if options.ns_split != 1 or options.ns_batch_dims or options.transposed:
            raise ValueError(
                "KroneckerMuon supports ns_split=1, ns_batch_dims=0 and transposed=False only"
            )
        if not isinstance(group["power_iters"], int) or group["power_iters"] < 1:
            raise ValueError(f"power_iters must be an int >= 1, got {group['power_iters']!r}")
        check_seed(group["seed"])
        requested = getattr(self, "_requested_dense", set())  # a copy has no such request
        dense = set(group.get("dense_momentum", ()))
        for i, p in enumerate(group["params"]):
            if id(p) in requested:
                dense.add(i)
            elif not useful_factorization(p.shape, group["min_savings"]):
                dense.add(i)
                (m1, n1), (m2, n2) = kronecker_shapes(*matrix_shape(p.shape))
                warnings.warn(
                    f"KroneckerMuon: no useful Kronecker factorization of a "
                    f"{' x '.join(map(str, matrix_shape(p.shape)))} matrix (best {m1}x{n1} (x) "
                    f"{m2}x{n2}); it keeps dense momentum",
                    stacklevel=3,
                )
        group["dense_momentum"] = sorted(dense)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # a state dict from before groups listed them
            if group.get("use_muon", True) and "dense_momentum" not in group:  # not AdamW's
                group["dense_momentum"] = [
                    i
                    for i, p in enumerate(group["params"])
                    if "momentum_buffer" in self.state.get(p, {})
                    or not useful_factorization(p.shape, group["min_savings"])
                ]

    def _kronecker_momentum(self, group: dict, p: Tensor, g: Tensor) -> Tensor:
        """Update p's factors from the dense buffer T of the group's momentum form (module
        docstring); returns T."""
        state = self.state[p]
        if "kron_f1" not in state:
            shape1, shape2 = kronecker_shapes(*matrix_shape(p.shape))
            state["kron_f1"] = torch.zeros(shape1, dtype=p.dtype, device=p.device)
            state["kron_f2"] = torch.zeros(shape2, dtype=p.dtype, device=p.device)
        F1, F2 = state["kron_f1"], state["kron_f2"]
        mu, g2 = group["momentum"], g.reshape(matrix_shape(p.shape))
        if group["momentum_form"] == "ema":
            T = torch.kron(F1, F2).lerp_(g2, 1.0 - mu)
        else:
            T = g2 + mu * torch.kron(F1, F2)
        generator = None if bool(F2.any()) else self._generator(group, p)
        new1, new2 = nearest_kronecker(T, F1, F2, group["power_iters"], generator)
        F1.copy_(new1)
        F2.copy_(new2)
        return T.reshape(p.shape)

    def _group_step(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        options = MuonOptions.from_group(group)
        dense_ids = {id(group["params"][i]) for i in group["dense_momentum"]}
        dense = [i for i, p in enumerate(params) if id(p) in dense_ids]
        updates: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
        if dense:
            dense_updates = momentum_update_(
                self._momentum_buffers([params[i] for i in dense]),
                [grads[i] for i in dense],
                options,
            )
            for i, u in zip(dense, dense_updates):
                updates[i] = u
        for i, (p, g) in enumerate(zip(params, grads)):
            if updates[i] is None:
                T = self._kronecker_momentum(group, p, g)
                (updates[i],) = nesterov_updates([g], [T], options)
        orthogonalize_and_apply_(params, updates, lr=float(group["lr"]), options=options)


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
