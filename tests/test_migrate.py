"""muonkit.migrate_adamw_state (issue 24): Muon's momentum buffers from AdamW's exp_avg (as
it is for the EMA form, divided by 1 - beta1 for the standard form), the hybrid's AdamW params
keeping exp_avg, exp_avg_sq and step, missing params empty with a counted warning; checked
against hand computations and against torch.optim.AdamW continuing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from muonkit import MuonWithAuxAdam, hybrid_param_groups, migrate_adamw_state
from muonkit.variants import KroneckerMuon, LoRAPreMuonWithAuxAdam, NorMuonWithAuxAdam

BETAS = (0.8, 0.95)  # 1 / (1 - beta1) = 5: the standard buffer is 5x exp_avg
ADAMW_LR = 1e-2
MU = 0.9


class Tiny(nn.Module):
    """An embedding, a Linear (Muon weight, AdamW bias), a matrix stored (in, out) as a HF
    Conv1D weight (Muon, transposed) and a head (AdamW)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.fc = nn.Linear(4, 6)
        self.proj = nn.Parameter(torch.randn(6, 5) / 3)  # y = x @ proj: (in, out)
        self.head = nn.Linear(5, 3, bias=False)

    def forward(self, idx):
        return self.head(torch.tanh(torch.tanh(self.fc(self.emb(idx))) @ self.proj))


def loss_of(model, seed):
    g = torch.Generator().manual_seed(seed)
    idx, target = torch.randint(0, 7, (8,), generator=g), torch.randint(0, 3, (8,), generator=g)
    return nn.functional.cross_entropy(model(idx), target)


def backward(model, seed):
    model.zero_grad(set_to_none=True)
    loss_of(model, seed).backward()


@pytest.fixture
def trained():
    """A Tiny model after 3 AdamW steps, and its AdamW."""
    torch.manual_seed(0)
    model = Tiny()
    adamw = torch.optim.AdamW(model.parameters(), lr=ADAMW_LR, betas=BETAS, weight_decay=0.0)
    for step in range(3):
        backward(model, step)
        adamw.step()
    return model, adamw


def hybrid(model, form="standard", cls=MuonWithAuxAdam, **options):
    options = {**dict(muon_lr=0.05, adamw_lr=ADAMW_LR, adamw_betas=BETAS, momentum=MU,
                      transposed_weights=["proj"], ns_coefficients="svd"), **options}
    return cls(hybrid_param_groups(model, momentum_form=form, **options))


def muon_params(model):
    return {"fc.weight": model.fc.weight, "proj": model.proj}


def adamw_params(model):
    return {"emb.weight": model.emb.weight, "fc.bias": model.fc.bias,
            "head.weight": model.head.weight}


@pytest.mark.parametrize("form", ["standard", "ema"])
def test_muon_buffers_are_exp_avg_in_the_groups_momentum_form(trained, form):
    model, adamw = trained
    opt = hybrid(model, form)
    migrate_adamw_state(adamw, opt)
    for name, p in muon_params(model).items():
        exp_avg = adamw.state[p]["exp_avg"]
        buf = opt.state[p]["momentum_buffer"]
        expected = exp_avg / (1 - BETAS[0]) if form == "standard" else exp_avg
        assert buf.shape == p.shape, name  # the transposed weight too: no transpose
        assert torch.equal(buf, expected), name
        assert buf.data_ptr() != exp_avg.data_ptr()  # a copy: AdamW's state is untouched
        assert set(opt.state[p]) == {"momentum_buffer"}


def test_adamw_params_keep_their_moments_and_continue_as_adamw(trained):
    model, adamw = trained
    twin = copy.deepcopy(model)
    opt = hybrid(twin)
    migrate_adamw_state(adamw.state_dict(), opt, params=twin.parameters())
    for (name, p), q in zip(adamw_params(model).items(), adamw_params(twin).values()):
        mine, theirs = opt.state[q], adamw.state[p]
        assert set(mine) == {"step", "exp_avg", "exp_avg_sq"}, name
        assert mine["step"].dtype == torch.float32 and float(mine["step"]) == 3.0
        assert torch.equal(mine["exp_avg"], theirs["exp_avg"]), name
        assert torch.equal(mine["exp_avg_sq"], theirs["exp_avg_sq"]), name
    backward(model, 3)
    backward(twin, 3)
    adamw.step()
    opt.step()
    for (name, p), q in zip(adamw_params(model).items(), adamw_params(twin).values()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)


