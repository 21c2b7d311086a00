import copy
import warnings

import pytest
import torch
from torch import nn

from muonkit import Muon, NonFiniteGradientError
from muonkit.variants import (
    HybridKroneckerMuon,
    KroneckerMuon,
    LoRAPreMuon,
    kronecker_shapes,
    nearest_kronecker,
)


def drive(params, opt, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()


def cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


# ------------------------------------------------------------------------------- LoRA-Pre


def test_lora_pre_state_is_out_plus_in_times_rank_and_stays_finite_with_zero_grads():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(40, 24))
    opt = LoRAPreMuon([w], rank=6)
    for t in range(100):
        w.grad = torch.zeros(40, 24) if t % 3 == 0 or 40 <= t < 70 else torch.randn(40, 24)
        opt.step()
    assert opt.state_bytes() == {0: (40 + 24) * 6 * 4}
    state = opt.state[w]
    assert state["lowrank_B"].shape == (40, 6) and state["lowrank_A"].shape == (6, 24)
    assert all(torch.isfinite(t).all() for t in (w, state["lowrank_B"], state["lowrank_A"]))
    # after 30 zero-gradient steps the momentum decayed but its subspace is alive
    A = state["lowrank_A"]
    torch.testing.assert_close(A @ A.T, torch.eye(6), atol=1e-5, rtol=0)


def test_lora_pre_zero_gradients_from_the_start_give_zero_updates():
    w = nn.Parameter(torch.randn(10, 8))
    w0 = w.detach().clone()
    opt = LoRAPreMuon([w], rank=4)
    for _ in range(5):
        w.grad = torch.zeros(10, 8)
        opt.step()
    assert torch.equal(w, w0)


def full_rank_lora_vs_dense(shape, form="ema", nesterov=False, mixing="momentum_form", steps=60):
    """LoRA-Pre at rank min(out, in) and dense Muon (same form, Nesterov and mixing) on the
    same random gradients: (LoRA weights, dense weights, LoRA's momentum, dense buffer)."""
    torch.manual_seed(0)
    w, v = nn.Parameter(torch.zeros(shape)), nn.Parameter(torch.zeros(shape))
    common = dict(
        lr=0.01,
        momentum=0.9,
        nesterov=nesterov,
        ns_coefficients="svd",
        momentum_form=form,
        mixing=mixing,
    )
    lora = LoRAPreMuon([w], rank=min(shape), **common)
    dense = Muon([v], **common)
    grads = [[torch.randn(shape)] for _ in range(steps)]
    drive([w], lora, grads)
    drive([v], dense, grads)
    m = lora.state[w]["lowrank_B"] @ lora.state[w]["lowrank_A"]
    return w.detach(), v.detach(), m, dense.state[v]["momentum_buffer"]


def rel(a, b):
    return float((a - b).norm() / b.norm())


FORMS_AND_NESTEROV = pytest.mark.parametrize(
    "form, nesterov", [("standard", True), ("standard", False), ("ema", True), ("ema", False)]
)


@FORMS_AND_NESTEROV
def test_lora_pre_at_full_rank_tracks_dense_muon_square(form, nesterov):
    # Square, r = n: both factor steps are exact Newton steps on the product, so the product
    # is dense Muon's buffer of either form (measured 0.07% off: the ridge and fp32 rounding)
    # and the update is dense Muon's (0.2% off with Nesterov, 1.9% without after 60 steps).
    w, v, m, buf = full_rank_lora_vs_dense((16, 16), form, nesterov)
    assert rel(m, buf) < 0.005
    assert rel(w, v) < (0.005 if nesterov else 0.03)


@pytest.mark.parametrize("form", ["standard", "ema"])
def test_gradient_heavy_mixing_is_what_made_lora_pre_drift(form):
    # Algorithm 2's orth(g + mu m) (m the EMA) is another update than Muon's: at full rank
    # LoRA-Pre with it ends ~58% from dense Muon, and dense Muon with the same mixing is
    # LoRA-Pre's twin again.
    w, v, _, _ = full_rank_lora_vs_dense((16, 16), form, True)
    w_heavy, v_heavy, _, _ = full_rank_lora_vs_dense((16, 16), form, True, "gradient_heavy")
    assert rel(w, v) < 0.005
    assert rel(w_heavy, v) > 0.3  # LoRA-Pre as printed vs dense Muon
    assert rel(w_heavy, v_heavy) < 0.005  # vs dense Muon with the same mixing


