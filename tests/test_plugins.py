"""The two plug points of the Muon step: a momentum store and a post step.

A user's store plugged into Muon's step (or the hybrid) gives the built-in class it mirrors;
NorMuon's post step composes with every store, in the stand-alone class and in the one hybrid.
References: a hand-written heavy-ball store, and each store's own optimizer followed by
:func:`muonkit.variants.normuon.neuron_normalize` by hand.
"""

import pytest
import torch
from torch import nn

from muonkit import Muon, MuonWithAuxAdam, hybrid_param_groups, registry
from muonkit.muon import DENSE_MOMENTUM, MUON_DEFAULTS, MomentumStore, MuonBase
from muonkit.variants import KroneckerMuon, LoRAPreMuon
from muonkit.variants.kronecker import KRONECKER_MOMENTUM
from muonkit.variants.lowrank import LOW_RANK_MOMENTUM
from muonkit.variants.normuon import ROW_NORMALIZATION, neuron_normalize

SHAPES = [(16, 12), (12, 16), (16, 12)]


class HeavyBall(MomentumStore):
    """A user's store: Muon's standard Nesterov momentum, written out by hand."""

    elementwise = True

    def updates(self, optimizer, group, params, grads, options, view=lambda t: t):
        mu, out = options.momentum, []
        for p, g in zip(params, grads):
            buf = optimizer.state[p].setdefault("my_buffer", torch.zeros_like(p))
            buf.mul_(mu).add_(g)
            out.append(g + mu * buf)
        return out


def grads_for(params, steps=4):
    gen = torch.Generator().manual_seed(1)
    return [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(steps)]


def fresh(shapes=SHAPES):
    gen = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def test_a_user_store_gives_the_class_it_mirrors():
    class MyMuon(Muon):
        store = HeavyBall()

    ours, theirs = fresh(), fresh()
    mine, muon = MyMuon(ours, lr=0.05, weight_decay=0.1), Muon(theirs, lr=0.05, weight_decay=0.1)
    for step in grads_for(ours):
        for opt, params in ((mine, ours), (muon, theirs)):
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert set(mine.state[ours[0]]) == {"my_buffer"}


def optimizer_with(store, post_step, params, **group):
    """A MuonBase with ``store`` and ``post_step`` and steps of exactly ``-update`` (lr 1, no LR
    scaling, no weight decay)."""
    plugged = type("Plugged", (MuonBase,), {"store": store, "post_step": post_step})
    defaults = dict(MUON_DEFAULTS, lr=1.0, lr_scaling="none", **plugged.variant_defaults)
    return plugged(params, {**defaults, **group})


@pytest.mark.parametrize("store", [DENSE_MOMENTUM, LOW_RANK_MOMENTUM, KRONECKER_MOMENTUM],
                         ids=["dense", "lowrank", "kronecker"])
def test_row_normalization_composes_with_every_store(store):
    """With params reset to zero before each step, a step writes ``-update``: the composed
    optimizer's update is the store-only optimizer's, row-normalized by hand."""
    plain_params, plugged_params = fresh(), fresh()
    group = {"rank": 4} if store is LOW_RANK_MOMENTUM else {}
    plain = optimizer_with(store, None, plain_params, **group)
    plugged = optimizer_with(store, ROW_NORMALIZATION, plugged_params, beta2=0.9, **group)
    moments = [torch.zeros(s[0]) for s in SHAPES]
    for step in grads_for(plain_params):
        for opt, params in ((plain, plain_params), (plugged, plugged_params)):
            for p, g in zip(params, step):
                p.data.zero_()
                p.grad = g.clone()
            opt.step()
        for p, q, v in zip(plain_params, plugged_params, moments):
            expected = neuron_normalize(-p.detach(), v, beta2=0.9, eps=1e-8)
            torch.testing.assert_close(-q.detach(), expected, rtol=1e-6, atol=1e-7)
    for q, v in zip(plugged_params, moments):
        torch.testing.assert_close(plugged.state[q]["row_second_moment"], v)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 12), nn.Linear(12, 16),
                         nn.Linear(16, 10))  # the output layer: AdamW's


def test_the_one_hybrid_takes_any_store_and_post_step():
    """A hybrid that no class of muonkit names (low-rank momentum + row normalization): its
    Muon groups step as the stand-alone optimizer with both, its AdamW groups as the plain
    hybrid's, and the group options of both plug-ins are hybrid_param_groups keywords."""

    class LowRankNorMuonWithAuxAdam(MuonWithAuxAdam):
        store, post_step = LOW_RANK_MOMENTUM, ROW_NORMALIZATION

    assert LowRankNorMuonWithAuxAdam.variant_defaults == {
        **LOW_RANK_MOMENTUM.group_defaults, **ROW_NORMALIZATION.group_defaults
    }
    hybrid_model, plain_model, alone_model = model(), model(), model()
    hybrid = LowRankNorMuonWithAuxAdam(hybrid_param_groups(hybrid_model, rank=4, beta2=0.9))
    plain = MuonWithAuxAdam(hybrid_param_groups(plain_model))
    alone_params = [alone_model[1].weight, alone_model[2].weight]
    alone = optimizer_with(LOW_RANK_MOMENTUM, ROW_NORMALIZATION, alone_params, rank=4, beta2=0.9)
    alone.param_groups[0]["lr"], alone.param_groups[0]["lr_scaling"] = 0.02, "keller"
    for t in range(3):
        for m in (hybrid_model, plain_model, alone_model):
            gen = torch.Generator().manual_seed(t)
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
        for opt in (hybrid, plain, alone):
            opt.step()
    for name, p in hybrid_model.named_parameters():
        matrix = name in ("1.weight", "2.weight")
        reference = dict((alone_model if matrix else plain_model).named_parameters())[name]
        torch.testing.assert_close(p, reference, rtol=0, atol=0)
    muon_param = hybrid_model[1].weight
    assert set(hybrid.state[muon_param]) == {"row_second_moment", "lowrank_B", "lowrank_A"}


def test_registry_names_the_store_and_post_step_of_each_optimizer():
    table = {name: (spec.store, spec.post_step) for name, spec in registry.OPTIMIZERS.items()}
    assert table == {
        "adamw": (None, None),
        "muon": (DENSE_MOMENTUM, None),
        "normuon": (DENSE_MOMENTUM, ROW_NORMALIZATION),
        "lorapre": (LOW_RANK_MOMENTUM, None),
        "kronecker": (KRONECKER_MOMENTUM, None),
        "kronecker-hybrid": (KRONECKER_MOMENTUM, None),
    }
    assert LoRAPreMuon.store is LOW_RANK_MOMENTUM and KroneckerMuon.store is KRONECKER_MOMENTUM
