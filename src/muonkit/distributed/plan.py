"""The exchange plan of one distributed Muon group step: owners, and who sends what to whom.

Each parameter is ``units`` independent matrices (1, or the experts of an ``(E, out, in)``
stack with ``ns_batch_dims=1``); unit ``k`` is the flat range ``[k u, (k + 1) u)`` of the
full tensor. From every rank's element indices (:mod:`muonkit.distributed.layout`) the plan
gives each unit one owner (a rank that already holds it whole when one does, as under expert
parallelism; else any rank, balanced by :func:`~muonkit.distributed.layout.assign_owners`),
and derives two exchanges:

* **gather**: every element of a unit reaches its owner once. Ranks holding the same piece
  (replicas of an HSDP shard, or every rank of a replicated parameter) send it once: the owner
  itself when it holds that piece, else the holder nearest the owner on the mesh (fewest
  differing coordinates: the owner's replica group);
* **scatter**: the owner sends each rank (replicas included) its elements of the result.

The owner keeps its units in a compact buffer (``(owned units, u)`` per parameter), which is
what it orthogonalizes. One ``all_to_all`` per exchange moves everything; an exchange in
which no rank sends to another (a replicated matrix needs no gather; expert parallel and one
process need neither) skips its collective.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..functional import block_shape
from .layout import CommGroup, Holding, assign_owners


class CommStats(Counter):
    """Bytes this rank sent to / received from other ranks, and the collectives it joined."""

    def collective(self, sent: int, received: int) -> None:
        self["collectives"] += 1
        self["sent_bytes"] += sent
        self["recv_bytes"] += received


def ns_cost(shape: Sequence[int], split: int = 1, batch_dims: int = 0) -> int:
    """Newton-Schulz FLOPs, up to a constant, of one matrix: split * m * n * min(m, n)."""
    m, n = block_shape(shape, split, batch_dims)
    return split * m * n * min(m, n)


def nearest(holders: Sequence[int], target: int, coord: Sequence[tuple]) -> int:
    """The holder whose mesh coordinate differs from ``target``'s in the fewest dims."""
    return min(
        holders, key=lambda h: (sum(a != b for a, b in zip(coord[h], coord[target])), h)
    )


@dataclass
class ParamRoutes:
    """One parameter's part of the plan, as this rank sees it (index tensors, flat)."""

    unit_numel: int
    owned: int  # units this rank owns
    send_gather: list[Tensor]  # [dest] positions in my local tensor
    recv_gather: list[Tensor]  # [src] positions in my compact buffer
    send_result: list[Tensor]  # [dest] positions in my compact buffer
    recv_result: list[Tensor]  # [src] positions in my local tensor


