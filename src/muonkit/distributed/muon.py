"""Muon under torch.distributed: replicated (DDP) and Shard(0) (FSDP2 / DTensor) matrices.

Newton-Schulz must see each *whole* matrix: orthogonalizing a row shard on its own gives a
different (wrong) update. And it should run once per matrix, not once per rank. One step of
a Muon param group, on every rank:

1. momentum (``muonkit.muon.momentum_update_``) on the local tensors: the full matrix for a
   replicated parameter (DDP: the gradients are already all-reduced), this rank's rows for a
   Shard(0) DTensor. The update is elementwise, so shards of it are shards of the full one.
2. every matrix gets one *owner* rank (:func:`assign_owners`: matrices sorted by
   Newton-Schulz cost, dealt in snake order, so no rank owns more than ceil(M / W) and the
   FLOPs are balanced).
3. Shard(0) matrices: one ``all_to_all`` sends every rank's rows of each matrix to its owner
   (uneven and empty shards are just split sizes of 0 or fewer rows; the row counts follow
   ``torch.chunk``, the rule DTensor's Shard uses), which assembles the whole update.
4. each owner orthogonalizes its matrices in one ``muonkit.muon.orthogonalize_updates`` call
   (same-shape matrices batched) and counts them in ``optimizer.ns_counts``.
5. Shard(0) matrices: a second ``all_to_all`` sends each rank its rows of the result.
   Replicated matrices: each rank packs its results in one flat buffer padded to the longest
   rank's, and one ``all_gather`` gives every rank every result (the scheme of
   Keller Jordan's muon.py and nanochat's DistMuon); every rank joins every collective, with
   zero padding when it owns nothing.
6. ``muonkit.muon.apply_updates_`` on the local tensors, with the LR scale of the full shape.

Every collective's payload is counted in ``optimizer.comm_stats`` (bytes this rank sends to
and receives from *other* ranks). The math is the single-device functional core, so the
result equals ``muonkit.Muon`` on one process up to fp32 rounding (tested to 1e-5).

Microsoft dion (``dion/muon.py``) orthogonalizes FSDP2-sharded matrices with all-to-all in the
same spirit (ideas only; no code is shared).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, Shard

from ..hybrid import MuonWithAuxAdam
from ..muon import (
    Muon,
    all_finite,
    apply_updates_,
    block_shape,
    momentum_update_,
    orthogonalize_updates,
)
from ..options import MuonOptions
from ..scaling import lr_scale

# one flat all-gather; torch 2.13 renamed all_gather_into_tensor (deprecated) to all_gather_single
ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
SUPPORTED_PLACEMENTS = "Shard(0) (as torch.distributed.fsdp.fully_shard makes) or Replicate()"


@dataclass(frozen=True)
class Layout:
    """How one parameter is held: its full shape, and the rows each rank holds.

    ``rows`` is None for a replicated parameter (every rank holds all of it).
    """

    shape: tuple[int, ...]
    rows: tuple[int, ...] | None

    @property
    def row_numel(self) -> int:
        return math.prod(self.shape[1:])


def shard_rows(dim0: int, world_size: int) -> tuple[int, ...]:
    """Rows of each rank under Shard(0): ``torch.chunk`` sizes, then empty shards.

    ``torch.chunk`` makes chunks of ceil(dim0 / W) rows, so 4 rows on 3 ranks are (2, 2, 0)
    and 2 rows on 3 ranks are (1, 1, 0).
    """
    chunk = -(-dim0 // world_size)
    return tuple(max(0, min(chunk, dim0 - r * chunk)) for r in range(world_size))


def layout_of(p: Tensor) -> Layout:
    """The :class:`Layout` of a plain tensor (replicated) or a DTensor on a 1-D mesh."""
    if not isinstance(p, DTensor):
        return Layout(tuple(p.shape), None)
    mesh = p.device_mesh
    if mesh.ndim != 1:
        raise ValueError(
            f"distributed Muon supports DTensors on a 1-D device mesh; got a parameter of "
            f"shape {tuple(p.shape)} on a {mesh.ndim}-D mesh (placements {p.placements}). "
            "Use fully_shard on a 1-D mesh (no HSDP) for Muon parameters."
        )
    placement = p.placements[0]
    if isinstance(placement, Replicate):
        return Layout(tuple(p.shape), None)
    if isinstance(placement, Shard) and placement.dim == 0:
        return Layout(tuple(p.shape), shard_rows(p.shape[0], mesh.size()))
    raise ValueError(
        f"distributed Muon got a parameter of shape {tuple(p.shape)} with placement "
        f"{placement}; it supports {SUPPORTED_PLACEMENTS}: whole rows must live on one rank. "
        "Shard Muon matrices with fully_shard (Shard(0)) or keep them replicated."
    )


def group_process_group(params: Sequence[Tensor], default=None):
    """The process group the params of one group communicate over (validating them).

    DTensors: their (single, 1-D) mesh's group; plain tensors are replicated over it too.
    Only plain tensors: ``default`` (None = the default group), which must be initialized.
    """
    meshes = []
    for p in params:
        layout_of(p)
        if isinstance(p, DTensor) and all(p.device_mesh is not m for m in meshes):
            meshes.append(p.device_mesh)
    if len(meshes) > 1:
        raise ValueError(
            "distributed Muon needs every DTensor of a param group on one device mesh; got "
            f"{len(meshes)} meshes. Put parameters of different meshes in different groups."
        )
    if meshes:
        return meshes[0].get_group()
    require_process_group("distributed Muon")
    return default


def require_process_group(feature: str) -> None:
    """Raise a clear ValueError when torch.distributed has no initialized process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"{feature} needs an initialized torch.distributed process group: launch with "
            "torchrun and call muonkit.distributed.compute_init() (or "
            "torch.distributed.init_process_group) before building it"
        )


