"""Gram-side Newton-Schulz evaluates the same iteration as the standard form."""

import pytest
import torch

from muonkit.orthogonalize import (
    COEFFICIENT_SCHEDULES,
    _gram_iteration,
    _standard_iteration,
    compiled,
    newton_schulz,
)
from muonkit.precision import newton_schulz_flops, use_gram


def well_conditioned(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    m, n = shape[-2:]
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(*shape[:-2], m, k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(*shape[:-2], n, k, generator=g))
    return (U * torch.linspace(0.1, 1.0, k)) @ V.mT


@pytest.mark.parametrize("steps", [5, 8])
@pytest.mark.parametrize("name", sorted(COEFFICIENT_SCHEDULES))
@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (3, 24, 64), (40, 40)])
def test_gram_equals_standard_in_fp32(name, shape, steps):
    G = well_conditioned(*shape)
    standard = newton_schulz(G, steps, coefficients=name, gram=False)
    gram = newton_schulz(G, steps, coefficients=name, gram=True)
    torch.testing.assert_close(gram, standard, atol=1e-4, rtol=0)


def test_gram_stays_accurate_on_ill_conditioned_input_over_many_steps():
    # without restarts the Gram form diverges here after ~8 steps (sigma spread 1e-3..1)
    g = torch.Generator().manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(256, 256, generator=g))
    V, _ = torch.linalg.qr(torch.randn(1024, 256, generator=g))
    G = (U * torch.logspace(-3, 0, 256)) @ V.T
    for steps in (8, 12):
        standard = newton_schulz(G, steps, gram=False)
        gram = newton_schulz(G, steps, gram=True)
        torch.testing.assert_close(gram, standard, atol=1e-4, rtol=0)


def test_auto_choice():
    assert use_gram((128, 512), torch.float32, None)
    assert use_gram((512, 128), torch.float32, None)
    assert not use_gram((128, 128), torch.float32, None)  # square: the standard form is cheaper
    assert not use_gram((128, 512), torch.bfloat16, None)  # bf16: rounding too large
    assert use_gram((128, 128), torch.bfloat16, True)
    assert not use_gram((8, 64), torch.float32, False)


@pytest.mark.parametrize("name, band", [("polar_express", (0.7, 1.2)), ("jordan", (0.6, 1.25))])
def test_gram_output_singular_values_lie_in_the_schedule_band(name, band):
    g = torch.Generator().manual_seed(3)
    U, _ = torch.linalg.qr(torch.randn(48, 48, generator=g))
    V, _ = torch.linalg.qr(torch.randn(160, 48, generator=g))
    G = (U * torch.logspace(-2, 0, 48)) @ V.T
    s = torch.linalg.svdvals(newton_schulz(G, coefficients=name, gram=True).double())
    assert band[0] <= s.min() and s.max() <= band[1]


@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize("steps", [0, 1, 5, 7, 12])
@pytest.mark.parametrize("shape", [(24, 64), (64, 24), (3, 16, 40), (20, 20)])
def test_flop_model_matches_the_products_actually_run(shape, steps, gram):
    from torch.utils.flop_counter import FlopCounterMode

    G = torch.randn(*shape)
    with FlopCounterMode(display=False) as counter:
        newton_schulz(G, steps, gram=gram)
    assert counter.get_total_flops() == newton_schulz_flops(shape, steps, gram)


def test_gram_form_is_cheaper_from_the_auto_aspect_ratio_on():
    m = 128
    steps = 5
    cheaper = [
        newton_schulz_flops((m, n), steps, True) < newton_schulz_flops((m, n), steps, False)
        for n in (m, 2 * m, 4 * m)
    ]
    assert cheaper == [False, True, True]


@pytest.mark.parametrize("iteration", [_standard_iteration, _gram_iteration])
def testcompiled_iteration_matches_eager(iteration):
    # ns_compile runs only on CUDA; this checks on CPU that what torch.compile makes of each
    # iteration (the same function object the CUDA path compiles) computes the same thing
    X = well_conditioned(2, 24, 64)
    X = X / X.norm(dim=(-2, -1), keepdim=True)
    coeffs = COEFFICIENT_SCHEDULES["polar_express"].for_steps(5)
    torch.testing.assert_close(
        compiled(iteration)(X, coeffs), iteration(X, coeffs), atol=1e-5, rtol=0
    )
