"""Distributed Muon on CPU/gloo against single-process muonkit.Muon (the reference).

One spawn per world size runs every scenario in the same process group (spawning is the slow
part on a small machine); the ranks write what they end with, and the tests compare it with
single-process runs made here. Each spawn has a hard timeout (muonkit.distributed.spawn) and
pytest-timeout, so a hang fails instead of blocking CI.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter

import pytest
import torch
from torch import nn

from muonkit import Muon, MuonWithAuxAdam
from muonkit.distributed import (
    DistributedMuon,
    DistributedMuonWithAuxAdam,
    assign_owners,
    compute_cleanup,
    compute_init,
    load_checkpoint,
    save_checkpoint,
    shard_rows,
    spawn,
)
from muonkit.muon import NonFiniteGradientError
from muonkit.schedules import apply_schedules
from muonlab.train import accumulate_gradients

# dim 0 not divisible by 2, 3 or 4 (5, 7), smaller than W (2, 1, 3), a same-shape batch of
# three (5, 4), a conv-like 3-D kernel, a fused "QKV" q0 (the hybrid orthogonalizes it as 3
# blocks, ns_split=3, in a second Muon group) and t0, stored (in, out) as GPT-2's Conv1D (a third
# group: transposed=True, ns_split=3 on its out dim, FSDP2 shards its in dim); r0 is replicated
# under FSDP2 (Replicate DTensor).
MATRICES = {"w0": (5, 4), "w1": (5, 4), "w2": (5, 4), "w3": (2, 6), "w4": (7, 3),
            "w5": (3, 2, 2), "w6": (1, 5), "q0": (6, 4), "t0": (4, 6)}  # fmt: skip
REPLICATED = {"r0": (6, 4)}
VECTORS = {"b0": (5,), "b1": (1,)}
STEPS = 3  # steps compared with the single-process run; DCP saves at K and resumes to 2K
K = 2
WORLD_SIZES = (1, 2, 3, 4)
MUON_OPTS = dict(lr=0.05, momentum=0.9, weight_decay=0.1)
ADAMW_OPTS = dict(lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


class Net(nn.Module):
    """Parameters only: the optimizer is under test, gradients are fixed (``grads_at``)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.body = nn.Module()
        for name, shape in {**MATRICES, **VECTORS}.items():
            self.body.register_parameter(name, nn.Parameter(torch.randn(shape, generator=g)))
        self.rep = nn.Module()
        for name, shape in REPLICATED.items():
            self.rep.register_parameter(name, nn.Parameter(torch.randn(shape, generator=g)))

    def muon_params(self):
        return [p for n, p in self.named_parameters() if p.ndim >= 2]

    def vector_params(self):
        return [p for n, p in self.named_parameters() if p.ndim < 2]


def grads_at(step: int) -> dict[str, torch.Tensor]:
    """The fixed full gradient of every parameter (by name) at ``step``."""
    g = torch.Generator().manual_seed(1000 + step)
    shapes = {**{f"body.{n}": s for n, s in {**MATRICES, **VECTORS}.items()},
              **{f"rep.{n}": s for n, s in REPLICATED.items()}}  # fmt: skip
    return {name: torch.randn(shape, generator=g) for name, shape in sorted(shapes.items())}


def muon_groups(net: Net) -> list[dict]:
    qkv, stored_in_out = net.get_parameter("body.q0"), net.get_parameter("body.t0")
    plain = [p for p in net.muon_params() if p is not qkv and p is not stored_in_out]
    return [
        dict(params=plain, use_muon=True, **MUON_OPTS),
        dict(params=[qkv], use_muon=True, ns_split=3, **MUON_OPTS),
        dict(params=[stored_in_out], use_muon=True, ns_split=3, transposed=True, **MUON_OPTS),
        dict(params=net.vector_params(), use_muon=False, **ADAMW_OPTS),
    ]


def set_grads(net: Net, step: int, nan_in_first_row: bool = False) -> None:
    """p.grad = the fixed gradient; for a DTensor parameter, this rank's part of it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, full in grads_at(step).items():
        p = net.get_parameter(name)
        if nan_in_first_row and p.ndim >= 2:
            full[0, 0] = float("nan")
        if isinstance(p, DTensor):
            full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
        p.grad = full


def run(net: nn.Module, opt, steps: range) -> None:
    """Fixed gradients, and a decaying LR (``initial_lr`` must survive a checkpoint)."""
    for step in steps:
        apply_schedules(opt, step, lr_mult=1.0 / (1 + step))
        set_grads(net, step)
        opt.step()
        opt.zero_grad(set_to_none=True)


def full_params(net: nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    return {
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for n, p in net.named_parameters()
    }


# ---------------------------------------------------------------------------------------------
# the spawned worker
# ---------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """For the end-to-end check: real forward/backward through DDP and FSDP2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(5, 7), nn.Linear(7, 3)])

    def forward(self, x):
        return self.layers[1](torch.tanh(self.layers[0](x)))


