import copy

import pytest
import torch

from muonkit import Muon, NonFiniteGradientError
from muonkit.functional import all_finite, orthogonalize_updates
from muonkit.muon import SKIPPED_STEPS_KEY

SHAPES = [(16, 8), (8, 16), (12, 12), (12, 12), (16, 8)]


def make_params(shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


def grad_sequence(shapes, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(*s, generator=g) for s in shapes] for _ in range(steps)]


def reference_ns(G, steps=5):
    """Keller Jordan's quintic written out plainly, 2-D, fp32 (independent of muonkit)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.T if G.shape[0] > G.shape[1] else G
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if G.shape[0] > G.shape[1] else X


def reference_muon(params, grads_seq, *, lr, mu, nesterov, wd, form):
    params = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for grads in grads_seq:
        for i, (p, g) in enumerate(zip(params, grads)):
            if form == "standard":
                bufs[i] = mu * bufs[i] + g
                u = g + mu * bufs[i] if nesterov else bufs[i]
            else:
                bufs[i] = (1 - mu) * g + mu * bufs[i]
                u = (1 - mu) * g + mu * bufs[i] if nesterov else bufs[i]
            scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
            params[i] = p * (1 - lr * wd) - lr * scale * reference_ns(u)
    return params


def run(opt_params, opt, grads_seq):
    for grads in grads_seq:
        for p, g in zip(opt_params, grads):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("form", ["standard", "ema"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_hand_written_reference(form, nesterov):
    params = make_params()
    grads = grad_sequence(SHAPES, 4)
    expected = reference_muon(params, grads, lr=0.05, mu=0.9, nesterov=nesterov, wd=0.1, form=form)
    opt = Muon(
        params, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.1, momentum_form=form
    )
    run(params, opt, grads)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, atol=2e-5, rtol=0)


def test_matches_torch_optim_muon_step_for_step():
    ours, theirs = make_params(), make_params()
    grads = grad_sequence(SHAPES, 6)
    opt_ours = Muon(
        ours,
        lr=0.02,
        weight_decay=0.1,
        ns_dtype=torch.bfloat16,
        momentum_form="ema",
        lr_scaling="keller",
    )
    opt_theirs = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="original")
    for step_grads in grads:
        run(ours, opt_ours, [step_grads])
        run(theirs, opt_theirs, [step_grads])
        for a, b in zip(ours, theirs):
            # same bf16 arithmetic, same order of operations: bit-identical
            assert torch.equal(a, b)
        for a, b in zip(ours, theirs):
            assert torch.equal(
                opt_ours.state[a]["momentum_buffer"], opt_theirs.state[b]["momentum_buffer"]
            )


def test_conv_kernels_are_orthogonalized_as_flattened_matrices():
    w = torch.nn.Parameter(torch.randn(8, 3, 3, 3))
    w0 = w.detach().clone()
    g = torch.randn(8, 3, 3, 3)
    w.grad = g.clone()
    Muon([w], lr=0.1, momentum=0.0, nesterov=False).step()
    expected = w0 - 0.1 * reference_ns(g.reshape(8, 27)).reshape(8, 3, 3, 3)
    torch.testing.assert_close(w.detach(), expected, atol=2e-5, rtol=0)


def test_same_shape_batching_equals_one_at_a_time():
    ups = [torch.randn(12, 12) for _ in range(3)] + [torch.randn(5, 9)]
    batched = orthogonalize_updates(ups)
    for u, o in zip(ups, batched):
        torch.testing.assert_close(o, orthogonalize_updates([u])[0], atol=1e-6, rtol=0)


def test_state_dict_resume_is_bit_identical():
    grads = grad_sequence(SHAPES, 6)
    straight = make_params()
    opt = Muon(straight, lr=0.03, weight_decay=0.01)
    run(straight, opt, grads)

    resumed = make_params()
    opt1 = Muon(resumed, lr=0.03, weight_decay=0.01)
    run(resumed, opt1, grads[:3])
    saved_params = copy.deepcopy([p.detach() for p in resumed])
    saved_state = copy.deepcopy(opt1.state_dict())
    fresh = [torch.nn.Parameter(t.clone()) for t in saved_params]
    opt2 = Muon(fresh, lr=0.5)  # options come back from the state dict
    opt2.load_state_dict(saved_state)
    assert opt2.param_groups[0]["lr"] == 0.03
    run(fresh, opt2, grads[3:])
    for a, b in zip(straight, fresh):
        assert torch.equal(a, b)


def test_params_without_grad_are_untouched_and_zero_grad_sets_none():
    a, b = make_params([(4, 4), (4, 4)])
    b0 = b.detach().clone()
    opt = Muon([a, b])
    a.grad = torch.randn(4, 4)
    opt.step()
    assert torch.equal(b, b0) and b not in opt.state
    opt.zero_grad(set_to_none=True)
    assert a.grad is None


def test_param_groups_have_their_own_options():
    a, b = make_params([(6, 6), (6, 6)])
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt = Muon([dict(params=[a], lr=0.1), dict(params=[b], lr=0.0)])
    a.grad, b.grad = torch.randn(6, 6), torch.randn(6, 6)
    opt.step()
    assert not torch.equal(a, a0) and torch.equal(b, b0)


def test_zero_gradient_gives_zero_update():
    (w,) = make_params([(5, 7)])
    w0 = w.detach().clone()
    w.grad = torch.zeros(5, 7)
    Muon([w]).step()
    assert torch.equal(w, w0)


@pytest.mark.parametrize("where", [0, 3])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_raises_and_changes_nothing(where, bad):
    params = make_params()
    opt = Muon(params)
    run(params, opt, grad_sequence(SHAPES, 1))
    before_p = [p.detach().clone() for p in params]
    before_s = copy.deepcopy(opt.state_dict())
    grads = grad_sequence(SHAPES, 1, seed=5)[0]
    grads[where][1, 2] = bad
    for p, g in zip(params, grads):
        p.grad = g
    with pytest.raises(NonFiniteGradientError, match=r"shape \(\d+, \d+\).*NaN or inf"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before_p))
    after_s = opt.state_dict()
    for k, v in before_s["state"].items():
        assert torch.equal(v["momentum_buffer"], after_s["state"][k]["momentum_buffer"])


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1.0, 2.0], True),
        ([6e4, 6e4], True),  # finite fp16 values whose norm overflows to inf
        ([1.0, float("-inf")], False),
        ([float("nan"), 1.0], False),
    ],
)
def test_all_finite_is_exact_per_element(values, expected):
    tensors = [torch.zeros(0), torch.ones(3, 3), torch.tensor(values, dtype=torch.float16)]
    assert all_finite(tensors) is expected


def test_nonfinite_skip_counts_and_changes_nothing():
    params = make_params()
    opt = Muon(params, nonfinite="skip")
    before = [p.detach().clone() for p in params]
    grads = grad_sequence(SHAPES, 1)[0]
    grads[1][0, 0] = float("nan")
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    opt.step()
    assert opt.state[SKIPPED_STEPS_KEY] == 2
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert all(p not in opt.state for p in params)
    restored = Muon(make_params(), nonfinite="skip")
    restored.load_state_dict(opt.state_dict())
    assert restored.state[SKIPPED_STEPS_KEY] == 2


def test_vector_parameter_is_refused_with_a_pointer_to_the_hybrid():
    with pytest.raises(ValueError, match=r"shape \(5,\).*MuonWithAuxAdam"):
        Muon([torch.nn.Parameter(torch.randn(5))])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(momentum_form="adam"), "momentum_form.*standard"),
        (dict(ns_coefficients="cubic"), "ns_coefficients.*jordan"),
        (dict(lr_scaling="sqrt"), "lr_scaling.*keller"),
        (dict(lr=-1.0), "lr must be >= 0"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (dict(momentum=-0.1), r"momentum must be in \[0, 1\)"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(ns_steps=-1), "ns_steps"),
        (dict(nonfinite="ignore"), "nonfinite.*raise"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon(make_params([(4, 4)]), **kwargs)


def test_bad_group_added_later_is_refused_and_not_kept():
    opt = Muon(make_params([(4, 4)]))
    with pytest.raises(ValueError, match="momentum_form"):
        opt.add_param_group(dict(params=make_params([(3, 3)], seed=9), momentum_form="x"))
    assert len(opt.param_groups) == 1


def test_svd_orthogonalizer_gives_exact_polar_step():
    (w,) = make_params([(9, 6)])
    w0 = w.detach().clone()
    g = torch.randn(9, 6)
    w.grad = g.clone()
    Muon([w], lr=0.1, momentum=0.0, nesterov=False, ns_coefficients="svd").step()
    U, _, Vh = torch.linalg.svd(g.double(), full_matrices=False)
    expected = w0 - 0.1 * 1.5**0.5 * (U @ Vh).float()
    torch.testing.assert_close(w.detach(), expected, atol=1e-6, rtol=0)


def test_fused_qkv_split_equals_three_separate_matrices():
    d = 6
    qkv = torch.nn.Parameter(torch.randn(3 * d, d))
    parts = [torch.nn.Parameter(t.detach().clone()) for t in qkv.detach().chunk(3)]
    g = torch.randn(3 * d, d)
    qkv.grad = g.clone()
    for p, gp in zip(parts, g.chunk(3)):
        p.grad = gp.clone()
    Muon([qkv], lr=0.05, ns_split=3).step()
    Muon(parts, lr=0.05).step()
    torch.testing.assert_close(
        qkv.detach(), torch.cat([p.detach() for p in parts]), atol=1e-6, rtol=0
    )


def test_per_head_split_orthogonalizes_each_head_block():
    heads, hd, d = 4, 3, 12
    w = torch.nn.Parameter(torch.zeros(heads * hd, d))
    w.grad = torch.randn(heads * hd, d)
    Muon([w], lr=1.0, momentum=0.0, nesterov=False, ns_split=heads, ns_coefficients="svd").step()
    for block in (-w.detach()).chunk(heads):  # each head's update is an exact orthogonal block
        torch.testing.assert_close(block @ block.T, torch.eye(hd), atol=1e-5, rtol=0)


def test_split_must_divide_rows():
    with pytest.raises(ValueError, match=r"ns_split=3 must divide.*\(8, 4\)"):
        Muon([torch.nn.Parameter(torch.randn(8, 4))], ns_split=3)


@pytest.mark.parametrize("form", ["standard", "ema"])
def test_gradient_heavy_mixing_orthogonalizes_g_plus_mu_times_the_ema(form):
    # the ablation of LoRA-Pre's printed mixing on dense Muon: U = G + mu * EMA(G)
    params, mu = make_params(), 0.9
    grads = grad_sequence(SHAPES, 4)
    expected = [p.detach().clone() for p in params]
    emas = [torch.zeros_like(p) for p in params]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            emas[i] = mu * emas[i] + (1 - mu) * g
            scale = max(1.0, g.shape[0] / g.shape[1]) ** 0.5
            expected[i] = expected[i] - 0.05 * scale * reference_ns(g + mu * emas[i])
    opt = Muon(params, lr=0.05, momentum=mu, momentum_form=form, mixing="gradient_heavy")
    run(params, opt, grads)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, atol=2e-5, rtol=0)
