"""The memory-saving variants as the Muon part of the GPT hybrid (``lorapre``, ``kronecker``,
``kronecker-hybrid``), their state bytes, and the GPT variant study."""

import copy
import inspect

import pytest
import torch

from muonkit.models.gpt import GPT, preset_config
from muonkit.report.metrics import load_run
from muonkit.train.gpt import train_gpt
from muonkit.train.loop import METRICS, TrainConfig
from muonkit.train.measure import muon_state_bytes, optimizer_state_bytes
from muonkit.variants import (
    KroneckerMuon,
    KroneckerMuonWithAuxAdam,
    LoRAPreMuon,
    LoRAPreMuonWithAuxAdam,
    kronecker_shapes,
)

VOCAB = 11
OPTS = dict(lr=3e-3, muon_lr=0.03, weight_decay=0.1, betas=(0.9, 0.95))


def tiny_gpt(seed=0, n_layer=2):
    torch.manual_seed(seed)
    return GPT(preset_config("tiny", vocab_size=VOCAB, n_layer=n_layer, n_embd=16, n_head=2,
                             block_size=8))


def set_grads(model, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def reference(model, kind, rank=None):
    """The variant alone on the hidden matrices plus torch's AdamW on the rest (weight decay
    on the embedding, none on vectors): what the hybrid must do."""
    roles = model.param_roles()
    named = dict(model.named_parameters())
    muon = [named[n] for n, r in roles.items() if r == "muon"]
    common = dict(lr=OPTS["muon_lr"], momentum=0.95)
    if kind == "lorapre":
        variant = LoRAPreMuon(muon, rank=rank, **common)
    else:
        last = set(map(id, model.blocks[-1].parameters())) if kind == "kronecker-hybrid" else ()
        variant = KroneckerMuon(muon, dense=[p for p in muon if id(p) in last], **common)
    adamw = torch.optim.AdamW(
        [{"params": [named[n] for n, r in roles.items() if r == "embedding"]},
         {"params": [named[n] for n, r in roles.items() if r == "vector"], "weight_decay": 0.0}],
        lr=OPTS["lr"], betas=OPTS["betas"], weight_decay=OPTS["weight_decay"])
    return variant, adamw


@pytest.mark.parametrize("kind,rank", [("lorapre", 3), ("kronecker", None),
                                       ("kronecker-hybrid", None)])
def test_variant_hybrid_is_the_variant_plus_adamw(kind, rank):
    model, ref_model = tiny_gpt(), tiny_gpt()
    extra = {"rank": rank} if rank else {}
    opt = model.configure_optimizers(kind, **OPTS, **extra)
    variant, adamw = reference(ref_model, kind, rank)
    for step in range(4):
        set_grads(model, step)
        set_grads(ref_model, step)
        opt.step()
        variant.step()
        adamw.step()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert optimizer_state_bytes([opt]) == optimizer_state_bytes([variant, adamw])
    assert muon_state_bytes([opt]) == optimizer_state_bytes([variant])


def test_kronecker_hybrid_keeps_dense_momentum_on_the_last_block_only():
    model = tiny_gpt()
    opt = model.configure_optimizers("kronecker-hybrid", **OPTS)
    set_grads(model, 0)
    opt.step()
    last = set(map(id, model.blocks[-1].parameters()))
    for name, role in model.param_roles().items():
        if role != "muon":
            continue
        p = dict(model.named_parameters())[name]
        keys = set(opt.state[p])
        assert keys == ({"momentum_buffer"} if id(p) in last else {"kron_f1", "kron_f2"}), name


def test_kronecker_hybrid_resumes_from_its_state_dict():
    """A loaded state dict (AdamW groups have no ``dense_momentum``) continues exactly."""
    model, copy_model = tiny_gpt(), tiny_gpt()
    opt = model.configure_optimizers("kronecker-hybrid", **OPTS)
    set_grads(model, 0)
    opt.step()
    copy_model.load_state_dict(model.state_dict())
    resumed = copy_model.configure_optimizers("kronecker-hybrid", **OPTS)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch would share tensors
    for m, o in ((model, opt), (copy_model, resumed)):
        set_grads(m, 1)
        o.step()
    for p, q in zip(model.parameters(), copy_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("cls,variant", [(LoRAPreMuonWithAuxAdam, LoRAPreMuon),
                                         (KroneckerMuonWithAuxAdam, KroneckerMuon)])
def test_variant_defaults_are_the_variants_own(cls, variant):
    signature = inspect.signature(variant.__init__).parameters
    assert cls.variant_defaults == {k: signature[k].default for k in cls.variant_defaults}


def test_state_bytes_are_those_of_the_state_tensors():
    """Muon part and total against the formulas: dense out*in, LoRA-Pre (out+in)*r,
    Kronecker m1 n1 + m2 n2 floats per hidden matrix; AdamW 2 moments + a step per tensor."""
    model = tiny_gpt()
    roles = model.param_roles()
    named = dict(model.named_parameters())
    shapes = [tuple(named[n].shape) for n, r in roles.items() if r == "muon"]
    aux = [named[n] for n, r in roles.items() if r != "muon"]
    aux_bytes = sum(2 * 4 * p.numel() + 4 for p in aux)
    expected = {
        "muon": sum(o * i for o, i in shapes),
        "lorapre": sum((o + i) * 2 for o, i in shapes),
        "kronecker": sum(a * b + c * d for (a, b), (c, d) in map(kronecker_shapes, *zip(*shapes))),
    }
    for kind, floats in expected.items():
        opt = model.configure_optimizers(kind, **OPTS, **({"rank": 2} if kind == "lorapre" else {}))
        set_grads(model, 0)
        opt.step()
        assert muon_state_bytes([opt]) == 4 * floats, kind
        assert optimizer_state_bytes([opt]) == 4 * floats + aux_bytes, kind
    adamw = model.configure_optimizers("adamw", **OPTS)
    adamw.step()
    assert muon_state_bytes([adamw]) == 0


def test_rank_is_refused_for_other_kinds():
    with pytest.raises(ValueError, match="rank"):
        tiny_gpt().configure_optimizers("kronecker", rank=4)


@pytest.mark.parametrize("kind", ["lorapre", "kronecker", "kronecker-hybrid"])
def test_variants_train_the_gpt(kind, tmp_path):
    cfg = TrainConfig(steps=30, warmup_steps=0, eval_every=30, out_dir=str(tmp_path),
                      progress=False, tensorboard=False, device="cpu", seed=0)
    train_gpt(kind, batch_size=4, block_size=16, eval_batches=2,
              model_overrides={"n_layer": 1, "n_embd": 32, "n_head": 2},
              optimizer_options={"lr": 3e-3, "muon_lr": 0.03}, train_config=cfg)
    run = load_run(tmp_path / METRICS)
    assert run.optimizer == kind
    assert run.val[-1]["val_loss"] < run.val[0]["val_loss"] - 0.3
    assert 0 < run.summary["muon_state_bytes"] < run.summary["optimizer_state_bytes"]
