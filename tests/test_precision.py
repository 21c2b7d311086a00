"""ns_dtype="auto" and mixed-precision Newton-Schulz (issue 14).

The CPU detection is replaced by a test double (tests/conftest.py: ``no_native_bf16`` for every
test, ``native_bf16`` to force the other case), so both machine kinds are covered anywhere.
"""

import pytest
import torch

from muonkit.orthogonalize import (
    COEFFICIENT_SCHEDULES,
    _standard_iteration,
    compiled,
    newton_schulz,
    polar,
)
from muonkit.precision import (
    auto_dtype,
    describe,
    mixed_flops,
    mixed_split,
    newton_schulz_flops,
    resolve_dtype,
)


def spread(m, n, low=1e-3, seed=0):
    """An m x n matrix (m <= n) with singular values log-spaced on [low, 1]."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))
    return ((U * torch.logspace(torch.log10(torch.tensor(low)), 0, m)) @ V.T).float()


def keller_steps(X, coeffs, dtype):
    """Keller Jordan's loop (muon.py) on an already normalized wide X, in ``dtype``."""
    X = X.to(dtype)
    for a, b, c in coeffs:
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X


def one_minus_cos(out, G):
    exact = polar(G.double())
    return 1 - float((out.double() * exact).sum() / (out.double().norm() * exact.norm()))


# --- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(128, 128), (384, 128), (128, 512)])
def test_auto_picks_bf16_on_cuda_for_every_shape(shape):
    assert auto_dtype("cuda", shape, 5, native_bf16=False) == torch.bfloat16
    assert auto_dtype("cuda:1", shape, 5, native_bf16=True) == torch.bfloat16


@pytest.mark.parametrize("shape", [(128, 128), (384, 128), (128, 512)])
def test_auto_picks_fp32_on_a_cpu_without_native_bf16(shape):
    assert auto_dtype("cpu", shape, 5, native_bf16=False) == torch.float32
    assert auto_dtype("cpu", shape, 5) == torch.float32  # the conftest double: no native bf16


def test_auto_on_an_amx_cpu_runs_every_shape_mixed(native_bf16):
    # bf16 at 3.5x fp32 (AMX-BF16), m = 128, 5 steps: 4:1 mixed 37.7M + 4 * 37.7M / 3.5
    # = 80.8M < fp32 Gram 104.9M, so the 4:1 shapes that AVX512-BF16 keeps in fp32 go mixed
    for shape in [(128, 128), (384, 128), (128, 512), (512, 128)]:
        assert auto_dtype("cpu", shape, bf16_speedup=3.5) == "mixed"
    assert auto_dtype("cpu", (128, 512), bf16_speedup=2.0) == torch.float32
    assert auto_dtype("cpu", (128, 512), native_bf16=False, bf16_speedup=3.5) == torch.float32


def test_auto_reads_the_speedup_from_the_cpu_flags(native_bf16, monkeypatch):
    monkeypatch.setattr("muonkit.hardware.cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert auto_dtype("cpu", (128, 512)) == "mixed"
    monkeypatch.setattr("muonkit.hardware.cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert auto_dtype("cpu", (128, 512)) == torch.float32


def test_auto_on_a_native_bf16_cpu_picks_the_cheaper_of_mixed_and_fp32_gram(native_bf16):
    # cost with a bf16 product at half an fp32 one (hand-computed for m = 128, 5 steps):
    # square: mixed 12.6M + 4 * 12.6M / 2 = 37.7M < fp32 63M;
    # 3:1: mixed 29.4M + 58.7M = 88.1M < fp32 Gram 96.5M; 4:1: 113M > fp32 Gram 104.9M
    assert auto_dtype("cpu", (128, 128)) == "mixed"
    assert auto_dtype("cpu", (384, 128)) == "mixed"
    assert auto_dtype("cpu", (128, 512)) == torch.float32
    assert auto_dtype("cpu", (128, 512), gram=False) == "mixed"  # no Gram form: mixed wins
    assert auto_dtype("mps", (128, 128)) == torch.float32


def test_explicit_dtypes_pass_through_and_bad_ones_raise():
    for dtype in (torch.float32, torch.bfloat16, torch.float64, "mixed"):
        assert resolve_dtype(dtype, "cpu") == dtype
    assert resolve_dtype(None, "cpu") == resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match="ns_dtype"):
        resolve_dtype("fp32", "cpu")


def test_mixed_split_switch_point():
    assert [mixed_split(s) for s in (0, 1, 2, 5, 8)] == [(0, 0), (1, 0), (1, 1), (1, 4), (4, 4)]


def test_describe_says_what_runs_and_why(native_bf16):
    assert describe(torch.bfloat16, "cpu", [(8, 8)]) == "bf16 (explicit)"
    assert describe("auto", "cuda", [(8, 8)]) == "auto: bf16 (cuda)"
    text = describe("auto", "cpu", [(128, 128), (384, 128), (128, 512)])
    assert text.startswith("auto: mixed for 2 shapes, fp32 for 1 shapes (cpu ")
    assert text.endswith(", native bf16, 2x fp32)")


# --- the mixed iteration ----------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 5, 8])
def test_mixed_is_fp32_steps_then_bf16_steps(steps):
    G = spread(24, 40, low=0.05)
    X = G / (G.norm() + 1e-7)
    coeffs = COEFFICIENT_SCHEDULES["jordan"].for_steps(steps)
    k, _ = mixed_split(steps)
    expected = keller_steps(keller_steps(X, coeffs[:k], torch.float32), coeffs[k:], torch.bfloat16)
    out = newton_schulz(G, steps, dtype="mixed", gram=False)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected.float(), atol=2e-2, rtol=0)


