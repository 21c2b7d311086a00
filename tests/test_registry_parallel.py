"""Every optimizer of the registry keeps its class and its math under every ``--parallel`` mode
it accepts, and is refused (one line naming both) under the others.

The reference is the same optimizer in one process on the global batch: 2 gloo ranks each see
half of it and average their gradients (DDP all-reduce; FSDP2 reduce-scatter; HSDP on a
(2 replicas x 1 shard) mesh, all-reduce across replicas), so after a few steps every rank's
weights must equal the single-process weights (to fp32 rounding, which AdamW amplifies where a
gradient is near 0; Newton-Schulz in fp32). One spawn runs every (optimizer, mode) pair.
"""

from __future__ import annotations

import pytest
import torch

from muonkit import registry
from muonkit.distributed import spawn
from muonkit.distributed.parallel import DDP_CLASSES, distribute_optimizer, parallelize
from muonlab.models.gpt import GPT, preset_config
from muonlab.train.gpt import gpt_optimizer, lm_loss

STEPS = 3
BATCH, BLOCK, VOCAB = 4, 16, 32
PAIRS = [(n, m) for n, s in registry.OPTIMIZERS.items() for m in s.parallel if m != "none"]
REFUSED = [(n, m) for n, s in registry.OPTIMIZERS.items()
           for m in registry.PARALLEL_MODES if m not in s.parallel]
OPTIONS = {"lorapre": {"rank": 2}}  # and fp32 Newton-Schulz (auto may pick bf16 steps by CPU)


def make_model() -> GPT:
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=VOCAB, block_size=BLOCK, n_layer=2)
    return GPT(cfg)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(0, VOCAB, (BATCH, BLOCK), generator=g)
    return x, torch.roll(x, -1, dims=1)


def train(name: str, mode: str = "none", rank: int = 0, world: int = 1):
    """``STEPS`` steps of optimizer ``name``; under ``mode`` (a process group of ``world``
    ranks), ``rank``'s share of each global batch. Returns the optimizer's class name and the
    final weights (whole tensors)."""
    model = make_model()
    net = model
    if mode != "none":
        replicate = world if mode == "hsdp" else 1  # HSDP: 2 replicas of 1 shard
        net = parallelize(model, mode, torch.device("cpu"), replicate=replicate)
    muon = {"ns_dtype": torch.float32} if registry.get(name).is_muon else {}
    opt = gpt_optimizer(model, name, lr=1e-2, muon_lr=0.05, **muon, **OPTIONS.get(name, {}))
    if mode != "none":
        opt = distribute_optimizer(opt, mode)
    share = BATCH // world
    for step in range(STEPS):
        x, y = batch(step)
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        lm_loss(net, (x, y)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    weights = {k: getattr(v, "full_tensor", v.detach)().detach().clone()
               for k, v in model.state_dict().items()}
    return type(opt).__name__, weights


def parallel_worker(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    results = {pair: train(*pair, rank, world) for pair in PAIRS}
    for name, mode in REFUSED:  # distribute_optimizer itself refuses, under a process group
        opt = gpt_optimizer(make_model(), name, **OPTIONS.get(name, {}))
        try:
            results[name, mode] = type(distribute_optimizer(opt, mode)).__name__
        except ValueError as e:
            results[name, mode] = str(e)
    torch.save(results, f"{out_dir}/rank{rank}.pt")


def expected_class(name: str, mode: str) -> str:
    """Under DDP a Muon hybrid with a distributed form becomes it; otherwise the class stays."""
    spec = registry.get(name)
    if spec.hybrid is None:
        return "AdamW"
    if mode == "ddp":
        return DDP_CLASSES.get(spec.hybrid, spec.hybrid).__name__
    return spec.hybrid.__name__


@pytest.mark.timeout(300)
def test_every_registry_optimizer_keeps_its_class_and_math_under_every_mode(tmp_path):
    assert {m for _, m in PAIRS} == {"ddp", "fsdp2", "hsdp"}, "every mode is exercised"
    spawn(parallel_worker, 2, args=(str(tmp_path),), timeout_s=240)
    references = {name: train(name) for name in registry.OPTIMIZERS}
    for rank in (0, 1):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for name, mode in PAIRS:
            cls, weights = results[name, mode]
            assert cls == expected_class(name, mode), (name, mode, cls)
            for key, ref in references[name][1].items():
                torch.testing.assert_close(
                    weights[key], ref, rtol=1e-3, atol=1e-4,
                    msg=lambda m, n=name, d=mode, k=key: f"{n} --parallel {d} {k}: {m}")
        for name, mode in REFUSED:  # one class may serve two names: the message names it
            who = expected_class(name, "none")
            assert results[name, mode].startswith(
                f"{who} cannot run under --parallel {mode} ("), results[name, mode]


def test_variants_keep_their_class_under_ddp():
    """Without a process group: the class ``distribute_optimizer`` would pick (the variants are
    not rebuilt as DistributedMuonWithAuxAdam)."""
    for name in ("lorapre", "kronecker", "kronecker-hybrid"):
        assert expected_class(name, "ddp") == registry.get(name).hybrid.__name__
    assert expected_class("normuon", "ddp") == "DistributedNorMuonWithAuxAdam"
    assert expected_class("muon", "ddp") == "DistributedMuonWithAuxAdam"


def test_names_of_one_class_share_its_parallel_rules():
    """``distribute_optimizer`` sees a class, not a name (kronecker, kronecker-hybrid)."""
    for a in registry.OPTIMIZERS.values():
        for b in registry.OPTIMIZERS.values():
            if a.hybrid is b.hybrid:
                assert (a.parallel, a.ddp_class) == (b.parallel, b.ddp_class), (a.name, b.name)


@pytest.mark.parametrize(("name", "mode"), REFUSED)
def test_refused_modes_name_optimizer_and_mode(name, mode):
    with pytest.raises(ValueError, match=f"--optimizer {name} cannot run under --parallel {mode}"):
        registry.check_parallel(name, mode)


def test_cli_refuses_unsupported_pair_in_one_line(tmp_path, capsys):
    from muonlab.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--parallel", "fsdp2", "--optimizer", "kronecker", "--preset", "tiny",
              "--steps", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert "--optimizer kronecker cannot run under --parallel fsdp2" in err[0]
    assert not (tmp_path / "run").exists(), "refused before anything is written"
