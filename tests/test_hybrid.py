import copy

import pytest
import torch
from torch import nn

from muonkit import Muon, MuonWithAuxAdam, NonFiniteGradientError, hybrid_param_groups
from muonkit.hybrid import classify_params, split_named_params, split_params


class TinyLM(nn.Module):
    def __init__(self, vocab=11, d=8, tied=True):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        x = self.norm(self.wte(idx))
        x = x + self.proj(torch.relu(self.fc(x)))
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.lm_head(x)


def test_split_puts_each_parameter_where_it_belongs():
    muon, adamw = split_named_params(TinyLM(tied=True))
    assert [n for n, _ in muon] == ["fc.weight", "proj.weight", "conv.weight"]
    assert sorted(n for n, _ in adamw) == sorted(
        ["wte.weight", "norm.weight", "norm.bias", "fc.bias", "conv.bias"]
    )  # the tied head is the embedding's weight, listed once
    roles = {n: r for n, _, r in classify_params(TinyLM(tied=False))}
    assert roles["lm_head.weight"] == "head" and roles["wte.weight"] == "embedding"
    assert roles["norm.bias"] == "vector" and roles["proj.weight"] == "muon"
    m, a = split_params(TinyLM(tied=False))
    assert len(m) + len(a) == len(list(TinyLM(tied=False).parameters()))


def loss_of(model, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 11, (4, 6), generator=g)
    return nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.roll(1, 1).flatten())


def test_adamw_part_matches_torch_adamw():
    torch.manual_seed(0)
    model = TinyLM(tied=False)
    twin = copy.deepcopy(model)
    _, adamw_names = split_named_params(model)
    names = [n for n, _ in adamw_names]
    ours = MuonWithAuxAdam(
        [
            dict(
                params=[p for n, p in model.named_parameters() if n in names],
                use_muon=False,
                lr=3e-3,
                betas=(0.9, 0.99),
                eps=1e-8,
                weight_decay=0.1,
            )
        ]
    )
    ref = torch.optim.AdamW(
        [p for n, p in twin.named_parameters() if n in names],
        lr=3e-3,
        betas=(0.9, 0.99),
        eps=1e-8,
        weight_decay=0.1,
        foreach=False,
    )
    for step in range(10):
        for m, opt in ((model, ours), (twin, ref)):
            opt.zero_grad(set_to_none=True)
            loss_of(m, step).backward()
            opt.step()
    for (n, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=n)


def test_muon_part_equals_plain_muon():
    torch.manual_seed(0)
    model = TinyLM()
    twin = copy.deepcopy(model)
    hybrid = MuonWithAuxAdam(hybrid_param_groups(model, muon_lr=0.03, adamw_lr=0.0))
    muon_params, _ = split_params(twin)
    plain = Muon(muon_params, lr=0.03)
    for step in range(3):
        for m, opt in ((model, hybrid), (twin, plain)):
            m.zero_grad(set_to_none=True)
            loss_of(m, step).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_groups_have_their_own_lrs_and_weight_decay():
    groups = hybrid_param_groups(
        TinyLM(tied=False),
        muon_lr=0.02,
        adamw_lr=1e-3,
        embedding_lr=0.2,
        head_lr=4e-3,
        adamw_weight_decay=0.1,
        ns_coefficients="polar_express",
    )
    by_role = {g["role"]: g for g in groups}
    assert by_role["muon"]["lr"] == 0.02 and by_role["muon"]["ns_coefficients"] == "polar_express"
    assert by_role["embedding"]["lr"] == 0.2 and by_role["head"]["lr"] == 4e-3
    assert by_role["vector"]["lr"] == 1e-3 and by_role["vector"]["weight_decay"] == 0.0
    assert by_role["head"]["weight_decay"] == 0.1
    opt = MuonWithAuxAdam(groups)
    assert opt.param_groups[0]["momentum"] == 0.95  # Muon defaults filled in
    assert opt.param_groups[1]["betas"] == (0.9, 0.95)  # AdamW defaults kept


def test_state_dict_round_trip_resumes_bit_identically():
    torch.manual_seed(0)
    model = TinyLM()
    start = copy.deepcopy(model)
    opt = MuonWithAuxAdam(hybrid_param_groups(model, adamw_lr=1e-2))
    for step in range(6):
        opt.zero_grad(set_to_none=True)
        loss_of(model, step).backward()
        opt.step()

    half = copy.deepcopy(start)
    opt1 = MuonWithAuxAdam(hybrid_param_groups(half, adamw_lr=1e-2))
    for step in range(3):
        opt1.zero_grad(set_to_none=True)
        loss_of(half, step).backward()
        opt1.step()
    saved_model, saved_opt = copy.deepcopy(half.state_dict()), copy.deepcopy(opt1.state_dict())
    resumed = TinyLM()
    resumed.load_state_dict(saved_model)
    opt2 = MuonWithAuxAdam(hybrid_param_groups(resumed, adamw_lr=1e-2))
    opt2.load_state_dict(saved_opt)
    for step in range(3, 6):
        opt2.zero_grad(set_to_none=True)
        loss_of(resumed, step).backward()
        opt2.step()
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_nonfinite_in_an_adamw_parameter_changes_nothing():
    torch.manual_seed(0)
    model = TinyLM()
    opt = MuonWithAuxAdam(hybrid_param_groups(model))
    loss_of(model, 0).backward()
    opt.step()
    before = copy.deepcopy(model.state_dict())
    state_before = copy.deepcopy(opt.state_dict())
    loss_of(model, 1).backward()
    model.norm.bias.grad[0] = float("inf")
    with pytest.raises(NonFiniteGradientError):
        opt.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for k, s in opt.state_dict()["state"].items():
        for name, t in s.items():
            assert torch.equal(t, state_before["state"][k][name])


