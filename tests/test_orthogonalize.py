import pytest
import torch

from muonkit.orthogonalize import (
    COEFFICIENT_SCHEDULES,
    newton_schulz,
    orthogonalize,
    polar,
)

# The classical quintic Newton-Schulz polynomial (Higham, "Functions of Matrices", 2008):
# p(s) = (15 s - 10 s^3 + 3 s^5) / 8 converges to 1 for every s in (0, sqrt(7/3)).
CLASSICAL = [(1.875, -1.25, 0.375)]


def with_singular_values(m: int, n: int, sigmas: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return (U * sigmas.double()) @ V.T


def singular_values(X: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(X.double())


def test_polar_is_the_orthogonal_factor():
    G = torch.randn(7, 5, dtype=torch.float64)
    Q = polar(G)
    torch.testing.assert_close(Q.T @ Q, torch.eye(5, dtype=torch.float64))
    # G = Q H with H = Q^T G symmetric positive definite
    H = Q.T @ G
    torch.testing.assert_close(H, H.T)
    assert torch.linalg.eigvalsh(H).min() > 0


@pytest.mark.parametrize("shape", [(32, 32), (24, 40), (40, 24)])
def test_convergent_schedule_matches_svd_polar(shape):
    G = with_singular_values(*shape, torch.linspace(0.3, 1.0, min(shape))).float()
    out = newton_schulz(G, steps=25, coefficients=CLASSICAL)
    torch.testing.assert_close(out, polar(G), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["jordan", "polar_express"])
@pytest.mark.parametrize("shape", [(48, 48), (32, 64), (64, 32)])
def test_schedules_keep_singular_vectors_of_the_polar_factor(name, shape):
    G = with_singular_values(*shape, torch.linspace(0.2, 1.0, min(shape))).float()
    out = newton_schulz(G, steps=5, coefficients=name)
    # NS only reshapes singular values: its output's own polar factor is G's polar factor.
    torch.testing.assert_close(polar(out), polar(G), atol=2e-4, rtol=0)


@pytest.mark.parametrize("name, band", [("polar_express", (0.7, 1.2)), ("jordan", (0.6, 1.25))])
def test_singular_values_land_in_the_schedule_band(name, band):
    sig = torch.logspace(-2, 0, 64)  # spread over [1e-2, 1]
    G = with_singular_values(64, 96, sig).float()
    s = singular_values(newton_schulz(G, steps=5, coefficients=name))
    assert band[0] <= s.min() and s.max() <= band[1], (s.min().item(), s.max().item())


def test_polar_express_beats_jordan_on_ill_conditioned_input():
    sig = torch.logspace(-3, 0, 64)
    G = with_singular_values(64, 64, sig).float()
    err = {
        name: (singular_values(newton_schulz(G, 5, name)) - 1).abs().max().item()
        for name in ("jordan", "polar_express")
    }
    assert err["polar_express"] < err["jordan"]


def test_batched_equals_looped_and_keeps_shape_and_dtype():
    G = torch.randn(3, 2, 20, 12)
    out = newton_schulz(G)
    assert out.shape == G.shape and out.dtype == G.dtype
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(out[i, j], newton_schulz(G[i, j]), atol=1e-6, rtol=0)


def test_tall_input_is_transposed_not_changed_in_meaning():
    G = torch.randn(50, 10)
    torch.testing.assert_close(newton_schulz(G), newton_schulz(G.T).T, atol=1e-6, rtol=0)


def test_zero_matrix_maps_to_zero():
    out = newton_schulz(torch.zeros(8, 6))
    assert torch.equal(out, torch.zeros(8, 6))


def test_explicit_bf16_rounds():
    G = torch.randn(16, 8)
    out_bf16 = newton_schulz(G, dtype=torch.bfloat16)
    assert out_bf16.dtype == torch.float32
    # bf16 has ~3 significant digits: close to the fp32 result, but not equal.
    assert 0 < (out_bf16 - newton_schulz(G)).abs().max() < 0.05


def test_explicit_coefficients_and_repetition_of_last_step():
    G = torch.randn(10, 10)
    jordan = COEFFICIENT_SCHEDULES["jordan"].steps
    torch.testing.assert_close(newton_schulz(G, 4, list(jordan)), newton_schulz(G, 4, "jordan"))
    pe = COEFFICIENT_SCHEDULES["polar_express"]
    assert pe.for_steps(7)[5:] == [pe.steps[-1]] * 2


def test_orthogonalize_svd_method_is_exact():
    G = torch.randn(12, 9)
    torch.testing.assert_close(orthogonalize(G, "svd"), polar(G))


@pytest.mark.parametrize("bad", ["quintic", [(1.0, 2.0)], []])
def test_unknown_coefficients_raise(bad):
    with pytest.raises(ValueError, match="coefficients"):
        newton_schulz(torch.randn(4, 4), coefficients=bad)


def test_vector_input_raises():
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.randn(4))
