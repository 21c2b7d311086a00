"""Turbo-Muon's AOL preconditioning of Newton-Schulz (``ns_precondition="aol"``)."""

import pytest
import torch

from muonkit import Muon
from muonkit.orthogonalize import aol_rescale, newton_schulz, polar

# the quintic Newton-Schulz polynomial (15 s - 10 s^3 + 3 s^5) / 8: p(1) = 1, p'(1) = 0, so
# it converges to the exact polar factor of its input (slowly: many steps, fp64)
CONVERGENT = [(15 / 8, -10 / 8, 3 / 8)]


def spectrum(m, n, low, seed=0, row_scales=None):
    """An (m, n) float64 matrix with singular values log-spaced on [10^low, 1], its rows then
    scaled by ``row_scales`` (uneven row norms, as real gradients have)."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    G = (U * torch.logspace(low, 0, k, dtype=torch.float64)) @ V.T
    return G if row_scales is None else G * row_scales[:, None]


def hand_aol(G):
    """diag(d) G on the wide side, d_i = (sum_j |G G^T|_ij)^(-1/2), in float64 (the paper's
    formula, written out)."""
    wide = G if G.shape[-2] <= G.shape[-1] else G.mT
    A = wide @ wide.mT
    d = A.abs().sum(-1) ** -0.5
    scaled = d.unsqueeze(-1) * wide
    return scaled if wide is G else scaled.mT


MATRICES = {
    "gaussian": lambda: torch.randn(40, 120, generator=torch.Generator().manual_seed(1),
                                    dtype=torch.float64),
    "ill-conditioned": lambda: spectrum(48, 160, -6),
    "uneven rows": lambda: spectrum(32, 96, -3, row_scales=torch.logspace(-3, 2, 32,
                                                                         dtype=torch.float64)),
    "tall": lambda: spectrum(150, 30, -4).contiguous(),
    "rank-deficient": lambda: spectrum(24, 64, -2)[:, :8] @ torch.randn(
        8, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64),
    "batched": lambda: torch.stack([spectrum(16, 40, -5, seed=s) for s in range(3)]),
}


@pytest.mark.parametrize("name", sorted(MATRICES))
def test_aol_scaling_keeps_the_spectral_norm_at_most_one(name):
    G = MATRICES[name]().float()
    X = G if G.shape[-2] <= G.shape[-1] else G.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True)
    scaled, gram = aol_rescale(X)
    assert torch.linalg.matrix_norm(scaled.double(), ord=2).max() <= 1 + 1e-5
    torch.testing.assert_close(gram, scaled @ scaled.mT, atol=1e-6, rtol=1e-5)
    # it is the paper's formula (X was normalized: the scaling is scale-free)
    torch.testing.assert_close(scaled.double(), hand_aol(X.double()), atol=1e-6, rtol=1e-5)


def test_aol_scaling_is_exact_on_orthogonal_rows():
    # rows orthogonal, norms 1e-3..1e2: AOL maps them to orthonormal rows (the polar factor)
    g = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(64, 16, generator=g, dtype=torch.float64))
    G = Q.T * torch.logspace(-3, 2, 16, dtype=torch.float64)[:, None]
    scaled, _ = aol_rescale(G)
    torch.testing.assert_close(scaled, Q.T, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", sorted(set(MATRICES) - {"rank-deficient"}))
def test_aol_iteration_converges_to_the_polar_factor_of_the_rescaled_input(name):
    G = MATRICES[name]()
    out = newton_schulz(G, 60, CONVERGENT, dtype=torch.float64, precondition="aol")
    torch.testing.assert_close(out, polar(hand_aol(G)), atol=1e-7, rtol=0)


def test_aol_output_approximates_the_svd_polar_factor():
    # Gaussian rows are nearly orthogonal, so polar(D G) is close to polar(G): Polar Express
    # after AOL is within its own schedule's error of the SVD polar factor
    G = MATRICES["gaussian"]().float()
    exact = polar(G.double())
    for steps, bound in ((5, 0.1), (8, 0.055)):
        out = newton_schulz(G, steps, "polar_express", dtype=torch.float32, precondition="aol")
        plain = newton_schulz(G, steps, "polar_express", dtype=torch.float32)
        err = (out.double() - exact).norm() / exact.norm()
        assert err <= bound
        assert err <= 1.1 * (plain.double() - exact).norm() / exact.norm()
    s = torch.linalg.svdvals(out.double())
    assert 0.9 <= s.min() and s.max() <= 1.1


@pytest.mark.parametrize("coefficients", ["jordan", "polar_express"])
def test_aol_composes_with_the_gram_form(coefficients):
    # singular values on [0.1, 1], as tests/test_gram_ns.py (on [1e-3, 1] the Gram form's own
    # fp32 rounding reaches ~1e-3 with either scaling: docs/benchmarks.md)
    G = spectrum(32, 128, -1).float()
    for steps in (3, 5, 8):
        standard = newton_schulz(G, steps, coefficients, torch.float32, gram=False,
                                 precondition="aol")
        gram = newton_schulz(G, steps, coefficients, torch.float32, gram=True,
                             precondition="aol")
        torch.testing.assert_close(gram, standard, atol=1e-4, rtol=0)


@pytest.mark.parametrize("coefficients", ["jordan", "polar_express"])
def test_aol_in_every_precision_stays_near_fp32(coefficients):
    G = spectrum(32, 96, -2).float()
    fp32 = newton_schulz(G, 5, coefficients, torch.float32, gram=False, precondition="aol")
    for dtype, tol in (("mixed", 0.05), (torch.bfloat16, 0.1), (torch.float64, 1e-5)):
        out = newton_schulz(G, 5, coefficients, dtype, gram=False, precondition="aol")
        assert out.dtype == G.dtype
        assert (out - fp32).norm() / fp32.norm() <= tol, dtype


def test_aol_changes_the_result_and_maps_zero_to_zero():
    G = spectrum(16, 48, -3).float()
    assert not torch.allclose(newton_schulz(G, precondition="aol"), newton_schulz(G))
    zero = newton_schulz(torch.zeros(8, 24), precondition="aol")
    assert torch.equal(zero, torch.zeros(8, 24))
    with pytest.raises(ValueError, match="preconditioner 'turbo'"):
        newton_schulz(G, precondition="turbo")


def test_muon_step_uses_aol():
    # the optimizer's step is the functional AOL iteration (muon.py's LR rule: (16, 48) -> 1)
    g = torch.Generator().manual_seed(5)
    w = torch.nn.Parameter(torch.randn(16, 48, generator=g))
    grad = torch.randn(16, 48, generator=g)
    want = w.detach() - 0.1 * newton_schulz((1 + 0.95) * grad, precondition="aol")
    opt = Muon([w], lr=0.1, ns_precondition="aol")
    w.grad = grad.clone()
    opt.step()
    torch.testing.assert_close(w.detach(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("gram", [False, True])
def test_aol_runs_no_extra_matrix_product(gram):
    # its Gram matrix is the first step's: the FLOP model (reports, auto precision) holds
    from torch.utils.flop_counter import FlopCounterMode

    from muonkit.precision import newton_schulz_flops

    G = torch.randn(3, 24, 72)
    with FlopCounterMode(display=False) as counter:
        newton_schulz(G, 5, dtype=torch.float32, gram=gram, precondition="aol")
    assert counter.get_total_flops() == newton_schulz_flops(G.shape, 5, gram)
