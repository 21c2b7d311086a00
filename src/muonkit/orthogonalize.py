"""Orthogonalization: map a matrix G = U S V^T to (approximately) its polar factor U V^T.

Muon replaces each momentum matrix by its orthogonalized version. The exact answer is the
polar factor from an SVD (:func:`polar`); in practice an odd matrix polynomial is iterated
instead (Newton-Schulz, :func:`newton_schulz`), which needs only matrix products and runs
well in bfloat16 on accelerators.

One Newton-Schulz step with coefficients (a, b, c) maps ``X -> a X + b (X X^T) X + c (X X^T)^2 X``,
which acts on each singular value as ``s -> a s + b s^3 + c s^5``. After normalizing G so that
every singular value lies in (0, 1], a few steps push them all towards 1.

Coefficient schedules (``COEFFICIENT_SCHEDULES``):

* ``"jordan"``: (3.4445, -4.7750, 2.0315) at every step; Keller Jordan's quintic from
  ``muon.py`` (https://github.com/KellerJordan/Muon, 2024). It trades exact convergence for a
  steep slope at zero: singular values end in roughly [0.7, 1.2] after 5 steps.
* ``"polar_express"``: a different optimal (minimax) quintic per step, from Amsel, Persson,
  Musco & Gower, "The Polar Express: Optimal Matrix Sign Methods and Their Application to the
  Muon Algorithm" (2025, arXiv:2505.16932), as used by modded-nanogpt and nanochat (computed
  for l = 1e-3 with a 2% safety factor, so the input is normalized by 1.02 * ||G||_F).
  Steps beyond the 5 published ones repeat the last polynomial.
* an explicit sequence of (a, b, c) tuples, cycled by repeating the last one.

Preconditioning (``PRECONDITIONERS``), how G is scaled before the first step:

* ``"frobenius"``: ``X / ||X||_F``, the reference scaling of muon.py.
* ``"aol"``: Turbo-Muon's almost-orthogonal-layer rescaling (Boissin, Massena, Mamalet &
  Serrurier, "Turbo-Muon: Accelerating Orthogonality-Based Optimization with
  Pre-Conditioning", 2025, arXiv:2512.04632; the AOL bound is Prach & Lampert, ECCV 2022,
  arXiv:2208.03160): on the wide side X (m <= n), with ``A = X X^T``, each row i of X is
  scaled by ``d_i = (sum_j |A_ij|)^(-1/2)``. Then ``||diag(d) X||_2 <= 1`` always (the
  property that makes the iteration safe), and the scaled matrix is closer to orthogonal
  than ``X / ||X||_F`` (exactly orthogonal when X's rows are), so one step fewer reaches the
  same orthogonality. ``A`` is the first step's Gram matrix anyway: the rescaled one,
  ``diag(d) A diag(d)``, is reused, so AOL costs no matrix product. Its limit: the iteration
  converges to the polar factor of ``diag(d) G``, which equals G's only when G's rows are
  orthogonal; ``benchmarks/orth_accuracy.py`` measures the distance to G's own polar factor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .precision import GRAM_RESTART, mixed_split, resolve_dtype, use_gram

Coefficients = tuple[float, float, float]


@dataclass(frozen=True)
class CoefficientSchedule:
    """Per-step quintic coefficients and the safety factor applied to the Frobenius norm."""

    steps: tuple[Coefficients, ...]
    norm_safety: float = 1.0

    def for_steps(self, n: int) -> list[Coefficients]:
        """The coefficients of ``n`` steps; the last published step repeats if ``n`` is longer."""
        return [self.steps[min(i, len(self.steps) - 1)] for i in range(n)]


COEFFICIENT_SCHEDULES: dict[str, CoefficientSchedule] = {
    "jordan": CoefficientSchedule(((3.4445, -4.7750, 2.0315),)),
    "polar_express": CoefficientSchedule(
        (
            (8.156554524902461, -22.48329292557795, 15.878769915207462),
            (4.042929935166739, -2.808917465908714, 0.5000178451051316),
            (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
            (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
            (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
        ),
        norm_safety=1.02,
    ),
}

ORTHOGONALIZE_METHODS = (*COEFFICIENT_SCHEDULES, "svd")
PRECONDITIONERS = ("frobenius", "aol")


def check_preconditioner(precondition: str) -> None:
    """Raise ValueError unless ``precondition`` names one of ``PRECONDITIONERS``."""
    if precondition not in PRECONDITIONERS:
        raise ValueError(
            f"unknown Newton-Schulz preconditioner {precondition!r}; valid: {list(PRECONDITIONERS)}"
        )


def resolve_schedule(coefficients: str | Sequence[Coefficients]) -> CoefficientSchedule:
    """Turn a schedule name or an explicit list of (a, b, c) into a CoefficientSchedule."""
    if isinstance(coefficients, str):
        try:
            return COEFFICIENT_SCHEDULES[coefficients]
        except KeyError:
            raise ValueError(
                f"unknown Newton-Schulz coefficients {coefficients!r}; valid names: "
                f"{sorted(COEFFICIENT_SCHEDULES)}, or a list of (a, b, c) tuples"
            ) from None
    steps = tuple(tuple(float(x) for x in abc) for abc in coefficients)
    if not steps or any(len(abc) != 3 for abc in steps):
        raise ValueError(
            f"coefficients must be a non-empty list of (a, b, c) tuples, got {coefficients!r}"
        )
    return CoefficientSchedule(steps)  # type: ignore[arg-type]


def _as_batch(X: Tensor) -> Tensor:
    """View (..., m, n) as (B, m, n) so the batched matmul kernels apply."""
    return X.reshape(-1, X.shape[-2], X.shape[-1])


def _standard_iteration(
    X: Tensor, coeffs: list[Coefficients], gram: Tensor | None = None
) -> Tensor:
    """``A = X X^T; B = b A + c A A; X = a X + B X`` per step (X wide, (..., m, n)); ``gram``,
    when given, is ``X X^T`` already computed (by the AOL rescaling), used as the first A."""
    if X.ndim == 2:
        for a, b, c in coeffs:
            A = X @ X.mT if gram is None else gram.to(X.dtype)
            gram = None
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, B, X, beta=a)
        return X
    shape = X.shape
    X = _as_batch(X)
    gram = None if gram is None else _as_batch(gram)
    for a, b, c in coeffs:
        A = torch.bmm(X, X.mT) if gram is None else gram.to(X.dtype)
        gram = None
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    return X.reshape(shape)


def _gram_iteration(
    X: Tensor, coeffs: list[Coefficients], gram: Tensor | None = None
) -> Tensor:
    """The same iteration evaluated on the m x m side, restarted every ``GRAM_RESTART`` steps.

    Every iterate is ``X_k = Q_k X_0`` with ``Q_k`` a polynomial in ``R = X_0 X_0^T``, so
    ``X_k X_k^T = Q_k R Q_k`` and ``Q_{k+1} = (a I + b A + c A^2) Q_k``; X is multiplied only
    when a segment ends. Q's eigenvalues grow like x_k(s)/s for the small singular values s, so
    fp32 rounding in ``Q R Q`` grows with the number of steps in a segment (after 8 unrestarted
    steps the result is garbage); restarting (``X <- Q X``, new R) every 5 steps keeps it within
    ~1e-5 of the standard form on singular values spread over [1e-3, 1] (5 to 12 steps;
    tests/test_gram_ns.py asserts 1e-4), and the default 5-step iteration runs as one segment.
    On nearly rank-deficient real gradients (the tiny GPT's) the difference is larger: ~1e-3
    relative (Frobenius) for "jordan", ~1e-2 for "polar_express", against ~5e-5 with a restart
    every 3 steps; pass ``gram=False`` where that matters. (Dao AI Lab's gram-newton-schulz
    restarts the same way.) Cost per segment ``2 m^2 n + ~4 m^3`` per step: cheaper than
    ``2 m^2 n + m^3`` per step once n >= ~2 m. ``gram``, when given, is ``X X^T`` already
    computed (by the AOL rescaling), used as the first segment's R.
    """
    for start in range(0, len(coeffs), GRAM_RESTART):
        R = X @ X.mT if gram is None else gram.to(X.dtype)
        gram = None
        Q = None
        for a, b, c in coeffs[start : start + GRAM_RESTART]:
            A = R if Q is None else Q @ (R @ Q)
            P = (A @ A).mul_(c).add_(A, alpha=b)
            P.diagonal(dim1=-2, dim2=-1).add_(a)
            Q = P if Q is None else P @ Q
        X = Q @ X
    return X


def aol_rescale(X: Tensor, safety: float = 1.0, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """Turbo-Muon's AOL rescaling of a wide X (..., m, n): ``(diag(d) X / safety, its Gram
    matrix)`` with ``d_i = (sum_j |A_ij|)^(-1/2)``, ``A = X X^T``.

    ``||diag(d) X||_2 <= 1`` (Prach & Lampert 2022, Theorem 1, applied to ``X^T``): for any
    unit u, ``||X^T D u||^2 = sum_ij u_i d_i A_ij d_j u_j <= sum_ij |A_ij| d_i^2 u_i^2`` (by
    ``2|u_i u_j| d_i d_j <= d_i^2 u_i^2 + d_j^2 u_j^2``) ``= sum_i u_i^2 = 1``. Clamping a row
    sum at ``eps`` (a zero row) only shrinks its d_i, which keeps the bound. The returned Gram
    matrix ``diag(d) A diag(d) / safety^2`` saves the first step's product. X should be
    normalized first (any scale makes the same d X, but a sum near ``eps`` or outside bf16's
    range would not).
    """
    A = X @ X.mT
    d = A.abs().sum(dim=-1, keepdim=True).clamp_min(eps).rsqrt() / safety
    return X * d, A * d * d.mT


_compiled_iterations: dict = {}


def compiled(fn, mode: str | None = None):
    """``torch.compile`` of ``fn`` (static shapes; ``mode`` one of torch.compile's, e.g.
    "reduce-overhead": CUDA graphs), made once per function and mode: the Newton-Schulz
    iterations under ``compile=True`` (CUDA) and the compiled Muon step (``compile_step``)."""
    if (fn, mode) not in _compiled_iterations:
        _compiled_iterations[fn, mode] = torch.compile(fn, dynamic=False, mode=mode)
    return _compiled_iterations[fn, mode]


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    coefficients: str | Sequence[Coefficients] = "jordan",
    dtype: torch.dtype | str | None = "auto",
    eps: float = 1e-7,
    gram: bool | None = None,
    compile: bool = False,
    precondition: str = "frobenius",
) -> Tensor:
    """Approximate the polar factor of each matrix in ``G`` by quintic Newton-Schulz.

    Algorithm (Keller Jordan, muon.py; Bernstein & Newhouse 2024): cast to the compute dtype;
    work on the wide side (transpose when m > n, so the Gram matrix X X^T is the small one);
    normalize ``X <- X / (safety * ||X||_F + eps)`` so every singular value is at most 1;
    then for each step ``A = X X^T; B = b A + c A A; X = a X + B X``.

    Args:
        G: tensor of shape (..., m, n); leading dimensions are a batch of independent matrices.
        steps: number of iterations.
        coefficients: a name in ``COEFFICIENT_SCHEDULES`` or a list of (a, b, c) tuples.
        dtype: compute dtype; ``"auto"`` (or None) picks it from G's device and shape
            (:func:`auto_dtype`); ``"mixed"`` runs the first steps in fp32 and the last ones in
            bf16 (:func:`mixed_split`).
        eps: added to the norm so a zero matrix maps to zero, not NaN.
        gram: evaluate the same iteration on the small Gram side (``_gram_iteration``):
            True, False, or None (default) = where it is cheaper (aspect ratio >= 2) and the
            compute dtype is fp32/fp64. Its limits: it multiplies several polynomials of R
            before touching X, so rounding grows with the steps in a segment (hence the
            restart every 5 steps) and with the conditioning of G; in fp32 it matches the
            standard form to ~1e-5 at 5 steps (tested to 1e-4, also at 8 and 12 steps); in
            bf16 the error is of the order of the result, so auto never picks it there (nor
            for the bf16 steps of "mixed").
        compile: run the iteration through ``torch.compile`` (CUDA tensors only; ignored on
            CPU, where compilation costs more than it saves for these small loops).
        precondition: ``"frobenius"`` (the normalization above) or ``"aol"``: then Turbo-Muon's
            AOL rescaling (:func:`aol_rescale`) follows it, in the first phase's dtype, its Gram
            matrix reused by the first step (either form). The schedule is the same: each
            polynomial is designed for singular values in (0, 1] (Polar Express: its minimax
            bound holds for any spectrum in [1e-3, 1]), which AOL guarantees; dropping the
            first polynomial, as the Turbo-Muon reference code does for its own schedule,
            measured worse with both of muonkit's (docs/benchmarks.md, AOL).

    Returns:
        A tensor of G's shape and dtype.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix (..., m, n), got shape {tuple(G.shape)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    check_preconditioner(precondition)
    schedule = resolve_schedule(coefficients)
    dtype = resolve_dtype(dtype, G.device, G.shape, steps, gram)
    phases = [(dtype, steps, gram)]  # (compute dtype, steps, gram choice) in order
    if dtype == "mixed":
        fp32_steps, bf16_steps = mixed_split(steps)
        phases = [(torch.float32, fp32_steps, gram), (torch.bfloat16, bf16_steps, False)]
        phases = [p for p in phases if p[1]] or phases[:1]  # no bf16 rounding without steps
    X = G.to(phases[0][0])
    transposed = G.shape[-2] > G.shape[-1]
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * schedule.norm_safety + eps)
    first_gram = None
    if precondition == "aol":
        X, first_gram = aol_rescale(X, schedule.norm_safety, eps)
    coeffs = schedule.for_steps(steps)
    for phase_dtype, n, phase_gram in phases:
        X = X.to(phase_dtype)
        form = _gram_iteration if use_gram(X.shape, X.dtype, phase_gram) else _standard_iteration
        if compile and X.is_cuda:
            form = compiled(form)
        X, coeffs = form(X, coeffs[:n], first_gram), coeffs[n:]
        first_gram = None
    if transposed:
        X = X.mT
    return X.to(G.dtype)