def local(t: Tensor) -> Tensor:
    """This rank's part of ``t``: the local shard of a DTensor (an alias), else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def ns_cost(shape: Sequence[int], split: int = 1) -> int:
    """Newton-Schulz FLOPs, up to a constant, of one parameter: split * m * n * min(m, n)."""
    m, n = block_shape(shape, split)
    return split * m * n * min(m, n)


def assign_owners(costs: Sequence[int], world_size: int, offset: int = 0) -> list[int]:
    """The owner rank of each matrix: by cost (largest first), dealt in snake order.

    Round r hands the next W matrices to ranks 0..W-1 (even r) or W-1..0 (odd r), shifted by
    ``offset``; so every rank owns ceil(M / W) or floor(M / W) matrices and the big ones are
    spread. Deterministic: every rank computes the same answer without communicating.
    """
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    owners = [0] * len(costs)
    for j, i in enumerate(order):
        r, k = divmod(j, world_size)
        owners[i] = ((k if r % 2 == 0 else world_size - 1 - k) + offset) % world_size
    return owners


def all_finite_global(tensors) -> bool:
    """``all_finite`` over DTensors: every rank checks its shards, then they agree (MIN)."""
    tensors = list(tensors)
    ok = all_finite(local(t) for t in tensors)
    meshes = [t.device_mesh for t in tensors if isinstance(t, DTensor)]
    if meshes and meshes[0].size() > 1:
        flag = torch.tensor(int(ok), device=local(tensors[0]).device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=meshes[0].get_group())
        ok = bool(flag.item())
    return ok


class CommStats(Counter):
    """Bytes this rank sent to / received from other ranks, and the collectives it joined."""

    def collective(self, sent: int, received: int) -> None:
        self["collectives"] += 1
        self["sent_bytes"] += sent
        self["recv_bytes"] += received


@dataclass
class StepPlan:
    """What every rank knows, without communicating, about one group's step: each matrix's
    layout and owner, this rank, and where the payloads live (``dtype``, ``device``)."""

    layouts: list[Layout]
    owners: list[int]
    group: Any  # the process group (None: the default group)
    world: int
    me: int
    dtype: torch.dtype
    device: torch.device
    stats: CommStats

    def rows_numel(self, i: int, rank: int) -> int:
        """Elements of matrix ``i`` that ``rank`` holds (Shard(0))."""
        return self.layouts[i].rows[rank] * self.layouts[i].row_numel

    def rows_view(self, i: int, rank: int, flat: Tensor) -> Tensor:
        return flat.view(self.layouts[i].rows[rank], *self.layouts[i].shape[1:])

    def all_to_all(self, out: list[list[Tensor]], recv_numels: list[int]) -> list[Tensor]:
        """Send the flat tensors ``out[d]`` to rank d; returns the flat piece from each rank."""
        send_splits = [sum(t.numel() for t in chunks) for chunks in out]
        flat = [t for chunks in out for t in chunks]
        send = torch.cat(flat) if flat else torch.empty(0, dtype=self.dtype, device=self.device)
        recv = torch.empty(sum(recv_numels), dtype=self.dtype, device=self.device)
        dist.all_to_all_single(recv, send, recv_numels, send_splits, group=self.group)
        size, me = send.element_size(), self.me
        self.stats.collective(
            (sum(send_splits) - send_splits[me]) * size, (sum(recv_numels) - recv_numels[me]) * size
        )
        return list(recv.split(recv_numels))

    def gather_to_owners(self, updates: dict[int, Tensor], mine: list[int]) -> dict[int, Tensor]:
        """This rank's rows of every sharded update -> the whole updates of ``mine``."""
        out: list[list[Tensor]] = [[] for _ in range(self.world)]
        for i, u in updates.items():
            out[self.owners[i]].append(u.reshape(-1))
        recv = [sum(self.rows_numel(i, s) for i in mine) for s in range(self.world)]
        rows: dict[int, list[Tensor]] = {i: [] for i in mine}
        for s, piece in enumerate(self.all_to_all(out, recv)):
            for i, part in zip(mine, piece.split([self.rows_numel(i, s) for i in mine])):
                rows[i].append(self.rows_view(i, s, part))
        return {i: torch.cat(rows[i]) for i in mine}

    def scatter_from_owners(self, orth: dict[int, Tensor], sharded: list[int]) -> dict[int, Tensor]:
        """The whole results this rank owns -> this rank's rows of every sharded result."""
        out: list[list[Tensor]] = [[] for _ in range(self.world)]
        for i, o in orth.items():
            for d, part in enumerate(o.split(list(self.layouts[i].rows))):
                out[d].append(part.reshape(-1))
        from_rank = [[i for i in sharded if self.owners[i] == s] for s in range(self.world)]
        recv = [sum(self.rows_numel(i, self.me) for i in ids) for ids in from_rank]
        result: dict[int, Tensor] = {}
        for ids, piece in zip(from_rank, self.all_to_all(out, recv)):
            for i, part in zip(ids, piece.split([self.rows_numel(i, self.me) for i in ids])):
                result[i] = self.rows_view(i, self.me, part)
        return result

    def all_gather(self, orth: dict[int, Tensor], replicated: list[int]) -> dict[int, Tensor]:
        """Each owner's replicated results -> every rank, through one padded all-gather."""
        numel = [0] * self.world
        for i in replicated:
            numel[self.owners[i]] += math.prod(self.layouts[i].shape)
        width = max(numel)
        mine = [orth[i].reshape(-1) for i in replicated if self.owners[i] == self.me]
        send = torch.zeros(width, dtype=self.dtype, device=self.device)
        if mine:
            send[: numel[self.me]] = torch.cat(mine)
        recv = torch.empty(self.world * width, dtype=self.dtype, device=self.device)
        ALL_GATHER(recv, send, group=self.group)
        moved = (self.world - 1) * width * send.element_size()
        self.stats.collective(moved, moved)
        result, cursor = {}, [r * width for r in range(self.world)]
        for i in replicated:
            n = math.prod(self.layouts[i].shape)
            start = cursor[self.owners[i]]
            result[i] = recv[start : start + n].view(self.layouts[i].shape)
            cursor[self.owners[i]] += n
        return result


