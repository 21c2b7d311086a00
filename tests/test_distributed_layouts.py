"""Distributed Muon on the layouts real runs use, against single-process muonkit.Muon.

One spawn of 4 gloo processes runs every layout (spawning is the slow part): FSDP2 on default
meshes (``parallelize(..., "fsdp2")``, no ``mesh=``), HSDP 2x2, tensor parallel on a 2-rank TP
mesh, FSDP x TP 2x2 (hand-placed, and ColwiseParallel/RowwiseParallel + fully_shard with a real
backward), expert parallel; each with uneven and empty shards and an ``(E, out, in)`` expert
stack (``ns_batch_dims=1``). It also runs every Muon option through ``DistributedMuon`` and the
FSDP2 path (issue 16), and DCP checkpoints saved on each layout and loaded on others. The
ranks write what they end with; the tests compare it with single-process runs made here.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest
import torch
from torch import nn

import muonkit.functional
from muonkit import Muon
from muonkit.distributed import DistributedMuon, load_checkpoint, save_checkpoint, spawn
from muonkit.muon import NonFiniteGradientError
from muonkit.variants import NorMuon

WORLD = 4
# dim 0 not divisible by 2 or 4 (5, 3), smaller than the shard count (1), a conv-like kernel,
# and two expert stacks (E = 4 and an uneven E = 3), stepped with ns_batch_dims=1
MATRICES = {"a": (6, 4), "b": (5, 4), "c": (1, 5), "d": (4, 7), "e": (3, 2, 2)}
EXPERTS = {"x": (4, 3, 5), "y": (3, 2, 4)}
UNITS = len(MATRICES) + sum(s[0] for s in EXPERTS.values())  # matrices NS sees per step
MUON_OPTS = dict(lr=0.05, momentum=0.9, weight_decay=0.1)
STEPS, K = 3, 2
LAYOUTS = ("fsdp_default", "hsdp", "tp", "fsdp_tp", "ep")
TP_COMM = {"tp": 2}  # layouts whose Muon groups communicate over fewer ranks (the TP pair)
# DCP: HSDP's checkpoint resumes on every layout, and every layout's on the next one
RESUMES = sorted({("hsdp", x) for x in LAYOUTS} | set(zip(LAYOUTS, LAYOUTS[1:] + LAYOUTS[:1])))


class Holder(nn.Module):
    def __init__(self, shapes: dict, g: torch.Generator):
        super().__init__()
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.randn(shape, generator=g)))


class Net(nn.Module):
    """Parameters only (gradients are fixed): blocks[0] dense matrices, blocks[1] experts."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.blocks = nn.ModuleList([Holder(MATRICES, g), Holder(EXPERTS, g)])


def groups(net: nn.Module, **extra) -> list[dict]:
    return [
        dict(params=list(net.blocks[0].parameters()), **MUON_OPTS, **extra),
        dict(params=list(net.blocks[1].parameters()), ns_batch_dims=1, **MUON_OPTS, **extra),
    ]


