"""The hybrid's AdamW groups step as torch.optim.AdamW does, through the same implementation
(multi-tensor ``foreach`` by default, the single-tensor loop, the ``fused`` kernel)."""

import copy

import pytest
import torch
from torch import nn

from muonkit import MuonWithAuxAdam, hybrid_param_groups

FLAGS = {"foreach": dict(foreach=True), "single-tensor": dict(foreach=False),
         "fused": dict(fused=True)}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(13, 6)
        self.norm = nn.LayerNorm(6)
        self.hidden = nn.Linear(6, 6)
        self.head = nn.Linear(6, 13)
        self.unused = nn.Parameter(torch.randn(5))  # never gets a gradient

    def forward(self, idx):
        return self.head(torch.relu(self.hidden(self.norm(self.emb(idx)))))


def loss_of(model, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 13, (3, 5), generator=g)
    return nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())


def adamw_groups(model):
    """Three AdamW groups with their own LRs and weight decays (one holds the unused param)."""
    base = dict(use_muon=False, betas=(0.9, 0.99), eps=1e-6)
    return [
        dict(params=[model.emb.weight], lr=3e-2, weight_decay=0.1, **base),
        dict(params=[model.head.weight, model.head.bias], lr=1e-2, weight_decay=0.05, **base),
        dict(params=[model.norm.weight, model.norm.bias, model.hidden.bias, model.unused],
             lr=5e-3, weight_decay=0.0, **base),
    ]


def run(model, opt, steps, start=0):
    for step in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        loss_of(model, step).backward()
        opt.step()


@pytest.mark.parametrize("flag", FLAGS)
def test_adamw_groups_equal_torch_adamw_with_the_same_implementation(flag):
    torch.manual_seed(0)
    model = Net()
    twin = copy.deepcopy(model)
    ours = MuonWithAuxAdam([{**g, **FLAGS[flag]} for g in adamw_groups(model)])
    ref_groups = [{k: v for k, v in g.items() if k != "use_muon"} for g in adamw_groups(twin)]
    ref = torch.optim.AdamW(ref_groups, **FLAGS[flag])
    run(model, ours, 3)
    run(twin, ref, 3)
    # a state-dict round trip halfway: a fresh optimizer carries on from the saved state
    ours_saved = copy.deepcopy(ours.state_dict())
    ours = MuonWithAuxAdam([{**g, **FLAGS[flag]} for g in adamw_groups(model)])
    ours.load_state_dict(ours_saved)
    run(model, ours, 3, start=3)
    run(twin, ref, 3, start=3)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name
    assert model.unused not in ours.state  # a parameter without a gradient gets no state
    for p, q in zip(model.parameters(), twin.parameters()):
        for key in ref.state.get(q, {}):
            assert torch.equal(ours.state[p][key], ref.state[q][key]), key


def test_foreach_is_the_default_and_runs_the_multi_tensor_step(monkeypatch):
    calls = []
    foreach_addcdiv = torch._foreach_addcdiv_

    def counted(*args, **kwargs):
        calls.append(len(args[0]))
        return foreach_addcdiv(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_addcdiv_", counted)
    torch.manual_seed(0)
    model = Net()
    opt = MuonWithAuxAdam(hybrid_param_groups(model, head_names=("head",)))
    assert all(g["foreach"] and not g["fused"] for g in opt.param_groups if not g["use_muon"])
    run(model, opt, 1)
    # one multi-tensor call per AdamW group: embedding (1), head (1), vectors (4 with grads)
    assert calls == [1, 1, 4]
    calls.clear()
    for g in opt.param_groups:
        g["foreach"] = False
    run(model, opt, 1)
    assert calls == []  # the single-tensor loop


def test_a_state_dict_from_before_the_foreach_option_loads_and_steps():
    torch.manual_seed(0)
    model = Net()
    twin = copy.deepcopy(model)
    opt = MuonWithAuxAdam(adamw_groups(model))
    run(model, opt, 2)
    old = copy.deepcopy(opt.state_dict())
    for g in old["param_groups"]:
        del g["foreach"], g["fused"]
    restored = MuonWithAuxAdam(adamw_groups(twin))
    restored.load_state_dict(old)
    assert all(g["foreach"] is True and g["fused"] is False for g in restored.param_groups)
    twin.load_state_dict(model.state_dict())
    run(model, opt, 2, start=2)
    run(twin, restored, 2, start=2)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("key", ["foreach", "fused"])
def test_foreach_and_fused_must_be_booleans(key):
    with pytest.raises(ValueError, match=key):
        group = dict(params=[nn.Parameter(torch.ones(3))], use_muon=False, **{key: "yes"})
        MuonWithAuxAdam([group])