def mlp_batch(step: int, rank: int = 0, world: int = 1):
    """This rank's rows of the step's global batch of 12 (divisible by W = 1..4)."""
    g = torch.Generator().manual_seed(500 + step)
    x, y = torch.randn(12, 5, generator=g), torch.randn(12, 3, generator=g)
    return x[rank::world], y[rank::world]


def train_mlp(model: nn.Module, opt, rank: int = 0, world: int = 1) -> None:
    for step in range(STEPS):
        x, y = mlp_batch(step, rank, world)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


ACCUM_MICRO, ACCUM_ROWS = 3, 6  # micro-batches per step, rows per rank


def accum_batch(world: int):
    g = torch.Generator().manual_seed(77)
    n = world * ACCUM_ROWS
    return torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g)


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def count_allreduces(ddp_model) -> int:
    """All-reduce calls DDP has made through its comm hook so far (a hook is installed once)."""
    if not hasattr(ddp_model, "allreduce_calls"):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        ddp_model.allreduce_calls = 0

        def hook(state, bucket):
            ddp_model.allreduce_calls += 1
            return allreduce_hook(state, bucket)

        ddp_model.register_comm_hook(None, hook)
    return ddp_model.allreduce_calls


def mlp_groups(model: nn.Module) -> list[dict]:
    return [
        dict(params=[p for p in model.parameters() if p.ndim >= 2], use_muon=True, **MUON_OPTS),
        dict(params=[p for p in model.parameters() if p.ndim < 2], use_muon=False, **ADAMW_OPTS),
    ]


