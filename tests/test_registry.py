"""``muonkit.registry.build_optimizer``: the optimizer of any ``nn.Module``, by name, built by
the library (no model builds its own). References: the groups written out by hand (nanoGPT's
AdamW rule; ``hybrid_param_groups`` called directly) and Muon's momentum by hand for the
matrices that a Kronecker hybrid keeps dense."""

import copy

import pytest
import torch
from torch import nn

from muonkit import registry
from muonkit.hybrid import hybrid_param_groups
from muonkit.variants import KroneckerMuonWithAuxAdam


class Net(nn.Module):
    """Not a GPT: an embedding, a fused-QKV attention, two hidden matrices, a head."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.emb = nn.Embedding(10, width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.body = nn.Linear(width, width, bias=False)
        self.last = nn.Linear(width, width, bias=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        h = self.emb(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(self.norm(self.last(torch.relu(self.body(h)))))


def loss(model, seed=0):
    x = torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(seed))
    return nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())


def step(model, opt, seed=0):
    opt.zero_grad()
    loss(model, seed).backward()
    opt.step()


def named_groups(model, opt):
    names = {id(p): n for n, p in model.named_parameters()}
    return [{k: [names[id(p)] for p in v] if k == "params" else v for k, v in g.items()}
            for g in opt.param_groups]


def test_adamw_is_nanogpts_rule_on_any_module():
    torch.manual_seed(0)
    model = Net()
    ref_model = copy.deepcopy(model)
    opt = registry.build_optimizer("adamw", model, lr=1e-2)
    params = list(ref_model.parameters())
    ref = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for seed in range(2):
        step(model, opt, seed)
        step(ref_model, ref, seed)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match=r"Muon options \['momentum'\] given for optimizer"):
        registry.build_optimizer("adamw", model, momentum=0.9)


def test_adamw_per_role_lrs_are_groups_written_by_hand():
    """Per-role LRs (embedding, head, vectors) on AdamW: the groups by hand, each at its LR,
    decay on the matrices and embedding only; the hidden matrices keep ``lr``."""
    torch.manual_seed(0)
    model = Net()
    ref_model = copy.deepcopy(model)
    opt = registry.build_optimizer("adamw", model, lr=1e-2, embedding_lr=4e-2, head_lr=5e-3,
                                   vector_lr=2e-2)
    named = dict(ref_model.named_parameters())
    hidden = [p for n, p in named.items() if p.dim() >= 2 and n not in ("emb.weight",
                                                                        "head.weight")]
    ref = torch.optim.AdamW(
        [{"params": hidden, "weight_decay": 0.1},
         {"params": [named["emb.weight"]], "lr": 4e-2, "weight_decay": 0.1},
         {"params": [named["head.weight"]], "lr": 5e-3, "weight_decay": 0.1},
         {"params": [p for p in named.values() if p.dim() < 2], "lr": 2e-2,
          "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    assert [(g["role"], g["lr"]) for g in opt.param_groups] == [
        ("muon", 1e-2), ("embedding", 4e-2), ("head", 5e-3), ("vector", 2e-2)]
    for seed in range(2):
        step(model, opt, seed)
        step(ref_model, ref, seed)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_hybrids_are_their_class_over_hybrid_param_groups():
    model = Net()
    opt = registry.build_optimizer("normuon", model, lr=1e-3, muon_lr=0.05, qkv_split=True,
                                   embedding_lr=2e-3, ns_steps=3)
    ref = registry.OPTIMIZERS["normuon"].hybrid(hybrid_param_groups(
        model, adamw_lr=1e-3, muon_lr=0.05, qkv_split=3, embedding_lr=2e-3, ns_steps=3,
        adamw_weight_decay=0.1, adamw_betas=(0.9, 0.95), adamw_eps=1e-8))
    assert type(opt) is type(ref)
    assert named_groups(model, opt) == named_groups(model, ref)
    qkv = [g for g in named_groups(model, opt) if g["role"] == "muon_qkv"]
    assert qkv[0]["params"] == ["attn.in_proj_weight"] and qkv[0]["ns_split"] == 3
    with pytest.raises(ValueError, match="rank is not an option of optimizer 'muon'"):
        registry.build_optimizer("muon", model, rank=4)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        registry.build_optimizer("sgd", model)


def test_kronecker_hybrid_keeps_dense_muon_momentum_on_the_matrices_named():
    torch.manual_seed(0)
    model = Net()
    for dense in (["last.weight"], lambda name, p: name.startswith("last.")):
        trained = copy.deepcopy(model)
        opt = registry.build_optimizer("kronecker-hybrid", trained, momentum=0.9, dense=dense)
        assert isinstance(opt, KroneckerMuonWithAuxAdam)
        assert [g["params"] for g in named_groups(trained, opt)
                if g["role"] == "muon_dense"] == [["last.weight"]]
        grads = []
        for seed in range(2):
            step(trained, opt, seed)
            grads.append(trained.last.weight.grad.clone())
        # Muon's dense momentum (standard form) by hand: buf = 0.9 buf + g
        state = opt.state[trained.last.weight]
        torch.testing.assert_close(state["momentum_buffer"], 0.9 * grads[0] + grads[1])
        assert "kron_f1" in opt.state[trained.body.weight]  # the others: Kronecker factors
        assert "momentum_buffer" not in opt.state[trained.body.weight]
    with pytest.raises(ValueError, match="'kronecker-hybrid' needs dense="):
        registry.build_optimizer("kronecker-hybrid", model)
    with pytest.raises(ValueError, match="dense is not an option of optimizer 'kronecker'"):
        registry.build_optimizer("kronecker", model, dense=["last.weight"])
