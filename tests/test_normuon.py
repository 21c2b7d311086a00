"""NorMuon against direct transcriptions of the paper's Algorithm 1 and the authors' code."""

import copy

import pytest
import torch
from torch import nn

from muonkit import hybrid_param_groups
from muonkit.muon import NonFiniteGradientError
from muonkit.variants import NorMuon, NorMuonWithAuxAdam


def polar(u):
    """The exact polar factor U V^T (SVD): the transcriptions' orthogonalization."""
    U, _, Vh = torch.linalg.svd(u, full_matrices=False)
    return U @ Vh


def paper_algorithm_1(W, grads, lr, wd, beta1=0.95, beta2=0.95, eps=1e-8):
    """Li et al. 2025, Algorithm 1, line by line (EMA momentum, no Nesterov)."""
    m, n = W.shape
    M, v = torch.zeros_like(W), torch.zeros(m, dtype=W.dtype)
    for g in grads:
        M = beta1 * M + (1 - beta1) * g
        O = polar(M)
        v = beta2 * v + (1 - beta2) * (O * O).mean(dim=1)
        O_hat = O / (v.sqrt()[:, None] + eps)
        eta_hat = 0.2 * lr * (m * n) ** 0.5 / torch.linalg.norm(O_hat)
        W = W - lr * wd * W - eta_hat * O_hat
    return W


def reference_code(W, grads, lr, wd, beta=0.95, beta2=0.95, eps=1e-10):
    """The authors' normuon.py ``normuon_update`` + SingleDeviceNorMuon.step (Nesterov, EMA
    momentum, Keller's shape factor), with the exact polar factor in fp32."""
    M, v = torch.zeros_like(W), torch.zeros(W.shape[0], 1, dtype=W.dtype)
    for g in grads:
        M = torch.lerp(M, g, 1 - beta)
        u = torch.lerp(g, M, beta)
        O = polar(u)
        vnorm = O.norm()
        v = torch.lerp(v, (O * O).mean(dim=-1, keepdim=True), 1 - beta2)
        O = O / (v.sqrt() + eps)
        O = O * (vnorm / (O.norm() + eps))
        O = O * max(1, W.shape[0] / W.shape[1]) ** 0.5
        W = W * (1 - lr * wd) - lr * O
    return W


def run(opt_cls, W0, grads, **kw):
    p = nn.Parameter(W0.clone())
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_matches_the_papers_algorithm_1(shape):
    torch.manual_seed(0)
    W0, grads = torch.randn(shape), [torch.randn(shape) for _ in range(4)]
    ours, _ = run(NorMuon, W0, grads, lr=0.01, weight_decay=0.1, momentum_form="ema",
                  nesterov=False, ns_coefficients="svd", lr_scaling="moonlight")
    assert torch.allclose(ours, paper_algorithm_1(W0, grads, 0.01, 0.1), atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_matches_the_reference_code(shape):
    torch.manual_seed(1)
    W0, grads = torch.randn(shape), [torch.randn(shape) for _ in range(4)]
    ours, _ = run(NorMuon, W0, grads, lr=0.02, weight_decay=0.05, momentum_form="ema",
                  ns_coefficients="svd", eps=1e-10)
    assert torch.allclose(ours, reference_code(W0, grads, 0.02, 0.05), atol=1e-6)
    muon = run(NorMuon, W0, grads, lr=0.02, beta2=0.0, momentum_form="ema",
               ns_coefficients="svd")[0]
    assert not torch.allclose(ours, muon, atol=1e-4)  # the row normalization does something


def test_state_is_one_extra_vector_per_matrix_and_round_trips():
    torch.manual_seed(2)
    params = [nn.Parameter(torch.randn(8, 3)), nn.Parameter(torch.randn(5, 7))]
    opt = NorMuon(params, lr=0.02)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    sizes = opt.state_bytes()
    assert sizes == {0: (8 * 3 + 8) * 4, 1: (5 * 7 + 5) * 4}
    clone = NorMuon([nn.Parameter(p.detach().clone()) for p in params], lr=0.02)
    clone.load_state_dict(copy.deepcopy(opt.state_dict()))
    for a, b in zip(params, clone.param_groups[0]["params"]):
        g = torch.randn_like(a)
        a.grad, b.grad = g, g.clone()
    opt.step()
    clone.step()
    for a, b in zip(params, clone.param_groups[0]["params"]):
        assert torch.equal(a, b)


def test_nonfinite_gradient_is_refused_and_options_checked():
    p = nn.Parameter(torch.randn(4, 4))
    before = p.detach().clone()
    opt = NorMuon([p])
    p.grad = torch.full_like(p, float("nan"))
    with pytest.raises(NonFiniteGradientError):
        opt.step()
    assert torch.equal(p, before) and len(opt.state) == 0
    with pytest.raises(ValueError, match="beta2"):
        NorMuon([p], beta2=1.0)


def test_hybrid_steps_its_matrices_like_normuon_and_trains_a_model():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 1))
    x = torch.randn(64, 8)
    y = x[:, :1] * x[:, 1:2]
    twin = copy.deepcopy(model)
    opt = NorMuonWithAuxAdam(hybrid_param_groups(model, muon_lr=0.02, adamw_lr=3e-3,
                                                 head_names=("4",)))
    matrices = [twin[2].weight]
    ref = NorMuon(matrices, lr=0.02)
    loss0 = nn.functional.mse_loss(model(x), y).item()
    for step in range(60):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if step == 0:
            nn.functional.mse_loss(twin(x), y).backward()
            ref.step()
            opt.step()
            assert torch.allclose(model[2].weight, twin[2].weight, atol=1e-7)
            continue
        opt.step()
    assert nn.functional.mse_loss(model(x), y).item() < 0.5 * loss0
    assert "row_second_moment" in opt.state[model[2].weight]


def test_signature_agrees_with_muon_options_and_refuses_batch_dims():
    import inspect

    from muonkit import MuonOptions

    signature = inspect.signature(NorMuon).parameters
    assert {n: signature[n].default for n in MuonOptions.names()} == MuonOptions.defaults()
    with pytest.raises(ValueError, match="ns_batch_dims"):
        NorMuon([nn.Parameter(torch.randn(2, 4, 4))], ns_batch_dims=1)