def unit_owners(
    holdings: Sequence[Holding], batch_dims: Sequence[int], splits: Sequence[int], world: int
) -> list[Tensor]:
    """The owner of every unit of every parameter, balanced over all of them together (a
    rank holding the unit whole when any does): one tensor of owners per parameter."""
    costs, candidates, sizes = [], [], []
    for h, b, split in zip(holdings, batch_dims, splits):
        units = math.prod(h.shape[:b])
        unit_numel = math.prod(h.shape[b:])
        counts = torch.stack([torch.bincount(i // unit_numel, minlength=units) for i in h.index])
        whole = counts == unit_numel  # (ranks, units)
        for k in range(units):
            ranks = whole[:, k].nonzero().flatten().tolist()
            candidates.append(ranks or None)
            costs.append(ns_cost(h.shape, split, b))
        sizes.append(units)
    owners = torch.tensor(assign_owners(costs, world, candidates=candidates), dtype=torch.long)
    return list(owners.split(sizes))


def param_routes(h: Holding, owner: Tensor, batch_dims: int, me: int) -> ParamRoutes:
    """:class:`ParamRoutes` of one parameter whose unit ``k`` is owned by ``owner[k]``."""
    world = len(h.index)
    unit_numel = math.prod(h.shape[batch_dims:])
    slot = torch.full_like(owner, -1)
    mine = owner == me
    slot[mine] = torch.arange(int(mine.sum()))
    holders: dict[tuple, list[int]] = {}
    for r, key in enumerate(h.piece):
        holders.setdefault(key, []).append(r)

    def sender(r: int, o: int) -> bool:
        """Does rank r send its piece's part of owner o's units to o?"""
        return nearest(holders[h.piece[r]], o, h.coord) == r if h.piece[o] != h.piece[r] else r == o

    def compact(index: Tensor) -> Tensor:
        return slot[index // unit_numel] * unit_numel + index % unit_numel

    to_owner = [owner[i // unit_numel] for i in h.index]  # owner of each local element, by rank
    none = torch.zeros(0, dtype=torch.long)
    send_gather = [
        (to_owner[me] == d).nonzero().flatten() if sender(me, d) else none for d in range(world)
    ]
    recv_gather = [
        compact(h.index[s][to_owner[s] == me]) if sender(s, me) else none for s in range(world)
    ]
    send_result = [compact(h.index[d][to_owner[d] == me]) for d in range(world)]
    recv_result = [(to_owner[me] == s).nonzero().flatten() for s in range(world)]
    return ParamRoutes(unit_numel, int(mine.sum()), send_gather, recv_gather, send_result,
                       recv_result)  # fmt: skip


@dataclass
class ExchangePlan:
    """Everything one rank needs to move one group's updates to their owners and back."""

    comm: CommGroup
    me: int
    shapes: list[tuple[int, ...]]
    batch_dims: int
    routes: list[ParamRoutes]
    owners: list[Tensor]
    gather_traffic: bool  # does any rank send anything to another (the same on every rank)
    scatter_traffic: bool

    @classmethod
    def build(
        cls, holdings: Sequence[Holding], comm: CommGroup, batch_dims: int, owners: list[Tensor]
    ) -> ExchangePlan:
        me = comm.me()
        routes = [param_routes(h, o, batch_dims, me) for h, o in zip(holdings, owners)]
        gather = scatter = False
        for h, o in zip(holdings, owners):
            unit_numel = math.prod(h.shape[batch_dims:])
            held = torch.stack([torch.bincount(i // unit_numel, minlength=len(o)) for i in h.index])
            gather |= bool((held[o, torch.arange(len(o))] < unit_numel).any())  # owner lacks part
            scatter |= any(bool((o[i // unit_numel] != r).any()) for r, i in enumerate(h.index))
        shapes = [h.shape for h in holdings]
        return cls(comm, me, shapes, batch_dims, routes, owners, gather, scatter)

    def exchange(
        self, pieces: list[list[Tensor]], recv_numel: list[int], stats: CommStats, traffic: bool
    ) -> list[Tensor | None]:
        """Send the flat tensors ``pieces[d]`` to rank d; returns the flat piece from each (one
        ``all_to_all``; only the local piece, without a collective, when ``traffic`` is False
        on every rank)."""
        if not traffic:
            return [torch.cat(p) if s == self.me else None for s, p in enumerate(pieces)]
        send_splits = [sum(t.numel() for t in p) for p in pieces]
        send = torch.cat([t for p in pieces for t in p])
        recv = send.new_empty(sum(recv_numel))
        dist.all_to_all_single(recv, send, recv_numel, send_splits, group=self.comm.group)
        size, me = send.element_size(), self.me
        stats.collective(
            (sum(send_splits) - send_splits[me]) * size, (sum(recv_numel) - recv_numel[me]) * size
        )
        return list(recv.split(recv_numel))

    def gather(self, updates: Sequence[Tensor], stats: CommStats) -> list[Tensor]:
        """Local updates (flat views of this rank's elements) -> my units, whole: one tensor
        ``(owned units, *unit shape)`` per parameter (``shape`` itself when not batched)."""
        world = self.comm.size
        pieces = [[u.reshape(-1)[r.send_gather[d]] for u, r in zip(updates, self.routes)]
                  for d in range(world)]  # fmt: skip
        recv = [sum(len(r.recv_gather[s]) for r in self.routes) for s in range(world)]
        got = self.exchange(pieces, recv, stats, self.gather_traffic)
        whole = [updates[0].new_empty(r.owned * r.unit_numel) for r in self.routes]
        for s, flat in enumerate(got):
            if flat is None:
                continue
            parts = flat.split([len(r.recv_gather[s]) for r in self.routes])
            for buf, r, part in zip(whole, self.routes, parts):
                buf[r.recv_gather[s]] = part
        return [self.unit_view(j, w) for j, w in enumerate(whole)]

    def unit_view(self, j: int, flat: Tensor) -> Tensor:
        """My units of parameter j: ``(owned, *unit shape)``, or its full shape unbatched."""
        shape = self.shapes[j]
        if self.batch_dims == 0 and self.routes[j].owned:
            return flat.view(shape)
        return flat.view(-1, *shape[self.batch_dims :])

    def scatter(self, results: Sequence[Tensor], like: Sequence[Tensor], stats: CommStats):
        """My orthogonalized units -> this rank's elements of every result (``like``'s shapes)."""
        world = self.comm.size
        pieces = [[o.reshape(-1)[r.send_result[d]] for o, r in zip(results, self.routes)]
                  for d in range(world)]  # fmt: skip
        recv = [sum(len(r.recv_result[s]) for r in self.routes) for s in range(world)]
        got = self.exchange(pieces, recv, stats, self.scatter_traffic)
        final = [torch.empty_like(t) for t in like]
        for s, flat in enumerate(got):
            if flat is None:
                continue
            parts = flat.split([len(r.recv_result[s]) for r in self.routes])
            for out, r, part in zip(final, self.routes, parts):
                out.view(-1)[r.recv_result[s]] = part
        return final
