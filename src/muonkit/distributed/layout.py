"""Where each element of a parameter lives: DTensor placements -> per-rank element indices.

A DTensor on an n-D ``DeviceMesh`` holds, on the rank at mesh coordinate ``c``, the elements
that applying its placements mesh dim by mesh dim selects: ``Shard(d)`` takes chunk ``c[i]``
of tensor dim ``d`` (``torch.chunk`` sizes, later chunks possibly empty), ``Replicate()``
keeps everything, and FSDP2's ``_StridedShard`` (fully_shard over a tensor-parallel
``Shard(0)``) takes its strided chunk. :func:`local_index` replays exactly that on an index
tensor, with the placements' own ``_split_tensor`` (DTensor's rule, so uneven and empty shards
match), which covers FSDP2 (1-D, default meshes), HSDP ``(Replicate(), Shard(0))``, tensor
parallel ``Shard(0)``/``Shard(1)``, FSDP x TP and expert parallel alike. ``Partial`` (a sum
not yet reduced) cannot be orthogonalized and is refused.

Every function here is pure (no communication): every rank computes the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.placement_types import _StridedShard

SUPPORTED_PLACEMENTS = "Shard(d), Replicate() and FSDP2's _StridedShard"


def is_shard(placement) -> bool:
    return isinstance(placement, (Shard, _StridedShard))


def check_placements(p: Tensor) -> None:
    """Raise a ValueError naming the placement when Muon cannot step ``p`` as it is held."""
    if not isinstance(p, DTensor):
        return
    for i, placement in enumerate(p.placements):
        if not (is_shard(placement) or isinstance(placement, Replicate)):
            raise ValueError(
                f"distributed Muon got a parameter of shape {tuple(p.shape)} with placement "
                f"{placement} on mesh dim {i} (placements {tuple(p.placements)}); it supports "
                f"{SUPPORTED_PLACEMENTS}. A Partial tensor is a sum not yet reduced: "
                "redistribute it to Replicate() or Shard(d) before the optimizer step."
            )


def shard_rows(dim0: int, world_size: int) -> tuple[int, ...]:
    """Rows of each rank under Shard(0) on a 1-D mesh: ``torch.chunk`` sizes, then empty
    shards (4 rows on 3 ranks are (2, 2, 0); 2 rows on 3 ranks are (1, 1, 0))."""
    chunk = -(-dim0 // world_size)
    return tuple(max(0, min(chunk, dim0 - r * chunk)) for r in range(world_size))


def local_index(
    shape: Sequence[int], mesh_shape: Sequence[int], placements: Sequence, coord: Sequence[int]
) -> Tensor:
    """Flat indices (into the full tensor) of the elements the rank at mesh coordinate
    ``coord`` holds, in the order of its local tensor."""
    index = torch.arange(math.prod(shape)).view(tuple(shape))
    for size, placement, c in zip(mesh_shape, placements, coord):
        if is_shard(placement):
            pieces, _ = placement._split_tensor(index, size, with_padding=False, contiguous=False)
            index = pieces[c]
    return index.reshape(-1)


@dataclass(frozen=True)
class CommGroup:
    """The ranks a param group's step communicates over: ``group`` (None: the default group)
    and, for each of its ranks, the global rank."""

    group: object
    global_ranks: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.global_ranks)

    def me(self) -> int:
        return self.global_ranks.index(dist.get_rank())


def mesh_ranks(mesh) -> tuple[int, ...]:
    return tuple(sorted(mesh.mesh.flatten().tolist()))


def comm_group(params: Sequence[Tensor], default=None) -> CommGroup:
    """The :class:`CommGroup` of one param group (validating placements and meshes).

    Every DTensor's mesh must span the same ranks (equal meshes, e.g. the distinct but equal
    default meshes of several ``fully_shard`` calls, or a 2-D mesh and a 1-D mesh over the same
    ranks); plain tensors are replicated over them. Only plain tensors: ``default`` (None: the
    default group).
    """
    meshes = []
    for p in params:
        check_placements(p)
        if isinstance(p, DTensor) and all(p.device_mesh != m for m in meshes):
            meshes.append(p.device_mesh)
    spans = {mesh_ranks(m) for m in meshes}
    if len(spans) > 1:
        raise ValueError(
            "distributed Muon needs every DTensor of a param group on device meshes over the "
            f"same ranks; got meshes over {sorted(spans)}. Put parameters of different meshes "
            "in different param groups."
        )
    if not meshes:
        size = dist.get_world_size(default)
        return CommGroup(default, tuple(dist.get_global_rank(default, r) if default else r
                                        for r in range(size)))  # fmt: skip
    ranks = spans.pop()
    if ranks == tuple(range(dist.get_world_size())):
        return CommGroup(None, ranks)
    mesh = meshes[0]
    group = mesh.get_group() if mesh.ndim == 1 else mesh._flatten().get_group()
    return CommGroup(group, tuple(dist.get_global_rank(group, r) for r in range(len(ranks))))


@dataclass(frozen=True)
class Holding:
    """How one parameter is held over a :class:`CommGroup`: for each of its ranks, the flat
    indices of the local elements and the key of its piece (equal keys: equal elements)."""

    shape: tuple[int, ...]
    index: tuple[Tensor, ...]
    piece: tuple[tuple[int, ...], ...]
    coord: tuple[tuple[int, ...], ...]


def holding(p: Tensor, comm: CommGroup) -> Holding:
    """The :class:`Holding` of ``p`` (a plain tensor: every rank holds all of it)."""
    shape = tuple(p.shape)
    if not isinstance(p, DTensor):
        full = torch.arange(math.prod(shape))
        return Holding(shape, (full,) * comm.size, ((),) * comm.size, ((),) * comm.size)
    mesh = p.device_mesh
    grid = mesh.mesh
    coords = tuple(
        tuple(int(x) for x in (grid == g).nonzero()[0].tolist()) for g in comm.global_ranks
    )
    sharded = [i for i, pl in enumerate(p.placements) if is_shard(pl)]
    return Holding(
        shape,
        tuple(local_index(shape, grid.shape, p.placements, c) for c in coords),
        tuple(tuple(c[i] for i in sharded) for c in coords),
        coords,
    )


def assign_owners(
    costs: Sequence[int],
    world_size: int,
    offset: int = 0,
    candidates: Sequence[Sequence[int] | None] | None = None,
    loads: Sequence[int] | None = None,
) -> list[int]:
    """The owner rank of each matrix, balanced by count first, then by cost.

    Matrices restricted to ``candidates`` (e.g. the ranks that already hold an expert whole)
    go first, then the others by cost, largest first; each goes to the candidate with the
    fewest matrices so far (``loads``: counts carried from earlier groups), then the least
    cost, then the first rank after ``offset``. Unrestricted matrices thus never leave a rank
    more than one matrix above another: with no restrictions every rank owns ceil(M / W) or
    floor(M / W). Deterministic: every rank computes the same answer without communicating.
    """
    candidates = candidates or [None] * len(costs)
    count = list(loads or [0] * world_size)
    cost = [0] * world_size
    order = sorted(
        range(len(costs)),
        key=lambda i: (candidates[i] is None, -costs[i], i),
    )
    owners = [0] * len(costs)
    for i in order:
        ranks = candidates[i] if candidates[i] is not None else range(world_size)
        r = min(ranks, key=lambda r: (count[r], cost[r], (r - offset) % world_size))
        owners[i] = r
        count[r] += 1
        cost[r] += costs[i]
    return owners