def _ns_offset(optimizer, group: dict) -> int:
    """Matrices in the Muon groups before ``group``: the next group's deal starts there."""
    total = 0
    for g in optimizer.param_groups:
        if g is group:
            return total
        if g.get("use_muon", True):
            total += len(g["params"])
    return total


def distributed_muon_group_step(optimizer, group: dict, params: list[Tensor], grads: list[Tensor]):
    """One Muon step of ``group`` across ranks (see the module docstring); call on every rank.

    ``optimizer`` provides the momentum buffers (``_momentum_buffers``) and receives the
    counters ``ns_counts`` (Counter of (group index, param index) -> times this rank
    orthogonalized it) and ``comm_stats`` (:class:`CommStats`).
    """
    pg = group_process_group(params, getattr(optimizer, "process_group", None))
    world = dist.get_world_size(pg) if dist.is_initialized() else 1
    me = dist.get_rank(pg) if dist.is_initialized() else 0
    layouts = [layout_of(p) for p in params]
    grads = [
        g.redistribute(p.device_mesh, p.placements)
        if isinstance(g, DTensor) and g.placements != p.placements
        else g
        for p, g in zip(params, grads)
    ]
    dtypes = {p.dtype for p in params}
    if len(dtypes) > 1:
        raise ValueError(
            f"distributed Muon needs one dtype per param group, got {sorted(map(str, dtypes))}; "
            "put parameters of different dtypes in separate groups"
        )
    dtype = dtypes.pop()
    split = group["ns_split"]

    options = MuonOptions.from_group(group)
    updates = momentum_update_(
        [local(b) for b in optimizer._momentum_buffers(params)],
        [local(g) for g in grads],
        options,
    )
    plan = StepPlan(
        layouts=layouts,
        owners=assign_owners(
            [ns_cost(lay.shape, split) for lay in layouts], world, _ns_offset(optimizer, group)
        ),
        group=pg,
        world=world,
        me=me,
        dtype=dtype,
        device=local(params[0]).device,
        stats=optimizer.__dict__.setdefault("comm_stats", CommStats()),
    )
    is_sharded = [lay.rows is not None and world > 1 for lay in layouts]
    sharded = [i for i in range(len(params)) if is_sharded[i]]
    replicated = [i for i in range(len(params)) if not is_sharded[i]]
    mine = [i for i in range(len(params)) if plan.owners[i] == me]

    whole = {i: updates[i] for i in mine if not is_sharded[i]}
    if sharded:
        rows = {i: updates[i] for i in sharded}
        whole.update(plan.gather_to_owners(rows, [i for i in mine if is_sharded[i]]))
    order = sorted(whole)
    results = orthogonalize_updates([whole[i] for i in order], options)
    orth = dict(zip(order, results))
    counts = optimizer.__dict__.setdefault("ns_counts", Counter())
    gi = next(k for k, g in enumerate(optimizer.param_groups) if g is group)
    index = {id(p): k for k, p in enumerate(group["params"])}
    counts.update((gi, index[id(params[i])]) for i in order)

    final: dict[int, Tensor] = {}
    if sharded:
        owned = {i: orth[i] for i in order if is_sharded[i]}
        final.update(plan.scatter_from_owners(owned, sharded))
    if world > 1 and replicated:
        final.update(plan.all_gather(orth, replicated))
    else:
        final.update({i: orth[i] for i in replicated})
    scales = [lr_scale(group["lr_scaling"], block_shape(lay.shape, split)) for lay in layouts]
    apply_updates_(
        [local(p) for p in params],
        [final[i] for i in range(len(params))],
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        scales=scales,
    )