def test_state_dict_input_equals_instance_input(trained):
    model, adamw = trained
    twin = copy.deepcopy(model)
    from_instance, from_dict = hybrid(model), hybrid(twin)
    migrate_adamw_state(adamw, from_instance)
    migrate_adamw_state(adamw.state_dict(), from_dict, params=list(twin.parameters()))
    pairs = list(zip(model.parameters(), twin.parameters()))
    assert all(p in from_instance.state for p, _ in pairs)
    for p, q in pairs:
        a, b = from_instance.state[p], from_dict.state[q]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_param_without_adamw_state_starts_empty_with_a_counted_warning(trained):
    model, _ = trained
    others = [p for p in model.parameters() if p is not model.fc.weight]
    adamw = torch.optim.AdamW(others, lr=ADAMW_LR, betas=BETAS)
    backward(model, 0)
    adamw.step()
    opt = hybrid(model)
    opt.step()  # the target's own state, which the migration replaces
    assert "momentum_buffer" in opt.state[model.fc.weight]
    with pytest.warns(UserWarning, match=r"1 parameter\(s\) had no AdamW state"):
        migrate_adamw_state(adamw, opt)
    assert not opt.state.get(model.fc.weight)
    assert torch.equal(opt.state[model.proj]["momentum_buffer"],
                       adamw.state[model.proj]["exp_avg"] / (1 - BETAS[0]))


def test_state_dict_params_that_do_not_match_are_refused(trained):
    model, adamw = trained
    state = adamw.state_dict()
    opt = hybrid(model)
    params = list(model.parameters())
    with pytest.raises(ValueError, match=r"holds 5 parameters, params= gives 4"):
        migrate_adamw_state(state, opt, params=params[:-1])
    mismatch = r"parameter 0 has shape \(3, 5\) but its AdamW exp_avg has shape \(6, 5\)"
    with pytest.raises(ValueError, match=mismatch):
        migrate_adamw_state(state, opt, params=params[::-1])
    with pytest.raises(TypeError, match="pass params="):
        migrate_adamw_state(state, opt)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    backward(model, 0)
    sgd.step()
    with pytest.raises(ValueError, match="not Adam's"):
        migrate_adamw_state(sgd, opt)


def polar(u):
    """The orthogonal polar factor of u, by SVD in float64 (the hand computation)."""
    left, _, right = torch.linalg.svd(u.double(), full_matrices=False)
    return (left @ right).float()


@pytest.mark.parametrize("form", ["standard", "ema"])
def test_first_step_after_migration_is_a_hand_computed_muon_step(trained, form):
    model, adamw = trained
    opt = hybrid(model, form)
    migrate_adamw_state(adamw, opt)
    before = {n: p.detach().clone() for n, p in muon_params(model).items()}
    bufs = {n: adamw.state[p]["exp_avg"].clone() for n, p in muon_params(model).items()}
    backward(model, 3)
    grads = {n: p.grad.clone() for n, p in muon_params(model).items()}
    opt.step()
    scale = {"fc.weight": (6 / 4) ** 0.5, "proj": 1.0}  # keller: max(1, out/in)^0.5, (out, in)
    for name, p in muon_params(model).items():
        g = grads[name]
        if form == "standard":
            b = MU * bufs[name] / (1 - BETAS[0]) + g
            u = g + MU * b
        else:
            b = MU * bufs[name] + (1 - MU) * g
            u = (1 - MU) * g + MU * b
        expected = before[name] - 0.05 * scale[name] * polar(u)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)


def test_normuon_takes_the_buffer_and_compressed_variants_are_refused(trained):
    model, adamw = trained
    normuon = hybrid(model, cls=NorMuonWithAuxAdam, transposed_weights=[])
    migrate_adamw_state(adamw, normuon)
    fc = model.fc.weight
    assert set(normuon.state[fc]) == {"momentum_buffer"}  # the row moment starts empty
    backward(model, 3)
    normuon.step()
    assert normuon.state[fc]["row_second_moment"].shape == (6,)
    lora = LoRAPreMuonWithAuxAdam(hybrid_param_groups(model, rank=2))
    with pytest.raises(ValueError, match="LoRAPreMuonWithAuxAdam stores its momentum compressed"):
        migrate_adamw_state(adamw, lora)
    with pytest.raises(ValueError, match="KroneckerMuon stores its momentum compressed"):
        migrate_adamw_state(adamw, KroneckerMuon([nn.Parameter(torch.zeros(16, 16))]))