def grads_at(step: int, net: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return {n: torch.randn(p.shape, generator=g) for n, p in net.named_parameters()}


def set_grads(net: nn.Module, step: int) -> None:
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, full in grads_at(step, net).items():
        p = net.get_parameter(name)
        if isinstance(p, DTensor):
            full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
        p.grad = full


def run(net: nn.Module, opt, steps: range) -> None:
    """Fixed gradients; momentum changes every step (so "ema" and "standard" differ)."""
    for step in steps:
        for group in opt.param_groups:
            group["momentum"] = 0.9 - 0.2 * step
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
# layouts (in the spawned processes)
# ---------------------------------------------------------------------------------------------

HAND_PLACED = {  # (mesh, {param name: placements}); S = Shard, R = Replicate
    "tp": ("tp", {"a": "S0", "b": "S1", "c": "S0", "d": "S1", "e": "S1", "x": "S2", "y": "S1"}),
    "fsdp_tp": ("2d", {"a": "S0 S1", "b": "S1 S0", "c": "S1 S0", "d": "S0 S0", "e": "R S0",
                       "x": "S0 S1", "y": "S0 S2"}),
    "ep": ("1d", {"a": "R", "b": "R", "c": "R", "d": "R", "e": "R", "x": "S0", "y": "S0"}),
}  # fmt: skip


def placements(spec: str):
    from torch.distributed.tensor import Replicate, Shard

    return [Replicate() if s == "R" else Shard(int(s[1:])) for s in spec.split()]


def meshes():
    from torch.distributed.device_mesh import init_device_mesh

    mesh_2d = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    return {"1d": init_device_mesh("cpu", (WORLD,)), "2d": mesh_2d, "tp": mesh_2d["tp"]}


def build(layout: str, mesh) -> Net:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    from muonkit.distributed.parallel import parallelize

    net = Net()
    if layout == "fsdp_default":
        return parallelize(net, "fsdp2", torch.device("cpu"))
    if layout == "hsdp":
        hsdp = mesh["2d"]  # (replicate, shard) = (dp, tp) dims of the same 2x2 grid
        for block in net.blocks:
            fully_shard(block, mesh=hsdp)
        return fully_shard(net, mesh=hsdp)
    mesh_name, spec = HAND_PLACED[layout]
    for block in net.blocks:
        for name, p in list(block.named_parameters()):
            d = distribute_tensor(p.detach(), mesh[mesh_name], placements(spec[name]),
                                  src_data_rank=None)  # fmt: skip
            block.register_parameter(name, nn.Parameter(d))
    return net


def layouts_hold_what_layout_says(net: nn.Module) -> bool:
    """muonkit.distributed.layout.local_index against DTensor's own local shards."""
    from torch.distributed.tensor import DTensor

    from muonkit.distributed.layout import local_index

    for p in net.parameters():
        if isinstance(p, DTensor):
            mesh = p.device_mesh
            index = local_index(p.shape, mesh.mesh.shape, p.placements, mesh.get_coordinate())
            if not torch.equal(p.full_tensor().reshape(-1)[index], p.to_local().reshape(-1)):
                return False
    return True


def nan_refused(layout: str, mesh, rank: int) -> bool:
    """NaN in one element that only rank 1 sees: every rank must refuse (no hang)."""
    net = build(layout, mesh)
    opt = Muon(groups(net))
    set_grads(net, 0)
    if rank == 1:
        local = net.blocks[0].get_parameter("a").grad
        local = local.to_local() if hasattr(local, "to_local") else local
        local.view(-1)[0] = float("nan")
    try:
        opt.step()
    except NonFiniteGradientError:
        return True
    return False


class TPMLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(6, 10, bias=False)
        self.down = nn.Linear(10, 5, bias=False)

    def forward(self, x):
        return self.down(torch.tanh(self.up(x)))


def mlp_batch(step: int):
    g = torch.Generator().manual_seed(700 + step)
    return torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g)


def train_mlp(model, opt, dp_rank: int = 0, dp: int = 1) -> None:
    for step in range(STEPS):
        x, y = mlp_batch(step)
        nn.functional.mse_loss(model(x[dp_rank::dp]), y[dp_rank::dp]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def fsdp_tp_backward(mesh) -> dict:
    """ColwiseParallel / RowwiseParallel on tp, fully_shard on dp (FSDP2 makes the colwise
    weight ``(_StridedShard(0), Shard(0))``), a real forward/backward."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    model = TPMLP()
    plan = {"up": ColwiseParallel(), "down": RowwiseParallel()}
    parallelize_module(model, mesh["2d"]["tp"], plan)
    fully_shard(model, mesh=mesh["2d"]["dp"])
    train_mlp(model, Muon(model.parameters(), **MUON_OPTS), mesh["2d"].get_coordinate()[0], 2)
    return dict(
        params=full_params(model),
        placements=[str(p.placements) for p in model.parameters()],
        layout_ok=layouts_hold_what_layout_says(model),
    )


def equal_meshes_one_group() -> dict:
    """Blocks sharded on two equal but distinct DeviceMesh objects, all in one Muon group."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    net = Net()
    meshes = [init_device_mesh("cpu", (WORLD,)) for _ in net.blocks]
    for block, mesh in zip(net.blocks, meshes):
        fully_shard(block, mesh=mesh)
    run(net, Muon(net.parameters(), **MUON_OPTS), range(STEPS))
    distinct = meshes[0] is not meshes[1] and meshes[0] == meshes[1]
    return dict(params=full_params(net), distinct=distinct)


def worker(rank: int, world: int, out_dir: str) -> None:
    mesh = meshes()
    res: dict = {}
    for layout in LAYOUTS:
        net = build(layout, mesh)
        opt = Muon(groups(net))
        run(net, opt, range(STEPS))
        res[layout] = dict(
            params=full_params(net),
            counts=Counter(opt.ns_counts),
            comm=dict(opt.comm_stats),
            layout_ok=layouts_hold_what_layout_says(net),
            nan_refused=nan_refused(layout, mesh, rank),
        )
    res["two_meshes"] = equal_meshes_one_group()
    net = build("ep", mesh)  # experts alone under expert parallel: nothing to communicate
    opt = Muon([groups(net)[1]])
    run(net, opt, range(STEPS))
    res["ep_experts_comm"] = dict(opt.comm_stats)
    res["fsdp_tp_backward"] = fsdp_tp_backward(mesh)

    for layout in LAYOUTS:  # DCP: every layout saves at step K
        net = build(layout, mesh)
        opt = Muon(groups(net))
        run(net, opt, range(K))
        save_checkpoint(os.path.join(out_dir, f"ckpt_{layout}"), net, opt, extra={"step": K})
    for saved, layout in RESUMES:
        net = build(layout, mesh)
        opt = Muon(groups(net))
        path = os.path.join(out_dir, f"ckpt_{saved}")
        step = load_checkpoint(path, net, opt, extra={"step": -1})["step"]
        run(net, opt, range(step, 2 * K))
        res[f"resumed_{layout}_from_{saved}"] = full_params(net)

    res["options"] = options_worker(mesh)
    res["normuon"] = normuon_worker(mesh, out_dir)
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))


