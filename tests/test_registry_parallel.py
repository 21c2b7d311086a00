"""Every optimizer of the registry keeps its class and its math under every ``--parallel`` mode
it accepts, and is refused (one line naming both) under the others.

Under DDP the reference is the same optimizer in one process on the global batch: 2 gloo ranks
each see half of it, DDP averages their gradients, so after a few steps every rank's weights
must equal the single-process weights (to fp32 rounding, which AdamW amplifies where a
gradient is near 0; Newton-Schulz in fp32). One spawn runs all optimizers.
"""

from __future__ import annotations

import pytest
import torch

from muonkit import registry
from muonkit.distributed import spawn
from muonkit.distributed.parallel import DDP_CLASSES, distribute_optimizer
from muonlab.models.gpt import GPT, preset_config
from muonlab.train.gpt import lm_loss

STEPS = 3
BATCH, BLOCK, VOCAB = 4, 16, 32
DDP_OPTIMIZERS = [n for n, s in registry.OPTIMIZERS.items() if "ddp" in s.parallel]
OPTIONS = {"lorapre": {"rank": 2}}  # and fp32 Newton-Schulz (auto may pick bf16 steps by CPU)


def make_model() -> GPT:
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=VOCAB, block_size=BLOCK, n_layer=2)
    return GPT(cfg)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(0, VOCAB, (BATCH, BLOCK), generator=g)
    return x, torch.roll(x, -1, dims=1)


def train(name: str, rank: int = 0, world: int = 1) -> tuple[str, dict[str, torch.Tensor]]:
    """``STEPS`` steps of optimizer ``name``; under a process group, DDP with ``rank``'s share
    of each global batch. Returns the optimizer's class name and the final weights."""
    model = make_model()
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    muon = {"ns_dtype": torch.float32} if registry.get(name).is_muon else {}
    opt = model.configure_optimizers(name, lr=1e-2, muon_lr=0.05, **muon, **OPTIONS.get(name, {}))
    if world > 1:
        opt = distribute_optimizer(opt, "ddp")
    share = BATCH // world
    for step in range(STEPS):
        x, y = batch(step)
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        lm_loss(net, (x, y)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return type(opt).__name__, {k: v.detach().clone() for k, v in model.state_dict().items()}


def ddp_worker(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    results = {name: train(name, rank, world) for name in DDP_OPTIMIZERS}
    torch.save(results, f"{out_dir}/rank{rank}.pt")


def expected_class(name: str) -> str:
    spec = registry.get(name)
    if spec.hybrid is None:
        return "AdamW"
    return DDP_CLASSES.get(spec.hybrid, spec.hybrid).__name__


@pytest.mark.timeout(300)
def test_every_registry_optimizer_keeps_its_class_and_math_under_ddp(tmp_path):
    spawn(ddp_worker, 2, args=(str(tmp_path),), timeout_s=240)
    for rank in (0, 1):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for name in DDP_OPTIMIZERS:
            cls, weights = results[name]
            assert cls == expected_class(name), (name, cls)
            _, reference = train(name)
            for key, ref in reference.items():
                torch.testing.assert_close(weights[key], ref, rtol=1e-3, atol=1e-4,
                                           msg=lambda m, n=name, k=key: f"{n} {k}: {m}")


def test_variants_keep_their_class_under_ddp():
    """Without a process group: the class ``distribute_optimizer`` would pick (the variants are
    not rebuilt as DistributedMuonWithAuxAdam)."""
    for name in ("lorapre", "kronecker", "kronecker-hybrid"):
        assert expected_class(name) == registry.get(name).hybrid.__name__
    assert expected_class("normuon") == "DistributedNorMuonWithAuxAdam"
    assert expected_class("muon") == "DistributedMuonWithAuxAdam"


@pytest.mark.parametrize("name", ["lorapre", "kronecker", "kronecker-hybrid"])
@pytest.mark.parametrize("mode", ["fsdp2", "hsdp"])
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