def fsdp_net(mesh) -> Net:
    """Net with body sharded by FSDP2's fully_shard (Shard(0)) and rep as Replicate DTensors."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, distribute_tensor

    net = Net()
    fully_shard(net.body, mesh=mesh)
    for name, p in list(net.rep.named_parameters()):
        rep = distribute_tensor(p.detach(), mesh, [Replicate()], src_data_rank=None)
        net.rep.register_parameter(name, nn.Parameter(rep))
    return net


def worker(rank: int, world: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial

    mesh = init_device_mesh("cpu", (world,))
    res: dict = {}

    net = Net()  # DDP: replicated parameters, gradients as DDP's all-reduce leaves them
    opt = DistributedMuon(net.muon_params(), **MUON_OPTS)
    run(net, opt, range(STEPS))
    res["ddp_muon"] = full_params(net)
    res["ddp_counts"] = opt.ns_counts
    res["ddp_comm"] = dict(opt.comm_stats)

    net = Net()
    opt = DistributedMuonWithAuxAdam(muon_groups(net))
    run(net, opt, range(STEPS))
    res["ddp_hybrid"] = full_params(net)

    net = fsdp_net(mesh)  # FSDP2: plain muonkit.Muon takes the distributed path itself
    opt = Muon(net.muon_params(), **MUON_OPTS)
    run(net, opt, range(STEPS))
    res["fsdp_muon"] = full_params(net)
    res["fsdp_counts"] = opt.ns_counts
    res["fsdp_comm"] = dict(opt.comm_stats)

    net = fsdp_net(mesh)
    opt = MuonWithAuxAdam(muon_groups(net))
    run(net, opt, range(STEPS))
    res["fsdp_hybrid"] = full_params(net)

    # DCP: save at K, keep going to 2K; a fresh job loads at K and also goes to 2K
    net = fsdp_net(mesh)
    opt = MuonWithAuxAdam(muon_groups(net))
    run(net, opt, range(K))
    save_checkpoint(os.path.join(out_dir, f"ckpt_w{world}"), net, opt, extra={"step": K})
    run(net, opt, range(K, 2 * K))
    res["dcp_straight"] = full_params(net)
    for source in {world, 2}:  # resume here, and from the 2-rank checkpoint (other world size)
        path = os.path.join(out_dir, f"ckpt_w{source}")
        if not os.path.exists(path):
            continue
        net = fsdp_net(mesh)
        opt = MuonWithAuxAdam(muon_groups(net))
        step = load_checkpoint(path, net, opt, extra={"step": -1})["step"]
        run(net, opt, range(step, 2 * K))
        res[f"dcp_resumed_from_w{source}"] = full_params(net)

    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(MLP())  # real backward: gradients averaged by DDP / reduce-scattered by FSDP2
    train_mlp(model, DistributedMuonWithAuxAdam(mlp_groups(model)), rank, world)
    res["ddp_e2e"] = full_params(model.module)
    model = MLP()
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    train_mlp(model, MuonWithAuxAdam(mlp_groups(model)), rank, world)
    res["fsdp_e2e"] = full_params(model)

    model = DDP(MLP())  # gradient accumulation: DDP all-reduces once per step
    res["accum_allreduces"] = count_allreduces(model)
    x, y = accum_batch(world)
    rows = slice(rank * ACCUM_ROWS, (rank + 1) * ACCUM_ROWS)
    micro = list(zip(x[rows].chunk(ACCUM_MICRO), y[rows].chunk(ACCUM_MICRO)))
    model.zero_grad(set_to_none=True)
    accumulate_gradients(model, mse, micro)
    res["accum_allreduces"] = count_allreduces(model) - res["accum_allreduces"]
    res["accum_grads"] = {n: p.grad.clone() for n, p in model.module.named_parameters()}

    if os.path.exists(os.path.join(out_dir, "ckpt_w2")):  # FSDP2 checkpoint -> DDP layout
        net = Net()
        opt = DistributedMuonWithAuxAdam(muon_groups(net))
        step = load_checkpoint(os.path.join(out_dir, "ckpt_w2"), net, opt, extra={"step": -1})
        run(net, opt, range(step["step"], 2 * K))
        res["dcp_ddp_resumed_from_w2"] = full_params(net)

    net = fsdp_net(mesh)  # NaN in one rank's shard only: every rank refuses the step
    opt = MuonWithAuxAdam(muon_groups(net))
    set_grads(net, 0, nan_in_first_row=True)
    try:
        opt.step()
        res["nan_refused"] = False
    except NonFiniteGradientError:
        res["nan_refused"] = True

    partial = DTensor.from_local(torch.ones(4, 6), mesh, [Partial()])
    try:
        Muon([nn.Parameter(partial)])
        res["bad_placement"] = None
    except ValueError as e:
        res["bad_placement"] = str(e)

    torch.save(res, os.path.join(out_dir, f"w{world}_rank{rank}.pt"))


# ---------------------------------------------------------------------------------------------
# single-process references and the tests
# ---------------------------------------------------------------------------------------------


def reference(kind: str, steps: int) -> dict[str, torch.Tensor]:
    net = Net()
    opt = (
        Muon(net.muon_params(), **MUON_OPTS)
        if kind == "muon"
        else MuonWithAuxAdam(muon_groups(net))
    )
    run(net, opt, range(steps))
    return full_params(net)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Lazily spawn each world size once (2 first: the others load its checkpoint)."""
    out_dir = str(tmp_path_factory.mktemp("dist"))
    cache: dict[int, list[dict]] = {}

    def get(world: int) -> list[dict]:
        if world != 2 and 2 not in cache:
            get(2)
        if world not in cache:
            spawn(worker, world, args=(out_dir,), timeout_s=240)
            cache[world] = [
                torch.load(os.path.join(out_dir, f"w{world}_rank{r}.pt"), weights_only=False)
                for r in range(world)
            ]
        return cache[world]

    return get


def assert_matches(got: dict, want: dict, tol: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for name in want:
        err = (got[name] - want[name]).abs().max().item()
        assert err <= tol, f"{name}: max |distributed - single process| = {err:.3g}"


def assert_ranks_identical(per_rank: list[dict], key: str) -> None:
    for r, res in enumerate(per_rank[1:], start=1):
        for name, t in per_rank[0][key].items():
            assert torch.equal(res[key][name], t), f"{key}: rank {r} differs on {name}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize(
    "key,kind",
    [
        ("ddp_muon", "muon"),
        ("ddp_hybrid", "hybrid"),
        ("fsdp_muon", "muon"),
        ("fsdp_hybrid", "hybrid"),
    ],
)
def test_matches_single_process(results, world, key, kind):
    per_rank = results(world)
    assert_ranks_identical(per_rank, key)
    assert_matches(per_rank[0][key], reference(kind, STEPS))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("key", ["ddp_e2e", "fsdp_e2e"])
