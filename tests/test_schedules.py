import pytest
import torch

from muonkit import Muon, MuonWarning, MuonWithAuxAdam
from muonkit.schedules import apply_schedules, lr_multiplier, muon_momentum


def test_lr_warmup_then_cosine_to_floor():
    f = dict(total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, **f) == pytest.approx(0.1)
    assert lr_multiplier(9, **f) == pytest.approx(1.0)
    assert lr_multiplier(10, **f) == pytest.approx(1.0)
    assert lr_multiplier(60, **f) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos = 0
    assert lr_multiplier(110, **f) == pytest.approx(0.1)
    assert lr_multiplier(500, **f) == pytest.approx(0.1)


def test_linear_and_constant_decay():
    assert lr_multiplier(50, total_steps=100, decay="linear") == pytest.approx(0.5)
    assert lr_multiplier(99, total_steps=100, warmup_steps=5, decay="constant") == 1.0
    with pytest.raises(ValueError, match="decay"):
        lr_multiplier(0, total_steps=10, decay="step")


def test_muon_momentum_warmup():
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == pytest.approx(0.95)
    assert muon_momentum(10_000) == pytest.approx(0.95)


def test_apply_schedules_scales_each_group_from_its_own_base_lr():
    w, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))
    opt = MuonWithAuxAdam(
        [dict(params=[w], use_muon=True, lr=0.02), dict(params=[b], use_muon=False, lr=1e-3)]
    )
    apply_schedules(opt, 0, lr_mult=0.5, muon_momentum=0.9)
    apply_schedules(opt, 1, lr_mult=0.25, muon_momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 2.5e-4])
    assert opt.param_groups[0]["momentum"] == 0.9
    assert "momentum" not in opt.param_groups[1]


def test_lr_scheduler_compatibility():
    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = Muon([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, total_steps=10))
    w.grad = torch.randn(6, 4)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * lr_multiplier(5, total_steps=10))


def test_apply_schedules_over_a_torch_scheduler_warns_once_or_leaves_its_lr_with_none():
    """apply_schedules sets the lr: over a torch LR scheduler it says so once; lr_mult=None
    keeps the scheduler's LR (LambdaLR's own arithmetic) and sets only Muon's momentum."""
    w, b = torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(4))
    opt = MuonWithAuxAdam(
        [dict(params=[w], use_muon=True, lr=0.1), dict(params=[b], use_muon=False, lr=1e-3)]
    )
    factor = lambda s: lr_multiplier(s, total_steps=10)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    w.grad, b.grad = torch.randn(6, 4), torch.randn(4)
    for step in range(5):
        apply_schedules(opt, step, lr_mult=None, muon_momentum=muon_momentum(step))
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * factor(5), 1e-3 * factor(5)])
    assert opt.param_groups[0]["momentum"] == pytest.approx(muon_momentum(4))
    with pytest.warns(MuonWarning, match="overrides the torch LR scheduler") as said:
        apply_schedules(opt, 5, lr_mult=1.0)
        apply_schedules(opt, 6, lr_mult=1.0)
    assert len([w for w in said if w.category is MuonWarning]) == 1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 1e-3])