class DistributedMuon(Muon):
    """:class:`muonkit.Muon` for data-parallel training: each matrix orthogonalized once.

    Same arguments as ``Muon`` plus ``process_group`` (None: the default group) for plain
    (replicated) parameters; DTensor parameters use their mesh. Use it with DDP, whose
    gradients arrive all-reduced: ``muonkit.Muon`` would be correct there too but repeat every
    Newton-Schulz on every rank. (``muonkit.Muon`` takes this path by itself when its
    parameters are DTensors, as after ``fully_shard``.) Needs an initialized process group.
    """

    def __init__(self, params, *args, process_group=None, **kwargs):
        require_process_group("DistributedMuon")
        self.process_group = process_group
        super().__init__(params, *args, **kwargs)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        group_process_group(group["params"], self.process_group)

    def _muon_group_step(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        distributed_muon_group_step(self, group, params, grads)


class DistributedMuonWithAuxAdam(MuonWithAuxAdam):
    """:class:`muonkit.MuonWithAuxAdam` whose Muon groups step as :class:`DistributedMuon`.

    AdamW groups are elementwise, so each rank updates what it holds (all of a replicated
    parameter, its shard of a DTensor). Takes ``process_group`` like ``DistributedMuon``.
    """

    def __init__(self, param_groups, nonfinite: str = "raise", process_group=None):
        require_process_group("DistributedMuonWithAuxAdam")
        self.process_group = process_group
        super().__init__(param_groups, nonfinite=nonfinite)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        if group["use_muon"]:
            group_process_group(group["params"], self.process_group)

    def _muon_group_step(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        distributed_muon_group_step(self, group, params, grads)