def polar(G: Tensor) -> Tensor:
    """The exact polar factor U V^T of each matrix in ``G`` (shape (..., m, n)), by SVD.

    Computed in float64 and returned in G's dtype. Zero singular values contribute nothing
    (for a rank-deficient G this is the partial isometry on G's range). The reference every
    Newton-Schulz variant is tested against.
    """
    if G.ndim < 2:
        raise ValueError(f"polar needs a matrix (..., m, n), got shape {tuple(G.shape)}")
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    keep = (S > S.amax(dim=-1, keepdim=True) * 1e-12).to(U.dtype)
    return ((U * keep.unsqueeze(-2)) @ Vh).to(G.dtype)


def orthogonalize(
    G: Tensor,
    method: str | Sequence[Coefficients] = "jordan",
    steps: int = 5,
    dtype: torch.dtype | str | None = "auto",
    gram: bool | None = None,
    compile: bool = False,
    precondition: str = "frobenius",
) -> Tensor:
    """Orthogonalize ``G`` with a Newton-Schulz schedule, or exactly with ``method="svd"``."""
    if isinstance(method, str) and method == "svd":
        return polar(G)
    return newton_schulz(G, steps=steps, coefficients=method, dtype=dtype, gram=gram,
                         compile=compile, precondition=precondition)