# ---------------------------------------------------------------------------------------------
# NorMuon: the owner normalizes rows of the whole matrix; the row moments agree on every rank
# ---------------------------------------------------------------------------------------------

NORMUON_OPTS = dict(beta2=0.8)


def normuon_groups(net: nn.Module) -> list[dict]:
    return [dict(groups(net)[0], **NORMUON_OPTS)]  # the dense matrices (no expert stacks)


def normuon_result(net: nn.Module, opt) -> dict:
    moments = [opt.state[p]["row_second_moment"].clone() for p in net.blocks[0].parameters()]
    return dict(params=full_params(net), moments=moments)


def normuon_worker(mesh, out_dir: str) -> dict:
    from muonkit.distributed import DistributedNorMuon

    res = {}
    for layout in LAYOUTS:
        net = build(layout, mesh)
        opt = NorMuon(normuon_groups(net))
        run(net, opt, range(STEPS))
        res[layout] = normuon_result(net, opt)
    net = Net()  # DDP: replicated plain tensors
    opt = DistributedNorMuon(normuon_groups(net))
    run(net, opt, range(STEPS))
    res["ddp"] = dict(normuon_result(net, opt), counts=Counter(opt.ns_counts))
    net = build("fsdp_default", mesh)  # DCP: saved under FSDP2, resumed under HSDP
    opt = NorMuon(normuon_groups(net))
    run(net, opt, range(K))
    path = os.path.join(out_dir, "ckpt_normuon")
    save_checkpoint(path, net, opt, extra={"step": K})
    net = build("hsdp", mesh)
    opt = NorMuon(normuon_groups(net))
    step = load_checkpoint(path, net, opt, extra={"step": -1})["step"]
    run(net, opt, range(step, 2 * K))
    res["resumed"] = normuon_result(net, opt)
    return res


# ---------------------------------------------------------------------------------------------
# every option through Muon, DistributedMuon and the FSDP2 path (issue 16)
# ---------------------------------------------------------------------------------------------

OPTION_SHAPES = {"p": (6, 4), "q": (4, 8), "r": (2, 6)}
STACK_SHAPE = (2, 4, 6)
OPTION_VARIANTS = {
    "base": {},
    "momentum": dict(momentum=0.5),
    "nesterov": dict(nesterov=False),
    "momentum_form": dict(momentum_form="ema"),
    "weight_decay": dict(weight_decay=0.3),
    "ns_steps": dict(ns_steps=2),
    "ns_coefficients": dict(ns_coefficients="polar_express"),
    "ns_dtype": dict(ns_dtype=torch.bfloat16),
    "lr_scaling": dict(lr_scaling="mup"),
    "ns_split": dict(ns_split=2),
    "ns_gram": dict(ns_gram=True),
    "ns_precondition": dict(ns_precondition="aol"),
    "ns_compile": dict(ns_compile=True),
    "ns_batch_dims": dict(ns_batch_dims=1),
}