@pytest.mark.parametrize("shape", [(24, 16), (16, 24)])
@FORMS_AND_NESTEROV
def test_lora_pre_at_full_rank_tracks_dense_muon_rectangular(shape, form, nesterov):
    # r = min(out, in) < max(out, in): the second factor step only sees the projection of g
    # on the first factor's span, so the product is a close but not exact buffer (measured
    # 0.26-0.28 relative error, weights 0.23-0.38 off after 60 random steps): a limit of the
    # algorithm, not of the mixing.
    w, v, m, buf = full_rank_lora_vs_dense(shape, form, nesterov)
    assert rel(m, buf) < 0.35 and cosine(m, buf) > 0.9
    assert rel(w, v) < (0.35 if nesterov else 0.45) and cosine(w, v) > 0.9


def test_lora_pre_rank_is_clamped_with_a_warning():
    w = nn.Parameter(torch.randn(6, 4))
    with pytest.warns(UserWarning, match="rank 16 > min"):
        opt = LoRAPreMuon([w], rank=16)
    w.grad = torch.randn(6, 4)
    opt.step()
    assert opt.state[w]["lowrank_A"].shape == (4, 4)


# ------------------------------------------------------------------------------ Kronecker


def test_kronecker_shapes_near_square_roots():
    assert kronecker_shapes(1024, 768) == ((32, 24), (32, 32))
    assert kronecker_shapes(32, 30) == ((4, 5), (8, 6))


def test_nearest_kronecker_recovers_an_exact_product():
    A, B = torch.randn(3, 4), torch.randn(5, 2)
    F1, F2 = nearest_kronecker(torch.kron(A, B), torch.zeros(3, 4), torch.zeros(5, 2))
    torch.testing.assert_close(torch.kron(F1, F2), torch.kron(A, B), atol=1e-5, rtol=1e-5)


def test_nearest_kronecker_is_the_best_rank_one_of_the_rearrangement():
    torch.manual_seed(1)
    T = torch.randn(6, 8)
    F1, F2 = nearest_kronecker(T, torch.zeros(2, 2), torch.zeros(3, 4), power_iters=100)
    R = T.reshape(2, 3, 2, 4).permute(0, 2, 1, 3).reshape(4, 12)
    best = torch.linalg.svdvals(R)
    err = (T - torch.kron(F1, F2)).norm() ** 2
    torch.testing.assert_close(err, (best[1:] ** 2).sum(), atol=1e-4, rtol=1e-4)


def kronecker_vs_dense(grads, form="standard", nesterov=True):
    w, v = nn.Parameter(torch.zeros(32, 30)), nn.Parameter(torch.zeros(32, 30))
    kw = dict(lr=0.1, momentum=0.9, nesterov=nesterov, momentum_form=form)
    kron, dense = KroneckerMuon([w], **kw), Muon([v], **kw)
    drive([w], kron, grads)
    drive([v], dense, grads)
    return w.detach(), v.detach()


@FORMS_AND_NESTEROV
def test_kronecker_equals_dense_muon_when_gradients_are_multiples_of_one_product(form, nesterov):
    torch.manual_seed(0)
    A, B = torch.randn(4, 5), torch.randn(8, 6)
    grads = [[torch.kron(A, B) * (1 + 0.3 * t)] for t in range(6)]
    w, v = kronecker_vs_dense(grads, form, nesterov)
    torch.testing.assert_close(w, v, atol=1e-5, rtol=0)


def test_kronecker_drifts_from_dense_muon_when_the_product_changes():
    # every gradient a Kronecker product, but a different one each step: the momentum is a
    # sum of products, the fit drops part of it (measured ~0.56 relative distance)
    torch.manual_seed(0)
    grads = [[torch.kron(torch.randn(4, 5), torch.randn(8, 6))] for _ in range(6)]
    w, v = kronecker_vs_dense(grads)
    assert rel(w, v) > 0.2


def test_kronecker_state_is_tiny_for_a_large_matrix():
    w = nn.Parameter(torch.randn(1024, 768))
    opt = KroneckerMuon([w])
    w.grad = torch.randn(1024, 768)
    opt.step()
    dense_bytes = 1024 * 768 * 4
    assert opt.state_bytes()[0] * 50 <= dense_bytes
    assert opt.state_bytes()[0] == (32 * 24 + 32 * 32) * 4


