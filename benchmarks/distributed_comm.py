"""Bytes distributed Muon communicates per optimizer step, beside the least its layout allows.

For the hidden matrices of a GPT-2-style stack (per layer: attention c_attn (3d, d) and c_proj
(d, d), MLP c_fc (4d, d) and c_proj (d, 4d), as ``nn.Linear`` layers), this spawns W gloo
processes on CPU and runs two optimizer steps under each layout:

* ``ddp``: ``DistributedMuon`` on replicated matrices (what DDP leaves after its all-reduce);
* ``fsdp2``: ``muonkit.Muon`` after ``fully_shard`` (DTensor ``Shard(0)``);
* ``hsdp``: ``fully_shard`` on a 2-D (replicate, shard) mesh, 2 x W/2;
* ``tp``: ``ColwiseParallel`` on c_attn and c_fc, ``RowwiseParallel`` on the c_proj layers
  (``Shard(0)`` / ``Shard(1)``) on a 1-D TP mesh of all W ranks;
* ``fsdp_tp``: the same TP on the ``tp`` dim of a 2 x W/2 (dp, tp) mesh, then ``fully_shard``
  on ``dp`` (FSDP2 makes the colwise weights ``(_StridedShard(0), Shard(0))``).

It reads the optimizer's own counters for the second step (``comm_stats``: bytes each rank
sent to other ranks; ``ns_counts``: matrices it orthogonalized) and writes
``docs/results/distributed_comm.{json,md}``. The minimum beside each figure is the least any
scheme that orthogonalizes each matrix whole on one rank can move, from the element counts the
ranks actually hold (exchanged with ``all_gather_object``, not from the optimizer's plan): the
owner must receive what it does not hold, and every other rank that holds a part must receive
its part of the result; per matrix ``numel + sum_r held_r - 2 max_r held_r`` elements (the best
owner holds the most). The frameworks' own traffic (DDP's all-reduce, FSDP2's all-gather /
reduce-scatter, TP's activations) is not counted.

    python benchmarks/distributed_comm.py --n-layer 4 --n-embd 128 --world-sizes 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import torch
import torch.distributed as dist
from torch import nn

from muonkit import Muon
from muonkit.distributed import DistributedMuon, spawn

COLWISE = ("c_attn", "c_fc")  # ColwiseParallel (Shard(0)); the c_proj layers are rowwise


def gpt_matrix_shapes(n_layer: int, n_embd: int) -> dict[str, tuple[int, int]]:
    d = n_embd
    shapes = {}
    for i in range(n_layer):
        shapes[f"h{i}_attn_c_attn"] = (3 * d, d)
        shapes[f"h{i}_attn_c_proj"] = (d, d)
        shapes[f"h{i}_mlp_c_fc"] = (4 * d, d)
        shapes[f"h{i}_mlp_c_proj"] = (d, 4 * d)
    return shapes


class Stack(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, int]]):
        super().__init__()
        torch.manual_seed(0)
        for name, (out_dim, in_dim) in shapes.items():
            self.add_module(name, nn.Linear(in_dim, out_dim, bias=False))


def layouts_for(world: int) -> list[str]:
    both = ["hsdp", "fsdp_tp"] if world >= 4 and world % 2 == 0 else []
    return ["ddp", "fsdp2", *(["tp"] if world > 1 else []), *both]


def build(layout: str, shapes: dict, world: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    model = Stack(shapes)
    if layout == "ddp":
        return model, DistributedMuon(model.parameters())
    if layout in ("fsdp2", "hsdp"):
        shape, names = ((2, world // 2), ("replicate", "shard")) if layout == "hsdp" else (
            (world,), None)  # fmt: skip
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
        fully_shard(model, mesh=mesh)
        return model, Muon(model.parameters())
    plan = {n: ColwiseParallel() if n.endswith(COLWISE) else RowwiseParallel() for n in shapes}
    if layout == "tp":
        parallelize_module(model, init_device_mesh("cpu", (world,)), plan)
    else:  # fsdp_tp
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], plan)
        fully_shard(model, mesh=mesh["dp"])
    return model, Muon(model.parameters())


def held_elements(model: nn.Module) -> list[list[int]]:
    """[matrix][rank]: elements each rank holds (exchanged, not taken from the plan)."""
    mine = [p.to_local().numel() if hasattr(p, "to_local") else p.numel()
            for p in model.parameters()]  # fmt: skip
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return [list(col) for col in zip(*every)]


def minimum_bytes(model: nn.Module) -> int:
    total = 0
    for p, held in zip(model.parameters(), held_elements(model)):
        total += (p.numel() + sum(held) - 2 * max(held)) * p.element_size()
    return total


def measure(rank: int, world: int, shapes: dict, out_dir: str) -> None:
    report = {}
    for layout in layouts_for(world):
        model, opt = build(layout, shapes, world)
        counts = []
        for _ in range(2):
            for p in model.parameters():
                p.grad = p.detach().clone()
            before = dict(opt.comm_stats), sum(opt.ns_counts.values())
            opt.step()
            counts.append((before, dict(opt.comm_stats), sum(opt.ns_counts.values())))
        (before, ns_before), after, ns_after = counts[-1]
        report[layout] = {
            key: after.get(key, 0) - before.get(key, 0)
            for key in ("sent_bytes", "recv_bytes", "collectives")
        }
        report[layout]["matrices_orthogonalized"] = ns_after - ns_before
        report[layout]["minimum_bytes"] = minimum_bytes(model) if world > 1 else 0
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def run(n_layer: int, n_embd: int, world_sizes: list[int]) -> dict:
    shapes = gpt_matrix_shapes(n_layer, n_embd)
    param_bytes = sum(math.prod(s) for s in shapes.values()) * 4  # fp32
    results = []
    for world in world_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            spawn(measure, world, args=(shapes, tmp), timeout_s=600)
            ranks = []
            for r in range(world):
                with open(os.path.join(tmp, f"rank{r}.json")) as f:
                    ranks.append(json.load(f))
        for layout in layouts_for(world):
            per_rank = [x[layout] for x in ranks]
            results.append(
                {
                    "mode": layout,
                    "world_size": world,
                    "param_bytes": param_bytes,
                    "sent_bytes_per_rank": [x["sent_bytes"] for x in per_rank],
                    "sent_bytes_total": sum(x["sent_bytes"] for x in per_rank),
                    "minimum_bytes_total": per_rank[0]["minimum_bytes"],
                    "collectives_per_rank": per_rank[0]["collectives"],
                    "matrices_per_rank": [x["matrices_orthogonalized"] for x in per_rank],
                    "minimum_matrices_per_rank": math.ceil(len(shapes) / world),
                }
            )
    return {
        "config": {
            "n_layer": n_layer,
            "n_embd": n_embd,
            "matrices": len(shapes),
            "dtype": "float32",
            "backend": "gloo",
            "device": "cpu",
            "torch": torch.__version__,
        },
        "command": "python " + " ".join(sys.argv),
        "results": results,
    }


def markdown(data: dict) -> str:
    c = data["config"]
    mib = 2**20
    lines = [
        "# Distributed Muon: bytes communicated per optimizer step",
        "",
        f"Hidden matrices of a GPT-2-style stack, n_layer={c['n_layer']}, n_embd={c['n_embd']} "
        f"({c['matrices']} matrices, {c['dtype']}), {c['backend']} on {c['device']}, torch "
        f"{c['torch']}. Measured by the optimizer (`opt.comm_stats`, `opt.ns_counts`) in the "
        "second step; the minimum is the least any whole-matrix scheme can move given the "
        "elements each rank holds (see benchmarks/distributed_comm.py). The frameworks' own "
        "traffic (DDP all-reduce, FSDP2 all-gather / reduce-scatter, TP activations) is not "
        "included. hsdp and fsdp_tp run on a 2 x W/2 mesh; tp on a 1-D mesh of all W ranks.",
        "",
        f"Command: `{data['command']}`",
        "",
        "| layout | W | param MiB | sent MiB total | minimum MiB | sent MiB per rank (max) "
        "| collectives per step | matrices orthogonalized per rank | minimum (ceil(M/W)) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['mode']} | {r['world_size']} | {r['param_bytes'] / mib:.2f} "
            f"| {r['sent_bytes_total'] / mib:.2f} | {r['minimum_bytes_total'] / mib:.2f} "
            f"| {max(r['sent_bytes_per_rank']) / mib:.2f} | {r['collectives_per_rank']} "
            f"| {r['matrices_per_rank']} | {r['minimum_matrices_per_rank']} |"
        )
    lines += [
        "",
        "Reading: a replicated matrix (DDP) is held whole by its owner, which sends the result "
        "to the W-1 others: (W-1) x the parameter bytes. A sharded one goes to its owner and "
        "back: 2 (W-1)/W x under FSDP2. HSDP replicas each hold one shard, so the owner "
        "gathers from its own replica group and sends the result to every replica: "
        "(1 - 1/S) + (R - 1/S) x the parameter bytes for R replicas of S shards. "
        "Tensor parallel and FSDP x TP shard every matrix over all W ranks, as FSDP2 does.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--out", default="docs/results/distributed_comm")
    args = parser.parse_args(argv)
    data = run(args.n_layer, args.n_embd, args.world_sizes)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(data, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