class OptionNet(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.dense, self.stack = Holder(OPTION_SHAPES, g), Holder({"s": STACK_SHAPE}, g)


def option_run(kind: str, variant: str, mesh=None) -> tuple[dict, set]:
    """(full params after 2 steps, the arguments muonkit.functional.orthogonalize got)."""
    net = OptionNet()
    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        fully_shard(net, mesh=mesh)
    options = dict(MUON_OPTS, **OPTION_VARIANTS[variant])
    batch = {"ns_batch_dims": options.pop("ns_batch_dims", 0)}
    momentum = options.pop("momentum")
    param_groups = [dict(params=list(net.dense.parameters())),
                    dict(params=list(net.stack.parameters()), **batch)]  # fmt: skip
    cls = DistributedMuon if kind == "ddp" else Muon
    opt = cls(param_groups, momentum=momentum, **options)
    calls: set = set()
    original = muonkit.functional.orthogonalize

    def spy(G, *args):
        calls.add((tuple(G.shape[-2:]), *map(str, args)))
        return original(G, *args)

    muonkit.functional.orthogonalize = spy
    try:
        for step in range(2):
            for group in opt.param_groups:
                group["momentum"] = momentum - 0.2 * step  # "ema" differs from "standard"
            set_grads(net, step)
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        muonkit.functional.orthogonalize = original
    return full_params(net), calls


def options_worker(mesh) -> dict:
    return {(kind, v): option_run(kind, v, mesh["1d"]) for kind in ("ddp", "fsdp2")
            for v in OPTION_VARIANTS}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("layouts")
    spawn(worker, WORLD, args=(str(out_dir),), timeout_s=400)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"ranks": ranks, "dir": out_dir}


def reference(steps: range, net: nn.Module | None = None, opt=None) -> dict:
    net = net or Net()
    opt = opt or Muon(groups(net))
    run(net, opt, steps)
    return full_params(net)


