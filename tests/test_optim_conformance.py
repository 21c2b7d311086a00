"""PyTorch's optimizer conformance checks, ported to muonkit's five optimizers.

A port (our own code) of the checks of ``TestOptimRenewed`` in PyTorch's test/test_optim.py
(with the inputs of torch/testing/_internal/common_optimizers.py) that apply to optimizers of
2-D parameters, run for every class. Where torch uses a 1-D bias, the matrix-only classes
get a (10, 1) matrix; the hybrid puts the real 1-D bias in an AdamW group. The README
("torch.optim conformance") lists the checks that do not apply and why.
"""

import copy
import functools
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn import Parameter
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from muonkit import Muon, MuonWithAuxAdam, NonFiniteGradientError
from muonkit.variants import (
    HybridKroneckerMuon,
    KroneckerMuon,
    LoRAPreMuon,
    NorMuon,
    NorMuonWithAuxAdam,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*(rank|Kronecker factorization).*:UserWarning")


def holder(params):
    """A module owning ``params`` (HybridKroneckerMuon is built from a model)."""
    module = nn.Module()
    for i, p in enumerate(params):
        module.register_parameter(f"p{i}", p if isinstance(p, Parameter) else Parameter(p))
    return module


def same(a, b) -> bool:
    """Exact equality of nested state dicts (tensors, containers, strings, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def hybrid(params, cls=MuonWithAuxAdam, **kw):
    """A hybrid (``cls``): matrices on Muon / NorMuon (with ``kw``), vectors on AdamW."""
    params = list(params)
    named = params and isinstance(params[0], tuple)
    ndim = (lambda p: p[1].ndim) if named else (lambda p: p.ndim)
    nonfinite = kw.pop("nonfinite", "raise")
    adamw = {k: v for k, v in kw.items() if k in ("lr", "weight_decay", "maximize")}
    groups = [
        dict(params=[p for p in params if ndim(p) >= 2], use_muon=True, **kw),
        dict(params=[p for p in params if ndim(p) < 2], use_muon=False, **adamw),
    ]
    return cls([g for g in groups if g["params"]], nonfinite=nonfinite)


BUILDERS = {
    "Muon": Muon,
    "MuonWithAuxAdam": hybrid,
    "NorMuon": NorMuon,
    "NorMuonWithAuxAdam": functools.partial(hybrid, cls=NorMuonWithAuxAdam),
    "LoRAPreMuon": functools.partial(LoRAPreMuon, rank=2),
    "KroneckerMuon": functools.partial(KroneckerMuon, min_savings=1.0),
    "HybridKroneckerMuon": lambda ps, **kw: HybridKroneckerMuon(holder(ps), min_savings=1.0, **kw),
}
ALL = pytest.mark.parametrize("name", list(BUILDERS))
HYBRIDS = {"MuonWithAuxAdam": MuonWithAuxAdam, "NorMuonWithAuxAdam": NorMuonWithAuxAdam}
# HybridKroneckerMuon is built from a model: it takes no param groups (nor named params)
TAKES_GROUPS = pytest.mark.parametrize("name", [n for n in BUILDERS if n != "HybridKroneckerMuon"])


def build(name, params, **kw):
    return BUILDERS[name](params, **kw)


def weight_and_bias(name, contiguous=True):
    torch.manual_seed(0)
    w = torch.randn(10, 5) if contiguous else torch.randn(10, 5, 2)[..., 0]
    b_shape = (10,) if name in HYBRIDS else (10, 1)
    b = torch.randn(10, 2)[..., :1].reshape(b_shape) if not contiguous else torch.randn(b_shape)
    return Parameter(w), Parameter(b), torch.randn(5)


def loss_fn(w, b, x):
    return (w @ x + b.reshape(-1)).pow(2).sum()


def closure_for(opt, w, b, x):
    def closure():
        opt.zero_grad()
        loss = loss_fn(w, b, x)
        loss.backward()
        return loss

    return closure


# ---------------------------------------------------------------------------- test_errors


@ALL
def test_errors_like_torch(name):
    p = Parameter(torch.randn(4, 3))
    if name not in (*HYBRIDS, "HybridKroneckerMuon"):  # both take other containers
        with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
            build(name, p)
        with pytest.raises(ValueError, match="more than one parameter group"):
            build(name, [{"params": [p]}, {"params": [p]}])
        with pytest.raises(ValueError, match="with/without names"):
            build(name, [("weight", p), Parameter(torch.randn(4, 3))])
    if name != "HybridKroneckerMuon":  # a model cannot hold one parameter twice
        with pytest.warns(UserWarning, match="duplicate parameters"):
            build(name, [p, p])
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        build(name, [p], lr=torch.tensor([0.01, 0.01]))


@ALL
@pytest.mark.parametrize(
    "dtype, match", [(torch.complex64, "complex parameters"), (torch.int64, "floating-point")]
)
def test_complex_and_integer_params_are_refused_at_construction(name, dtype, match):
    if name == "HybridKroneckerMuon" and not dtype.is_complex:
        pytest.skip("a model's integer tensors cannot require grad, so it never sees them")
    p = torch.zeros(4, 3, dtype=dtype)
    with pytest.raises(ValueError, match=match):
        build(name, [p])


@ALL
def test_zero_size_matrix_is_a_noop(name):
    w, empty = Parameter(torch.randn(6, 4)), Parameter(torch.zeros(5, 0))
    opt = build(name, [w, empty])
    w.grad, empty.grad = torch.randn(6, 4), torch.zeros(5, 0)
    opt.step()
    assert empty.shape == (5, 0) and torch.isfinite(w).all()


# ----------------------------------------------------------- going the right direction


SCHEDULERS = {
    "none": [],
    "step": [lambda o: StepLR(o, gamma=0.9, step_size=10)],
    "plateau": [lambda o: ReduceLROnPlateau(o)],
    "onecycle": [lambda o: OneCycleLR(o, max_lr=0.02, total_steps=20)],  # cycle_momentum=True
}


@ALL
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("maximize", [False, True])
def test_goes_right_direction(name, contiguous, scheduler, maximize):
    w, b, x = weight_and_bias(name, contiguous)
    opt = build(name, [w, b], maximize=maximize)
    schedulers = [make(opt) for make in SCHEDULERS[scheduler]]
    closure = closure_for(opt, w, b, x)
    initial = closure().item()
    for _ in range(20):
        loss = opt.step(closure)
        for s in schedulers:
            s.step(loss) if isinstance(s, ReduceLROnPlateau) else s.step()
    final = closure().item()
    assert final > initial if maximize else final < initial


@ALL
def test_maximize_equals_minimizing_the_negated_loss(name):
    torch.manual_seed(0)
    up, down = Parameter(torch.randn(6, 4)), Parameter(torch.randn(6, 4))
    down.data.copy_(up.data)
    opt_up, opt_down = build(name, [up], maximize=True), build(name, [down])
    for _ in range(3):
        g = torch.randn(6, 4)
        up.grad, down.grad = g.clone(), -g
        opt_up.step()
        opt_down.step()
    assert torch.equal(up, down)


@TAKES_GROUPS
def test_param_group_with_lrscheduler_goes_right_direction(name):
    w, b, x = weight_and_bias(name)
    if name in HYBRIDS:
        groups = [dict(params=[w], use_muon=True), dict(params=[b], use_muon=False, lr=0.01)]
        opt = HYBRIDS[name](groups)
    else:
        opt = build(name, [{"params": [w]}, {"params": [b], "lr": 0.01}])
    scheduler = StepLR(opt, gamma=0.9, step_size=10)
    closure = closure_for(opt, w, b, x)
    initial = closure().item()
    for _ in range(20):
        opt.step(closure)
        scheduler.step()
    assert closure().item() < initial


@ALL
def test_tensor_lr_equals_float_lr(name):
    w, b, x = weight_and_bias(name)
    w_c, b_c = (Parameter(t.detach().clone()) for t in (w, b))
    opt, opt_c = build(name, [w, b], lr=0.01), build(name, [w_c, b_c], lr=torch.tensor(0.01))
    for _ in range(5):
        opt.step(closure_for(opt, w, b, x))
        opt_c.step(closure_for(opt_c, w_c, b_c, x))
        assert torch.equal(w, w_c) and torch.equal(b, b_c)


@TAKES_GROUPS
def test_param_groups_weight_decay_and_lr(name):
    w, b, x = weight_and_bias(name)
    irrelevant = Parameter(torch.randn(2, 2))
    before = irrelevant.detach().clone()
    if name in HYBRIDS:
        groups = [
            dict(params=[w], use_muon=True, weight_decay=0.1),
            dict(params=[b], use_muon=False, weight_decay=0.0),
            dict(params=[irrelevant], use_muon=True, lr=1e-28),
        ]
        opt = HYBRIDS[name](groups)
    else:
        groups = [
            dict(params=[w], weight_decay=0.1, lr=0.02),
            dict(params=[b], weight_decay=0.0, lr=0.02),
            dict(params=[irrelevant]),
        ]
        opt = build(name, groups, lr=1e-28)
    initial = loss_fn(w, b, x).item()
    for _ in range(20):
        closure_for(opt, w, b, x)()
        irrelevant.grad = torch.rand(2, 2)
        opt.step()
    assert loss_fn(w, b, x).item() < initial
    assert torch.equal(irrelevant, before)  # lr ~ 0: no change


# --------------------------------------------------------------------------- no-op steps


@ALL
def test_step_is_noop_when_params_have_no_grad(name):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    before = [p.detach().clone() for p in params]
    opt = build(name, params)
    assert opt.step(lambda: torch.tensor([1.0])) == torch.tensor([1.0])
    assert all(torch.equal(p, q) for p, q in zip(params, before))


@ALL
def test_step_is_noop_for_zero_grads(name):
    p = Parameter(torch.randn(5, 1))
    before = p.detach().clone()
    opt = build(name, [p])
    p.grad = torch.zeros_like(p)
    opt.step(lambda: torch.tensor([1.0]))
    assert torch.equal(p, before)


@ALL
def test_optimizer_can_be_printed(name):
    assert type(build(name, [Parameter(torch.randn(2, 3))])).__name__ in repr(
        build(name, [Parameter(torch.randn(2, 3))])
    )


@ALL
def test_non_empty_state(name):
    model = nn.Linear(5, 5, bias=False)
    opt = build(name, list(model.parameters()))
    model(torch.rand(2, 5)).sum().backward()
    opt.step()
    assert opt.state and all(len(s) > 0 for s in opt.state.values())


# ---------------------------------------------------------------------------- state dicts


def named(params, is_named):
    return [(f"name{i}", p) for i, p in enumerate(params)] if is_named else params


@TAKES_GROUPS
@pytest.mark.parametrize("named0, named1", [(False, False), (True, False), (False, True)])
def test_state_dict_deterministic(name, named0, named1):
    w, b, x = weight_and_bias(name)
    opt = build(name, named([w, b], named0))
    for _ in range(3):
        opt.step(closure_for(opt, w, b, x))
    w_c, b_c = (Parameter(t.detach().clone()) for t in (w, b))
    opt_c = build(name, named([w_c, b_c], named1))
    opt_c.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(3):
        opt.step(closure_for(opt, w, b, x))
        opt_c.step(closure_for(opt_c, w_c, b_c, x))
        assert torch.equal(w, w_c) and torch.equal(b, b_c)

    def without_names(sd):
        sd = copy.deepcopy(sd)
        for g in sd["param_groups"]:
            g.pop("param_names", None)
        return sd

    assert same(without_names(opt.state_dict()), without_names(opt_c.state_dict()))
    opt_c.param_groups.extend(opt_c.param_groups)  # repeated params: identical representation
    assert (
        without_names(opt.state_dict())["param_groups"][-1]
        == (without_names(opt_c.state_dict())["param_groups"][-1])
    )


@TAKES_GROUPS
def test_can_load_from_to_named_state_dict(name):
    w, b, x = weight_and_bias(name)
    opt = build(name, named([w, b], True))
    opt.step(closure_for(opt, w, b, x))
    opt2 = build(name, [w, b])
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt2.step(closure_for(opt2, w, b, x))
    names = [n for g in opt2.state_dict()["param_groups"] for n in g["param_names"]]
    assert names == ["name0", "name1"]


OPTIONS_ADDED_LATER = ("ns_gram", "ns_precondition", "ns_compile", "maximize", "nonfinite",
                       "seed", "dense_momentum")


@ALL
def test_can_load_older_state_dict(name):
    w, b, x = weight_and_bias(name)
    opt = build(name, [w, b])
    for _ in range(2):
        opt.step(closure_for(opt, w, b, x))
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        for key in OPTIONS_ADDED_LATER:
            group.pop(key, None)
    fresh = build(name, [w, b])
    fresh.load_state_dict(old)
    fresh.step(closure_for(fresh, w, b, x))
    assert all(g["nonfinite"] == "raise" and g["maximize"] is False for g in fresh.param_groups)


@ALL
def test_save_load_equality_with_weights_only(name):
    w, b, x = weight_and_bias(name)
    opt = build(name, [w, b])
    for _ in range(2):
        opt.step(closure_for(opt, w, b, x))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    assert same(torch.load(buffer, weights_only=True), opt.state_dict())


@ALL
def test_load_nontensor_step(name):
    w, b, x = weight_and_bias(name)
    opt = build(name, [w, b])
    for _ in range(3):
        opt.step(closure_for(opt, w, b, x))
    sd = copy.deepcopy(opt.state_dict())
    for s in sd["state"].values():
        if "step" in s:
            s["step"] = s["step"].item()
    twin = build(name, [Parameter(w.detach().clone()), Parameter(b.detach().clone())])
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt.load_state_dict(sd)
    opt.step(closure_for(opt, w, b, x))
    tw, tb = [p for g in twin.param_groups for p in g["params"]]
    twin.step(closure_for(twin, tw, tb, x))
    assert torch.equal(w, tw) and torch.equal(b, tb)


# --------------------------------------------------------------------------------- hooks


@ALL
def test_state_dict_and_load_state_dict_hooks(name):
    opt = build(name, [Parameter(torch.rand(2, 3))])
    opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("test", 1))

    def post(o, sd):
        sd["ran_pre_hook"] = sd["state"].pop("test", None) == 1
        return sd

    opt.register_state_dict_post_hook(post)
    sd = opt.state_dict()
    assert sd["ran_pre_hook"] and "test" not in sd["state"]
    calls = []

    def load_pre(o, state_dict):
        state_dict = copy.deepcopy(state_dict)
        state_dict["param_groups"][0]["lr"] = 0.003
        return state_dict

    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda o: calls.append(o.param_groups[0]["lr"]))
    opt.load_state_dict(sd)
    assert calls == [0.003]


@ALL
def test_step_hooks_fire_in_order_and_are_removable(name):
    p = Parameter(torch.randn(2, 2))
    opt, other = build(name, [p]), torch.optim.SGD([p])
    data = []
    handles = [
        register_optimizer_step_pre_hook(lambda *a: data.append(0)),
        register_optimizer_step_post_hook(lambda *a: data.append(5)),
        opt.register_step_pre_hook(lambda *a: data.append(1)),
        opt.register_step_post_hook(lambda *a: data.append(2)),
        other.register_step_pre_hook(lambda *a: data.append(1)),
        other.register_step_post_hook(lambda *a: data.append(2)),
    ]
    opt.step()
    other.step()
    assert data == [0, 1, 2, 5, 0, 1, 2, 5]
    for h in handles:
        h.remove()
    opt.step()
    assert data == [0, 1, 2, 5, 0, 1, 2, 5]


# ---------------------------------------------------------------- copies keep working


def stepped(name, nonfinite="raise"):
    w, b, x = weight_and_bias(name)
    opt = build(name, [w, b], nonfinite=nonfinite)
    for _ in range(2):
        opt.step(closure_for(opt, w, b, x))
    return opt, (w, b, x)


@ALL
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_a_working_optimizer(name, how):
    opt, (w, b, x) = stepped(name)
    if how == "deepcopy":
        (cw, cb), copy_opt = copy.deepcopy(([w, b], opt))
    else:  # as a (model, optimizer) pair: the copy steps the copied model's parameters
        (cw, cb), copy_opt = pickle.loads(pickle.dumps(([w, b], opt)))
    assert {id(p) for g in copy_opt.param_groups for p in g["params"]} == {id(cw), id(cb)}
    assert {k for k in vars(opt) if not k.startswith("_")} == {
        k for k in vars(copy_opt) if not k.startswith("_")
    }
    opt.step(closure_for(opt, w, b, x))
    copy_opt.step(closure_for(copy_opt, cw, cb, x))
    assert torch.equal(w, cw) and torch.equal(b, cb)  # the copy steps exactly as the original
    cw.grad = torch.full_like(cw, float("nan"))
    with pytest.raises(NonFiniteGradientError):
        copy_opt.step()


@ALL
def test_copies_keep_the_skip_policy(name):
    opt, _ = stepped(name, nonfinite="skip")
    copy_opt = copy.deepcopy(opt)
    p = copy_opt.param_groups[0]["params"][0]
    p.grad = torch.full_like(p, float("nan"))
    copy_opt.step()
    assert copy_opt.nonfinite == "skip" and copy_opt.state["nonfinite_skipped_steps"] == 1


# --------------------------------------------------------------------------- randomness


@ALL
def test_step_does_not_touch_the_global_rng(name):
    torch.manual_seed(123)
    expected = torch.randn(4)
    torch.manual_seed(123)
    w, b = Parameter(torch.ones(8, 4)), Parameter(torch.ones(8, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = build(name, [w, b])
    w.grad, b.grad = torch.ones_like(w), torch.ones_like(b)
    state = torch.get_rng_state()
    opt.step()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.randn(4), expected)


@pytest.mark.parametrize("name", ["LoRAPreMuon", "KroneckerMuon"])
def test_compiled_step_equals_eager(name):
    # torch.compile (dynamo) of the whole step gives the eager result: the random initial
    # factors come from the optimizer's own generator, not from an RNG the compiler replaces
    torch.manual_seed(0)
    start = torch.randn(8, 6)
    eager_w, compiled_w = Parameter(start.clone()), Parameter(start.clone())
    eager, compiled = build(name, [eager_w]), build(name, [compiled_w])
    compiled_step = torch.compile(compiled.step, backend="eager")
    for _ in range(2):
        g = torch.randn(8, 6)
        eager_w.grad, compiled_w.grad = g.clone(), g.clone()
        eager.step()
        compiled_step()
    assert torch.equal(eager_w, compiled_w)