@pytest.mark.parametrize(
    "group, match",
    [
        (dict(use_muon=False, betas=(0.9, 1.0)), "betas"),
        (dict(use_muon=False, lr=-1), "lr must be >= 0"),
        (dict(use_muon=True, momentum_form="nope"), "momentum_form"),
        (dict(use_muon="yes"), "use_muon"),
    ],
)
def test_bad_groups_raise(group, match):
    p = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match=match):
        MuonWithAuxAdam([dict(params=[p], **group)])


def test_groups_without_use_muon_and_vectors_in_muon_groups_raise():
    with pytest.raises(ValueError, match="use_muon"):
        MuonWithAuxAdam([dict(params=[nn.Parameter(torch.randn(3, 3))])])
    with pytest.raises(ValueError, match="MuonWithAuxAdam"):
        MuonWithAuxAdam([dict(params=[nn.Parameter(torch.randn(3))], use_muon=True)])


class Attn(nn.Module):
    def __init__(self, d=6, heads=2):
        super().__init__()
        self.mha = nn.MultiheadAttention(d, heads, bias=False)
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(3 * d, d, bias=False)  # 3 divides its rows too: must stay whole
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        x = x + self.mha(x, x, x, need_weights=False)[0]
        return self.head(self.c_proj(self.c_attn(x)))


def test_qkv_split_applies_ns_split_to_fused_qkv_weights_only():
    torch.manual_seed(0)
    model = Attn()
    groups = hybrid_param_groups(model, qkv_split=3)
    by_role = {g["role"]: g for g in groups}
    fused = {id(model.mha.in_proj_weight), id(model.c_attn.weight)}
    assert {id(p) for p in by_role["muon_qkv"]["params"]} == fused
    assert by_role["muon_qkv"]["ns_split"] == 3 and "ns_split" not in by_role["muon"]
    assert [id(p) for p in by_role["muon"]["params"]] == [
        id(model.mha.out_proj.weight),
        id(model.c_proj.weight),
    ]
    with pytest.raises(ValueError, match="qkv_split.*ns_split"):
        hybrid_param_groups(model, qkv_split=3, ns_split=3)
    # the step equals plain Muon with ns_split=3 on the fused weights and 1 on the others
    twin = copy.deepcopy(model)
    opt = MuonWithAuxAdam(groups)
    split, whole = (
        [twin.mha.in_proj_weight, twin.c_attn.weight],
        [twin.mha.out_proj.weight, twin.c_proj.weight],
    )
    refs = [Muon(split, ns_split=3), Muon(whole)]
    x = torch.randn(4, 2, 6)
    for m in (model, twin):
        m(x).sum().backward()
    opt.step()
    for r in refs:
        r.step()
    for a, b in [
        (model.c_attn.weight, twin.c_attn.weight),
        (model.c_proj.weight, twin.c_proj.weight),
    ]:
        assert torch.equal(a, b)


def test_head_bias_gets_no_weight_decay():
    model = Attn()
    groups = hybrid_param_groups(model, adamw_weight_decay=0.1)
    decayed = {
        id(p) for g in groups if not g["use_muon"] and g["weight_decay"] > 0 for p in g["params"]
    }
    assert id(model.head.weight) in decayed and id(model.head.bias) not in decayed


def test_muon_with_aux_adam_loads_a_state_dict_with_float_steps():
    torch.manual_seed(0)
    model = TinyLM()
    opt = MuonWithAuxAdam(hybrid_param_groups(model))
    loss_of(model, 0).backward()
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    for s in sd["state"].values():
        if "step" in s:
            s["step"] = float(s["step"])
    opt.load_state_dict(sd)
    loss_of(model, 1).backward()
    opt.step()
    assert all(
        torch.is_tensor(s["step"]) and s["step"].item() == 2
        for s in opt.state.values()
        if "step" in s
    )


def test_one_cycle_lr_cycles_the_muon_momentum():
    opt = MuonWithAuxAdam(hybrid_param_groups(TinyLM()))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=10)
    muon_group = opt.param_groups[0]
    assert muon_group["use_muon"] and muon_group["momentum"] == 0.95
    opt.step()
    sched.step()
    assert 0.85 <= muon_group["momentum"] < 0.95


@pytest.mark.parametrize("how", ["keyword", "options"])
def test_maximize_reaches_every_group(how):
    """hybrid_param_groups(maximize=True) ascends the whole model: the same parameters as
    minimizing the negated loss, the AdamW groups (embedding, head, vectors) included."""
    from muonkit import MuonOptions

    torch.manual_seed(0)
    up, down = TinyLM(), TinyLM()
    down.load_state_dict(up.state_dict())
    kw = {"maximize": True} if how == "keyword" else {"options": MuonOptions(maximize=True)}
    opt_up = MuonWithAuxAdam(hybrid_param_groups(up, **kw))
    opt_down = MuonWithAuxAdam(hybrid_param_groups(down))
    assert all(g["maximize"] for g in opt_up.param_groups)
    for seed in range(3):
        loss_of(up, seed).backward()
        (-loss_of(down, seed)).backward()
        opt_up.step()
        opt_down.step()
        opt_up.zero_grad()
        opt_down.zero_grad()
    for (name, a), b in zip(up.named_parameters(), down.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