def assert_close(got: dict, want: dict, tol: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for name in want:
        err = (got[name] - want[name]).abs().max().item()
        assert err <= tol, f"{name}: max |distributed - single process| = {err:.3g}"


@pytest.mark.timeout(500)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_matches_single_process(results, layout):
    want = reference(range(STEPS))
    for res in results["ranks"]:
        assert res[layout]["layout_ok"], "local_index disagrees with DTensor's local shard"
        assert_close(res[layout]["params"], want)


@pytest.mark.timeout(500)
def test_equal_but_distinct_meshes_are_one_mesh(results):
    net = Net()
    want = reference(range(STEPS), net, Muon(net.parameters(), **MUON_OPTS))
    for res in results["ranks"]:
        assert res["two_meshes"]["distinct"]
        assert_close(res["two_meshes"]["params"], want)


@pytest.mark.timeout(500)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_matrix_once_per_step_and_balanced(results, layout):
    comm = TP_COMM.get(layout, WORLD)
    counts = [res[layout]["counts"] for res in results["ranks"]]
    total = sum(sum(c.values()) for c in counts)
    assert total == STEPS * UNITS * (WORLD // comm), "each matrix once per step per TP group"
    for c in counts:
        assert sum(c.values()) <= STEPS * math.ceil(UNITS / comm)


@pytest.mark.timeout(500)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nonfinite_on_one_rank_refused_everywhere(results, layout):
    assert all(res[layout]["nan_refused"] for res in results["ranks"])


@pytest.mark.timeout(500)
def test_expert_parallel_experts_communicate_nothing(results):
    for res in results["ranks"]:
        assert res["ep_experts_comm"].get("sent_bytes", 0) == 0
        assert res["ep_experts_comm"].get("collectives", 0) == 0
        assert res["hsdp"]["comm"]["sent_bytes"] > 0


@pytest.mark.timeout(500)
def test_fsdp_tp_real_backward_matches_single_process(results):
    """Tensor parallel sums the row-parallel partial products in another order, so gradients
    differ in the last bits and three Newton-Schulz steps amplify that to ~5e-5 (the
    hand-placed layouts above, with fixed gradients, hold the optimizer itself to 1e-5)."""
    model = TPMLP()
    train_mlp(model, Muon(model.parameters(), **MUON_OPTS))
    want = full_params(model)
    for res in results["ranks"]:
        got = res["fsdp_tp_backward"]
        assert "_StridedShard" in got["placements"][0] and got["layout_ok"]
        assert_close(got["params"], want, tol=2e-4)


@pytest.mark.timeout(500)
@pytest.mark.parametrize("saved,layout", RESUMES)
def test_dcp_saved_on_one_layout_resumes_on_another(results, saved, layout):
    want = reference(range(2 * K))
    for res in results["ranks"]:
        assert_close(res[f"resumed_{layout}_from_{saved}"], want)


@pytest.mark.timeout(500)
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process
@pytest.mark.parametrize("saved", LAYOUTS)
def test_dcp_saved_on_any_layout_resumes_in_one_process(results, saved):
    net = Net()
    opt = Muon(groups(net))
    path = results["dir"] / f"ckpt_{saved}"
    step = load_checkpoint(str(path), net, opt, extra={"step": -1})["step"]
    assert step == K
    assert_close(reference(range(K, 2 * K), net, opt), reference(range(2 * K)))


@pytest.mark.timeout(500)
@pytest.mark.parametrize("variant", sorted(OPTION_VARIANTS))
def test_every_option_reaches_every_path(results, variant):
    """Same params and the same Newton-Schulz calls as single-process Muon, and (so that a
    path ignoring the option would fail) different params or calls from the base options."""
    want, want_calls = option_run("local", variant)
    base, base_calls = option_run("local", "base")
    if variant != "base":
        contrast = max((want[n] - base[n]).abs().max().item() for n in want)
        assert contrast > 1e-4 or want_calls != base_calls, "the option changes nothing"
    for res in results["ranks"]:
        for kind in ("ddp", "fsdp2"):
            got, calls = res["options"][(kind, variant)]
            assert_close(got, want)
            assert calls and calls <= want_calls, (kind, calls, want_calls)


def test_expert_stack_equals_separate_matrices():
    """ns_batch_dims=1 on an (E, out, in) stack is E separate 2-D parameters (LR rule on
    (out, in)), not one (E, out * in) kernel."""
    torch.manual_seed(0)
    stack = nn.Parameter(torch.randn(3, 4, 6))
    experts = [nn.Parameter(stack.detach()[e].clone()) for e in range(3)]
    opt_stack = Muon([stack], ns_batch_dims=1, lr_scaling="moonlight", **MUON_OPTS)
    opt_sep = Muon(experts, lr_scaling="moonlight", **MUON_OPTS)
    for _ in range(3):
        g = torch.randn(3, 4, 6)
        stack.grad = g
        for e, p in enumerate(experts):
            p.grad = g[e].clone()
        opt_stack.step()
        opt_sep.step()
    torch.testing.assert_close(stack.detach(), torch.stack([p.detach() for p in experts]))
    with pytest.raises(ValueError, match="b \\+ 2 dims"):
        Muon([nn.Parameter(torch.randn(4, 6))], ns_batch_dims=1)


class MoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 4, bias=False)
        self.w_in = nn.Parameter(torch.randn(3, 4, 6))  # 3 experts
        self.w_out = nn.Parameter(torch.randn(3, 6, 4))


@pytest.mark.parametrize(
    "experts",
    [["w_in", "w_out"], lambda name, p: name.startswith("w_"), "options"],
    ids=["names", "predicate", "options"],
)
def test_hybrid_param_groups_put_experts_in_a_batched_group(experts):
    from muonkit import MuonOptions, MuonWithAuxAdam, hybrid_param_groups

    model = MoE()
    extra = {"options": MuonOptions(momentum=0.8)} if experts == "options" else {}
    groups = hybrid_param_groups(
        model, experts=["w_in", "w_out"] if experts == "options" else experts, **extra
    )
    opt = MuonWithAuxAdam(groups)
    by_role = {g["role"]: g for g in opt.param_groups}
    assert by_role["muon_experts"]["params"] == [model.w_in, model.w_out]
    assert by_role["muon_experts"]["ns_batch_dims"] == 1
    assert by_role["muon"]["params"] == [model.proj.weight]
    assert by_role["muon"]["ns_batch_dims"] == 0
    if extra:
        assert by_role["muon_experts"]["momentum"] == by_role["muon"]["momentum"] == 0.8


def test_replicate_without_hsdp_is_a_clear_error():
    from muonkit.distributed.parallel import parallelize

    with pytest.raises(ValueError, match="applies to --parallel hsdp"):
        parallelize(nn.Linear(2, 2), "fsdp2", torch.device("cpu"), replicate=2)


def normuon_reference(steps: range) -> dict:
    net = Net()
    opt = NorMuon(normuon_groups(net))
    run(net, opt, steps)
    return normuon_result(net, opt)


@pytest.mark.timeout(500)
@pytest.mark.parametrize("layout", [*LAYOUTS, "ddp"])
def test_normuon_layout_matches_single_process(results, layout):
    want = normuon_reference(range(STEPS))
    for res in results["ranks"]:
        got = res["normuon"][layout]
        assert_close(got["params"], want["params"])
        for v, w in zip(got["moments"], want["moments"], strict=True):
            torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-7)  # whole, equal on every rank
    if layout == "ddp":  # each matrix orthogonalized (and normalized) on one rank only
        total = sum((r["normuon"]["ddp"]["counts"] for r in results["ranks"]), Counter())
        assert sorted(total.values()) == [1 * STEPS] * len(MATRICES)


@pytest.mark.timeout(500)
def test_normuon_dcp_fsdp2_checkpoint_resumes_under_hsdp(results):
    want = normuon_reference(range(2 * K))
    for res in results["ranks"]:
        assert_close(res["normuon"]["resumed"]["params"], want["params"])
        for v, w in zip(res["normuon"]["resumed"]["moments"], want["moments"], strict=True):
            torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-7)