def test_real_backward_matches_single_process(results, world, key):
    """DDP / FSDP2 forward-backward on each rank's slice of the batch, then the hybrid step,
    equals one process on the whole batch (the frameworks average the gradients)."""
    per_rank = results(world)
    assert_ranks_identical(per_rank, key)
    model = MLP()
    train_mlp(model, MuonWithAuxAdam(mlp_groups(model)))
    assert_matches(per_rank[0][key], full_params(model))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_ddp_gradient_accumulation_syncs_once_and_matches_one_big_batch(results, world):
    per_rank = results(world)
    model = MLP()
    x, y = accum_batch(world)
    mse(model, (x, y)).backward()
    for res in per_rank:
        assert res["accum_allreduces"] == 1, "one bucket, all-reduced on the last micro-batch"
        for name, p in model.named_parameters():
            torch.testing.assert_close(res["accum_grads"][name], p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("counts", ["ddp_counts", "fsdp_counts"])
def test_each_matrix_orthogonalized_once_balanced(results, world, counts):
    per_rank = [res[counts] for res in results(world)]
    n_matrices = len(MATRICES) + len(REPLICATED)
    total = sum(per_rank, Counter())
    assert sorted(total) == [(0, i) for i in range(n_matrices)]
    assert set(total.values()) == {STEPS}, "every matrix once per step, on one rank in total"
    for c in per_rank:
        assert sum(c.values()) <= STEPS * math.ceil(n_matrices / world)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_dcp_resume_equals_uninterrupted(results, world):
    per_rank = results(world)
    res = per_rank[0]
    want = reference("hybrid", 2 * K)
    assert_matches(res["dcp_straight"], want)
    for key in {f"dcp_resumed_from_w{world}", "dcp_resumed_from_w2", "dcp_ddp_resumed_from_w2"}:
        assert_ranks_identical(per_rank, key)
        for name, t in res["dcp_straight"].items():
            assert torch.allclose(res[key][name], t, atol=1e-6, rtol=0), (key, name)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_nonfinite_on_one_shard_refused_on_every_rank(results, world):
    assert all(res["nan_refused"] for res in results(world))


@pytest.mark.timeout(600)
def test_bad_placement_is_a_clear_error(results):
    for res in results(2):
        assert res["bad_placement"] is not None and "Partial" in res["bad_placement"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world", (2, 3))
def test_comm_counted(results, world):
    for res in results(world):
        assert res["ddp_comm"]["sent_bytes"] > 0 and res["fsdp_comm"]["collectives"] > 0


def test_uninitialized_process_group_is_a_clear_error():
    net = Net()
    with pytest.raises(ValueError, match="initialized torch.distributed process group"):
        DistributedMuon(net.muon_params())
    with pytest.raises(ValueError, match="initialized torch.distributed process group"):
        DistributedMuonWithAuxAdam(muon_groups(net))


def test_shard_rows_follow_torch_chunk():
    for dim0 in range(1, 9):
        for world in range(1, 5):
            chunks = [len(c) for c in torch.arange(dim0).chunk(world)]
            assert shard_rows(dim0, world) == tuple(chunks + [0] * (world - len(chunks)))


def test_assign_owners_balanced():
    costs = [64, 64, 64, 8, 27, 1, 1, 500, 3]
    for world in range(1, 6):
        for offset in range(world):
            owners = assign_owners(costs, world, offset)
            per_rank = Counter(owners)
            assert max(per_rank.values()) <= math.ceil(len(costs) / world)
            assert set(owners) <= set(range(world))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process: intended
def test_checkpoint_single_process_roundtrip(tmp_path):
    net = Net()
    opt = MuonWithAuxAdam(muon_groups(net))
    run(net, opt, range(K))
    save_checkpoint(str(tmp_path / "ckpt"), net, opt, extra={"step": K})
    run(net, opt, range(K, 2 * K))
    net2 = Net()
    opt2 = MuonWithAuxAdam(muon_groups(net2))
    assert load_checkpoint(str(tmp_path / "ckpt"), net2, opt2, extra={"step": 0}) == {"step": K}
    run(net2, opt2, range(K, 2 * K))
    assert_matches(full_params(net2), full_params(net), tol=0.0)


def test_compute_init_without_torchrun(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert compute_init(device="cpu") == (False, 0, 0, 1, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    compute_cleanup()  # a no-op without a process group


def sleeper(rank: int, world: int) -> None:
    time.sleep(600)


@pytest.mark.timeout(60)
def test_spawn_kills_a_hang_and_fails():
    with pytest.raises(TimeoutError, match="did not finish"):
        spawn(sleeper, 1, timeout_s=3)
