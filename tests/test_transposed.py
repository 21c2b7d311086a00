"""Weights stored transposed, (in, out), as Hugging Face GPT-2's Conv1D: Muon's ``transposed``
option and hybrid_param_groups' detection. The reference is the nn.Linear holding the same
linear map (its weight is the transpose), stepped by plain Muon."""

import pytest
import torch
from torch import nn

from muonkit import Muon, MuonOptions, MuonWithAuxAdam, hybrid_param_groups
from muonkit.functional import lr_scales
from muonkit.hybrid import is_transposed_linear
from muonkit.scaling import lr_scale
from muonkit.variants import KroneckerMuon, LoRAPreMuon
from muonkit.variants.normuon import NorMuon

FP32 = dict(ns_dtype=torch.float32)


@pytest.mark.parametrize("rule", ["keller", "mup", "moonlight"])
def test_lr_rule_sees_out_in_of_a_transposed_weight(rule):
    expected = lr_scale(rule, (256, 64))  # nn.Linear(64, 256).weight.shape
    assert lr_scales([(64, 256)], MuonOptions(lr_scaling=rule, transposed=True)) == [expected]
    assert lr_scales([(5, 64, 256)], MuonOptions(lr_scaling=rule, transposed=True,
                                                 ns_batch_dims=1)) == [expected]  # fmt: skip


@pytest.mark.parametrize(
    "shape, options",
    [((64, 256), {}), ((48, 12), dict(ns_split=3)), ((2, 8, 6), dict(ns_batch_dims=1))],
)
def test_transposed_muon_steps_the_transpose_of_plain_muon(shape, options):
    torch.manual_seed(0)
    stored = nn.Parameter(torch.randn(shape))
    reference = nn.Parameter(stored.detach().mT.clone())
    opt = Muon([stored], lr=0.1, transposed=True, weight_decay=0.1, **options, **FP32)
    ref = Muon([reference], lr=0.1, weight_decay=0.1, **options, **FP32)
    for _ in range(3):
        grad = torch.randn(reference.shape)
        stored.grad, reference.grad = grad.mT.clone(), grad
        opt.step()
        ref.step()
    torch.testing.assert_close(stored.detach().mT, reference.detach(), rtol=1e-5, atol=1e-6)


def test_transposed_refuses_shapes_it_cannot_read_and_variants_refuse_it():
    with pytest.raises(ValueError, match="transposed=True takes matrices"):
        Muon([nn.Parameter(torch.randn(4, 4, 3))], transposed=True)
    with pytest.raises(ValueError, match=r"ns_split=3 must divide dim 1"):
        Muon([nn.Parameter(torch.randn(6, 4))], transposed=True, ns_split=3)
    params = [nn.Parameter(torch.randn(8, 8))]
    for cls in (NorMuon, KroneckerMuon, LoRAPreMuon):
        with pytest.raises(ValueError, match="transposed=False only"):
            cls(params, transposed=True)


class Conv1DPair(nn.Module):
    """GPT-2's c_attn and c_fc as transformers Conv1D, and nn.Linear twins holding the same
    maps (separate modules, so the hybrid groups them apart)."""

    def __init__(self, conv1d, d=64):
        super().__init__()
        self.attn = nn.Module()
        self.attn.c_attn = conv1d(3 * d, d)
        self.attn.c_fc = conv1d(4 * d, d)
        self.twin = nn.Module()
        self.twin.c_attn = nn.Linear(d, 3 * d)
        self.twin.c_fc = nn.Linear(d, 4 * d)
        with torch.no_grad():
            for name in ("c_attn", "c_fc"):
                conv, linear = getattr(self.attn, name), getattr(self.twin, name)
                linear.weight.copy_(conv.weight.T)
                linear.bias.copy_(conv.bias)


@pytest.mark.parametrize("rule, qkv_split", [("keller", 1), ("mup", 1), ("keller", 3)])
def test_hf_conv1d_weights_step_as_the_equivalent_linear(rule, qkv_split):
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(0)
    model = Conv1DPair(pytorch_utils.Conv1D)
    assert is_transposed_linear(model.attn.c_fc) and not is_transposed_linear(model.twin.c_fc)
    groups = hybrid_param_groups(model, muon_lr=0.05, qkv_split=qkv_split, lr_scaling=rule, **FP32)
    roles = {g["role"]: g for g in groups}
    conv_weights = [model.attn.c_attn.weight, model.attn.c_fc.weight]
    if qkv_split == 1:
        assert roles["muon_transposed"]["params"] == conv_weights
    else:
        assert roles["muon_qkv_transposed"]["params"] == conv_weights[:1]
        assert roles["muon_qkv_transposed"]["ns_split"] == qkv_split
        assert roles["muon_transposed"]["params"] == conv_weights[1:]
    assert roles["muon_transposed"]["transposed"] is True
    opt = MuonWithAuxAdam(groups)
    x = torch.randn(5, 64)
    for _ in range(3):
        opt.zero_grad()
        loss = sum((m.c_attn(x).square().mean() + m.c_fc(x).sin().mean())
                   for m in (model.attn, model.twin))  # fmt: skip
        loss.backward()
        opt.step()
    for name in ("c_attn", "c_fc"):
        conv, linear = getattr(model.attn, name), getattr(model.twin, name)
        torch.testing.assert_close(conv.weight.detach().T, linear.weight.detach(),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
    # (64, 256) Conv1D = nn.Linear(64, 256): the rule's scale of (out, in) = (256, 64)
    assert lr_scales([model.attn.c_fc.weight.shape], MuonOptions.from_group(
        opt.param_groups[[g["role"] for g in groups].index("muon_transposed")])) == [
        lr_scale(rule, model.twin.c_fc.weight.shape)]  # fmt: skip


def test_transposed_weights_can_be_named():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 4), nn.Linear(4, 2))  # 2: the output
    groups = hybrid_param_groups(model, transposed_weights=["1.weight"])
    assert [(g["role"], g.get("transposed")) for g in groups if g["use_muon"]] == [
        ("muon", None), ("muon_transposed", True)]  # fmt: skip
