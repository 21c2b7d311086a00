"""Bytes distributed Muon communicates per optimizer step, next to the parameter bytes.

For the hidden matrices of a GPT-2-style stack (per layer: attention c_attn (3d, d) and c_proj
(d, d), MLP c_fc (4d, d) and c_proj (d, 4d)), this spawns W gloo processes on CPU and runs
two optimizer steps of

* ``ddp``: ``DistributedMuon`` on replicated matrices (what DDP leaves after its gradient
  all-reduce): owners orthogonalize, one padded ``all_gather`` shares results;
* ``fsdp2``: ``muonkit.Muon`` on matrices sharded by ``fully_shard`` (DTensor Shard(0)): one
  ``all_to_all`` gathers each matrix on its owner, one sends the rows back.

It reads the optimizer's own counters (``comm_stats``: bytes each rank sent to / received from
other ranks, the payload its collectives moved; ``ns_counts``: matrices it orthogonalized) for
the second step, with each rank's share of the Newton-Schulz FLOPs (m n min(m, n) per
matrix), and writes ``docs/results/distributed_comm.{json,md}``. The gradient
all-reduce of DDP and the parameter all-gather / gradient reduce-scatter of FSDP2 are the
frameworks' traffic, not counted here.

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
from torch import nn

from muonkit import Muon
from muonkit.distributed import DistributedMuon, spawn
from muonkit.distributed.muon import ns_cost


def gpt_matrix_shapes(n_layer: int, n_embd: int) -> dict[str, tuple[int, int]]:
    d = n_embd
    shapes = {}
    for i in range(n_layer):
        shapes[f"h{i}_attn_c_attn"] = (3 * d, d)
        shapes[f"h{i}_attn_c_proj"] = (d, d)
        shapes[f"h{i}_mlp_c_fc"] = (4 * d, d)
        shapes[f"h{i}_mlp_c_proj"] = (d, 4 * d)
    return shapes


def build(shapes: dict[str, tuple[int, int]]) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    m = nn.Module()
    for name, shape in shapes.items():
        m.register_parameter(name, nn.Parameter(torch.randn(shape, generator=g) * 0.02))
    return m


def set_grads(model: nn.Module, step: int) -> None:
    from torch.distributed.tensor import DTensor, distribute_tensor

    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        full = torch.randn(p.shape, generator=g)
        if isinstance(p, DTensor):
            full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
        p.grad = full


def measure(rank: int, world: int, shapes: dict, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    report = {}
    for mode in ("ddp", "fsdp2"):
        model = build(shapes)
        if mode == "fsdp2":
            fully_shard(model, mesh=mesh)
            opt = Muon(model.parameters())
        else:
            opt = DistributedMuon(model.parameters())
        set_grads(model, 0)
        opt.step()
        before = dict(getattr(opt, "comm_stats", {}))
        ns_before = sum(getattr(opt, "ns_counts", {}).values())
        set_grads(model, 1)
        opt.step()
        after = dict(getattr(opt, "comm_stats", {}))
        report[mode] = {
            key: after.get(key, 0) - before.get(key, 0)
            for key in ("sent_bytes", "recv_bytes", "collectives")
        }
        report[mode]["matrices_orthogonalized"] = sum(opt.ns_counts.values()) - ns_before
        params = opt.param_groups[0]["params"]
        report[mode]["ns_cost"] = sum(ns_cost(params[i].shape) for _, i in opt.ns_counts)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def run(n_layer: int, n_embd: int, world_sizes: list[int]) -> dict:
    shapes = gpt_matrix_shapes(n_layer, n_embd)
    param_bytes = sum(math.prod(s) for s in shapes.values()) * 4  # fp32
    results = []
    for world in world_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            spawn(measure, world, args=(shapes, tmp), timeout_s=300)
            ranks = []
            for r in range(world):
                with open(os.path.join(tmp, f"rank{r}.json")) as f:
                    ranks.append(json.load(f))
        for mode in ("ddp", "fsdp2"):
            per_rank = [x[mode] for x in ranks]
            results.append(
                {
                    "mode": mode,
                    "world_size": world,
                    "param_bytes": param_bytes,
                    "sent_bytes_per_rank": [x["sent_bytes"] for x in per_rank],
                    "sent_bytes_total": sum(x["sent_bytes"] for x in per_rank),
                    "recv_bytes_total": sum(x["recv_bytes"] for x in per_rank),
                    "collectives_per_rank": per_rank[0]["collectives"],
                    "matrices_per_rank": [x["matrices_orthogonalized"] for x in per_rank],
                    "ns_flops_share_per_rank": [
                        round(x["ns_cost"] / sum(y["ns_cost"] for y in per_rank), 3)
                        for x in per_rank
                    ],
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
        f"({c['matrices']} matrices, {c['dtype']}), {c['backend']} on {c['device']}. Counted by "
        "the optimizer (`opt.comm_stats`): the payload each rank sent to other ranks in the "
        "second step. DDP's gradient all-reduce and FSDP2's own parameter all-gather / "
        "gradient reduce-scatter are not included.",
        "",
        f"Command: `{data['command']}`",
        "",
        "| mode | W | param MiB | sent MiB per rank (max) | sent MiB total | total / param "
        "| collectives per step | matrices orthogonalized per rank | share of NS FLOPs per rank |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['mode']} | {r['world_size']} | {r['param_bytes'] / mib:.2f} "
            f"| {max(r['sent_bytes_per_rank']) / mib:.2f} | {r['sent_bytes_total'] / mib:.2f} "
            f"| {r['sent_bytes_total'] / r['param_bytes']:.2f} | {r['collectives_per_rank']} "
            f"| {r['matrices_per_rank']} | {r['ns_flops_share_per_rank']} |"
        )
    lines += [
        "",
        "Reading: with DDP every rank must end with every orthogonalized update: one "
        "all-gather of buffers padded to the largest owner's share moves (W-1) x W x that "
        "share in total, (W-1) x the parameter bytes when the owners' shares are equal (as the "
        "snake deal makes them for this stack). Under FSDP2 each rank needs only its rows: "
        "each matrix goes to its owner and back, 2 (W-1)/W x the parameter bytes in total, "
        "bounded by 2x whatever W.",
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