def test_prime_dims_work_and_useless_factorizations_fall_back_to_dense():
    a, b = nn.Parameter(torch.randn(97, 64)), nn.Parameter(torch.randn(97, 89))
    with pytest.warns(UserWarning, match="97 x 89"):
        opt = KroneckerMuon([a, b])
    assert opt.dense_fallback == [(97, 89)]
    a.grad, b.grad = torch.randn(97, 64), torch.randn(97, 89)
    opt.step()
    assert set(opt.state[a]) == {"kron_f1", "kron_f2"} and opt.state[a]["kron_f1"].shape[0] == 1
    assert set(opt.state[b]) == {"momentum_buffer"}
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


def test_hybrid_kronecker_keeps_the_output_layer_dense():
    model = nn.Sequential(nn.Linear(64, 48, bias=False), nn.ReLU(), nn.Linear(48, 10, bias=False))
    opt = HybridKroneckerMuon(model, lr=0.02)
    assert opt.dense_params == [1]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert set(opt.state[model[0].weight]) == {"kron_f1", "kron_f2"}
    assert set(opt.state[model[2].weight]) == {"momentum_buffer"}
    sizes = opt.state_bytes()
    assert sizes[1] == 48 * 10 * 4 and sizes[0] < 64 * 48 * 4 / 10


# ------------------------------------------------------------------------------ common


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: LoRAPreMuon(ps, rank=4, lr=0.05),
        lambda ps: KroneckerMuon(ps, lr=0.05),
    ],
)
def test_state_dict_round_trip_resumes_bit_identically(make):
    torch.manual_seed(0)
    start = [nn.Parameter(torch.randn(24, 20)), nn.Parameter(torch.randn(16, 16))]
    grads = [[torch.randn(24, 20), torch.randn(16, 16)] for _ in range(6)]
    straight = copy.deepcopy(start)
    torch.manual_seed(1)
    opt = make(straight)
    drive(straight, opt, grads)

    half = copy.deepcopy(start)
    torch.manual_seed(1)
    opt1 = make(half)
    drive(half, opt1, grads[:3])
    saved = copy.deepcopy(opt1.state_dict())
    resumed = [nn.Parameter(p.detach().clone()) for p in half]
    opt2 = make(resumed)
    opt2.load_state_dict(saved)
    drive(resumed, opt2, grads[3:])
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_state_bytes_match_the_state_tensors():
    w = nn.Parameter(torch.randn(12, 10))
    opt = LoRAPreMuon([w], rank=3)
    w.grad = torch.randn(12, 10)
    opt.step()
    expected = sum(t.numel() * t.element_size() for t in opt.state[w].values())
    assert opt.state_bytes() == {0: expected}


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: LoRAPreMuon(p, rank=0), "rank"),
        (lambda p: LoRAPreMuon(p, gamma1=1.5), "gamma1"),
        (lambda p: LoRAPreMuon(p, momentum=1.0), "momentum"),
        (lambda p: KroneckerMuon(p, power_iters=0), "power_iters"),
        (lambda p: KroneckerMuon([nn.Parameter(torch.randn(5))]), "MuonWithAuxAdam"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make([nn.Parameter(torch.randn(6, 6))])


def test_nonfinite_gradient_is_refused_by_the_variants():
    w = nn.Parameter(torch.randn(8, 8))
    opt = KroneckerMuon([w])
    w.grad = torch.full((8, 8), float("nan"))
    with pytest.raises(NonFiniteGradientError):
        opt.step()
    assert not opt.state


def test_hybrid_rejects_unknown_dense_modules():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="not modules"):
            HybridKroneckerMuon(nn.Sequential(nn.Linear(4, 4, bias=False)), dense_modules=["x"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lora_pre_steps_half_precision_params_with_fp32_solves(dtype):
    torch.manual_seed(0)
    start, grads = torch.randn(12, 8), [torch.randn(12, 8) for _ in range(3)]
    low, ref = nn.Parameter(start.to(dtype)), nn.Parameter(start.to(dtype).float())
    opt_low, opt_ref = LoRAPreMuon([low], rank=4, lr=0.05), LoRAPreMuon([ref], rank=4, lr=0.05)
    for g in grads:
        low.grad, ref.grad = g.to(dtype), g.to(dtype).float()
        opt_low.step()
        opt_ref.step()
    state = opt_low.state[low]
    assert state["lowrank_B"].dtype == state["lowrank_A"].dtype == dtype  # documented
    # the same steps as on fp32 parameters, up to the rounding of the stored values
    torch.testing.assert_close(low.float(), ref.detach(), atol=0.02, rtol=0)