def test_native_bf16_auto_runs_mixed_and_fp32_where_cheaper(native_bf16):
    square, wide = spread(32, 32, 0.05), spread(32, 128, 0.05)
    assert torch.equal(newton_schulz(square), newton_schulz(square, dtype="mixed"))
    assert torch.equal(newton_schulz(wide), newton_schulz(wide, dtype=torch.float32))


def test_fp32_first_keeps_fp32_accuracy_where_bf16_first_loses_it():
    # 8 steps on singular values spread over [1e-3, 1]: rounding G to bf16 loses the small
    # directions and later steps amplify the noise; fp32 first steps keep the fp32 error
    G = spread(64, 256)
    fp32 = one_minus_cos(newton_schulz(G, 8, dtype=torch.float32), G)
    mixed = one_minus_cos(newton_schulz(G, 8, dtype="mixed"), G)
    bf16 = one_minus_cos(newton_schulz(G, 8, dtype=torch.bfloat16), G)
    assert mixed <= 1.1 * fp32
    assert bf16 > 1.5 * fp32


@pytest.mark.parametrize("shape", [(24, 96), (40, 40), (2, 64, 24)])
def test_mixed_flop_model_matches_the_products_actually_run(shape):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        newton_schulz(torch.randn(*shape), 5, dtype="mixed")
    assert counter.get_total_flops() == sum(mixed_flops(shape, 5))
    assert sum(mixed_flops(shape, 5)) <= newton_schulz_flops(shape, 5)


def testcompiled_bf16_iteration_matches_eager():
    # what ns_compile runs on CUDA under auto (bf16, standard form), checked on CPU
    X = spread(24, 64, 0.05).to(torch.bfloat16)
    X = X / X.float().norm().to(torch.bfloat16)
    coeffs = COEFFICIENT_SCHEDULES["jordan"].for_steps(5)
    out = compiled(_standard_iteration)(X, coeffs).float()
    torch.testing.assert_close(out, _standard_iteration(X, coeffs).float(), atol=3e-2, rtol=0)


def test_mixed_without_bf16_steps_is_fp32_exactly():
    G = spread(16, 48, 0.05)
    assert torch.equal(newton_schulz(G, 1, dtype="mixed"), newton_schulz(G, 1, dtype=torch.float32))


# --- what the optimizer shows and runs ---------------------------------------------------------


def test_muon_reports_and_runs_the_auto_choice(native_bf16):
    from muonkit import Muon

    g = torch.Generator().manual_seed(0)
    shapes = [(32, 32), (32, 128)]
    grads = [torch.randn(s, generator=g) for s in shapes]

    def one_step(**kw):
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        opt = Muon(params, lr=1.0, **kw)
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        opt.step()
        return opt, [p.detach().clone() for p in params]

    opt, auto = one_step()
    assert opt.ns_precision()[0].startswith("auto: mixed for 1 shapes, fp32 for 1 shapes (cpu")
    assert "Newton-Schulz precision, group 0: auto: mixed" in repr(opt)
    _, mixed = one_step(ns_dtype="mixed")
    _, fp32 = one_step(ns_dtype=torch.float32)
    assert torch.equal(auto[0], mixed[0]) and not torch.equal(auto[0], fp32[0])  # square: mixed
    assert torch.equal(auto[1], fp32[1])  # 4:1: fp32 on the Gram side


def test_ns_precision_without_native_bf16_and_for_svd():
    from muonkit import Muon

    params = [torch.nn.Parameter(torch.zeros(8, 8))]
    assert Muon(params).ns_precision()[0].startswith("auto: fp32 (cpu ")
    assert Muon(params, ns_dtype=torch.bfloat16).ns_precision() == {0: "bf16 (explicit)"}
    assert Muon(params, ns_coefficients="svd").ns_precision()[0].startswith("svd")
