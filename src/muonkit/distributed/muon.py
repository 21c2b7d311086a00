"""Muon under torch.distributed: the group step for any DTensor layout, and for DDP.

Newton-Schulz must see each *whole* matrix: orthogonalizing a shard on its own gives a
different (wrong) update. And it should run once per matrix in the whole world, not once per
rank or per replica group. :class:`ShardedStep` is the step strategy that
:class:`muonkit.Muon` and :class:`muonkit.MuonWithAuxAdam` take when a param group holds
DTensors (``muonkit`` registers it, so users need not import this module), and that
:class:`DistributedMuon` takes for replicated (DDP) parameters. One step of a Muon group, on
every rank:

1. momentum (the group's store, :class:`muonkit.muon.DenseMomentum`: Muon's
   ``momentum_update_``) on the local tensors: elementwise, so the local part of the update is
   the local part of the full one (a store that needs whole matrices, as the compressed
   variants', is not elementwise: its groups take the single-device step);
2. **plan** (built once, cached): every matrix (or expert, with ``ns_batch_dims``) gets one
   owner rank, and every rank knows who sends which of its elements where
   (:mod:`muonkit.distributed.plan`, from the placements via :mod:`.layout`);
3. **gather**: one ``all_to_all`` brings each matrix whole to its owner;
4. the single-device ``muonkit.muon.orthogonalize_and_apply_``, with the group's
   :class:`~muonkit.options.MuonOptions`, whose orthogonalize stage is: the owner's
   ``orthogonalize_updates`` on its whole matrices, then
5. **scatter**: one ``all_to_all`` sends each rank its elements of the results;
   weight decay and the LR-scaled step (LR rule on the full shape) apply to the local tensors.

A step where no rank holds another's elements (expert parallel, one process) communicates
nothing. Before any of it, the non-finite check agrees over all ranks (one ``all_reduce``),
so a NaN in one rank's shard makes every rank refuse the step. The strategy owns the counters:
``ns_counts`` (Counter of (group index, param index) -> matrices this rank orthogonalized) and
``comm_stats`` (bytes this rank sent to / received from other ranks; the optimizer shows both).

Microsoft dion (``dion/muon.py``) orthogonalizes FSDP2-sharded matrices with all-to-all in the
same spirit (ideas only; no code is shared).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from ..functional import (
    all_finite,
    any_dtensor,
    orthogonalize_and_apply_,
    orthogonalize_updates,
)
from ..hybrid import MuonWithAuxAdam
from ..muon import LocalStep, Muon
from ..options import MuonOptions
from ..variants.normuon import NorMuon, NorMuonWithAuxAdam
from .layout import assign_owners, comm_group, holding, shard_rows
from .plan import CommStats, ExchangePlan, ns_cost, unit_owners

__all__ = [
    "CommStats",
    "DistributedMuon",
    "DistributedMuonWithAuxAdam",
    "DistributedNorMuon",
    "DistributedNorMuonWithAuxAdam",
    "ShardedStep",
    "assign_owners",
    "ns_cost",
    "require_process_group",
    "shard_rows",
]


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


def check_one_dtype(params: Sequence[Tensor]) -> None:
    dtypes = {p.dtype for p in params}
    if len(dtypes) > 1:
        raise ValueError(
            f"distributed Muon needs one dtype per param group, got {sorted(map(str, dtypes))}; "
            "put parameters of different dtypes in separate groups"
        )


def flag_device() -> torch.device:
    """Where a small tensor for a collective must live: the current CUDA device under NCCL."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class ShardedStep(LocalStep):
    """The Muon group step across ranks (see the module docstring).

    Args:
        process_group: the group plain (replicated) parameters are shared over (None: the
            default group); DTensor parameters use their meshes' ranks.
        replicated: step plain-tensor groups across ranks too (DDP); otherwise they take the
            single-device step, as in ``muonkit.Muon``.
    """

    def __init__(self, process_group=None, replicated: bool = False):
        super().__init__()
        self.comm_stats = CommStats()
        self.process_group = process_group
        self.replicated = replicated
        self.groups: list[dict] = []  # the Muon groups that step across ranks
        self._owners: tuple[tuple, dict[int, Tensor]] | None = None
        self._plans: dict[int, tuple[tuple, ExchangePlan]] = {}

    def across_ranks(self, params: Sequence[Tensor]) -> bool:
        return self.replicated or any_dtensor(params)

    def check_group(self, group: dict) -> None:
        if group.get("use_muon", True) and self.across_ranks(group["params"]):
            comm_group(group["params"], self.process_group)
            check_one_dtype(group["params"])
            self.groups.append(group)

    def all_finite(self, tensors) -> bool:
        """Every rank checks what it holds; then all ranks agree (MIN), so all refuse alike."""
        tensors = [local(t) for t in tensors]
        ok = all_finite(tensors)
        if dist.is_initialized() and dist.get_world_size() > 1:
            device = tensors[0].device if tensors else flag_device()
            flag = torch.tensor(int(ok), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = bool(flag.item())
        return ok

    def __call__(self, gi, group, params, grads, options: MuonOptions, momentum, post=None) -> None:
        if not (self.across_ranks(params) and momentum.elementwise):
            super().__call__(gi, group, params, grads, options, momentum, post)
            return
        grads = [
            g.redistribute(p.device_mesh, p.placements)
            if isinstance(g, DTensor) and g.placements != p.placements
            else g
            for p, g in zip(params, grads)
        ]
        updates = momentum.updates(grads, view=local)
        plan = self.plan(gi, params, options)
        orthogonalize_and_apply_(
            [local(p) for p in params],
            updates,
            lr=group["lr"],
            options=options,
            shapes=[tuple(p.shape) for p in params],
            orthogonalize=partial(self.orthogonalize_owned, plan, post),
        )
        if post is not None:
            self.share_owner_state(plan, post.state)
        index = {id(p): k for k, p in enumerate(group["params"])}
        for p, route in zip(params, plan.routes):
            if route.owned:
                self.ns_counts[(gi, index[id(p)])] += route.owned

    def orthogonalize_owned(
        self, plan: ExchangePlan, post, updates: Sequence[Tensor], options: MuonOptions
    ) -> list[Tensor]:
        """Gather -> the owner's ``orthogonalize_updates`` (then ``post.transform``) on its
        whole matrices -> scatter."""
        whole = plan.gather(updates, self.comm_stats)
        mine = [j for j, route in enumerate(plan.routes) if route.owned]
        if plan.batch_dims:  # the owner holds (owned experts, *matrix shape) per parameter
            options = options.replace(ns_batch_dims=1)
        done = orthogonalize_updates([whole[j] for j in mine], options)
        if post is not None:
            done = [post.transform(j, o) for j, o in zip(mine, done)]
        results = [w.new_empty(0) for w in whole]
        for j, o in zip(mine, done):
            results[j] = o
        return plan.scatter(results, updates, self.comm_stats)

    def share_owner_state(self, plan: ExchangePlan, state: Sequence[Tensor | None]) -> None:
        """Copy each parameter's ``state`` tensor (replicated, whole on every rank) from the
        rank that owns the parameter's matrix, which alone updated it, to every rank: one
        all-reduce of the tensors, each rank contributing zeros for those it does not own."""
        held = [(t, route.owned) for t, route in zip(state, plan.routes) if t is not None]
        if not held or plan.comm.size == 1:
            return
        flat = torch.cat([(t if owned else torch.zeros_like(t)).reshape(-1) for t, owned in held])
        dist.all_reduce(flat, group=plan.comm.group)
        nbytes = flat.numel() * flat.element_size()
        self.comm_stats.collective(nbytes, nbytes)
        offset = 0
        for t, _ in held:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def plan(self, gi: int, params: Sequence[Tensor], options: MuonOptions) -> ExchangePlan:
        """The cached :class:`ExchangePlan` of group ``gi`` (rebuilt when its parameters with
        gradients, or any group's parameters or ``ns_batch_dims``/``ns_split``, change)."""
        owners = self.unit_owners()
        key = (tuple(id(p) for p in params), options.ns_batch_dims, options.ns_split)
        cached = self._plans.get(gi)
        if cached is not None and cached[0] == key:
            return cached[1]
        comm = comm_group(params, self.process_group)
        plan = ExchangePlan.build(
            [holding(p, comm) for p in params], comm, options.ns_batch_dims,
            [owners[id(p)] for p in params],
        )  # fmt: skip
        self._plans[gi] = (key, plan)
        return plan

    def unit_owners(self) -> dict[int, Tensor]:
        """{id(param): owner of each of its units}, balanced over all the Muon groups that
        share a set of ranks (so no rank owns more than ceil(M / W) of their M matrices when
        no layout pins them), recomputed when a group's parameters or options change."""
        groups = [(g["params"], MuonOptions.from_group(g)) for g in self.groups]
        key = tuple((tuple(map(id, ps)), o.ns_batch_dims, o.ns_split) for ps, o in groups)
        if self._owners is None or self._owners[0] != key:
            by_ranks: dict[tuple, list] = {}
            for params, options in groups:
                comm = comm_group(params, self.process_group)
                for p in params:
                    by_ranks.setdefault(comm.global_ranks, (comm, []))[1].append((p, options))
            owners = {}
            for comm, items in by_ranks.values():
                found = unit_owners(
                    [holding(p, comm) for p, _ in items],
                    [o.ns_batch_dims for _, o in items],
                    [o.ns_split for _, o in items],
                    comm.size,
                )
                owners.update({id(p): o for (p, _), o in zip(items, found)})
            self._owners = (key, owners)
            self._plans.clear()
        return self._owners[1]


class ReplicatedMuon:
    """Mixin: the optimizer steps its Muon groups with ``ShardedStep(replicated=True)``."""

    def __init__(self, *args, process_group=None, **kwargs):
        require_process_group(type(self).__name__)
        self.group_step = ShardedStep(process_group, replicated=True)
        super().__init__(*args, **kwargs)


class DistributedMuon(ReplicatedMuon, Muon):
    """:class:`muonkit.Muon` for data-parallel training: each matrix orthogonalized once.

    Same arguments as ``Muon`` plus ``process_group`` (None: the default group) for plain
    (replicated) parameters; DTensor parameters use their mesh. Use it with DDP, whose
    gradients arrive all-reduced: ``muonkit.Muon`` would be correct there too but repeat every
    Newton-Schulz on every rank. (``muonkit.Muon`` takes this path by itself when its
    parameters are DTensors, as after ``fully_shard``.) Needs an initialized process group.
    """


class DistributedMuonWithAuxAdam(ReplicatedMuon, MuonWithAuxAdam):
    """:class:`muonkit.MuonWithAuxAdam` whose Muon groups step as :class:`DistributedMuon`.

    AdamW groups are elementwise, so each rank updates what it holds (all of a replicated
    parameter, its shard of a DTensor). Takes ``process_group`` like ``DistributedMuon``.
    """


class DistributedNorMuon(ReplicatedMuon, NorMuon):
    """:class:`muonkit.variants.NorMuon` for data-parallel training, as
    :class:`DistributedMuon` is ``Muon``'s: each matrix orthogonalized and row-normalized once,
    on its owner rank (``muonkit.variants.NorMuon`` over DTensor parameters takes this path by
    itself). Takes ``process_group``; needs an initialized process group."""


class DistributedNorMuonWithAuxAdam(ReplicatedMuon, NorMuonWithAuxAdam):
    """:class:`muonkit.variants.NorMuonWithAuxAdam` whose NorMuon groups step as
    :class:`DistributedNorMuon`. Takes ``process_group`` like ``DistributedMuon``."""
