"""See what a Muon optimizer does: which parameter trains how, and whether Muon runs at all.

The commonest Muon failure is silent: every matrix went to AdamW, the Muon group is empty or
never gets a gradient, or an embedding or the output layer went to Muon. Three tools say so:

* :func:`describe` (``muonkit.describe(optimizer, model)``): a table of every parameter, its
  group (Muon or AdamW), shape, how it is orthogonalized (as which matrix; split in row blocks
  for a fused QKV weight or per head; a conv kernel flattened; an expert stack; batched with
  which same-shape matrices), its effective LR (the group's lr times the LR rule's factor for
  its shape), its weight decay, and the totals per group kind; it warns (:class:`MuonWarning`,
  once per optimizer and message) about an empty Muon group, a 1-D parameter, an embedding or
  an output layer in a Muon group, and bf16 Newton-Schulz on a CPU without native bf16.
* :class:`HealthMonitor`: step hooks on an optimizer that count the steps in which each Muon
  group stepped, warn once about Muon parameters that received no gradient in the first
  steps, and, at a step asked for (:meth:`HealthMonitor.arm`, the lab's evaluations), measure
  the update RMS per group and the Newton-Schulz error of one sampled matrix (its gradient's
  orthogonalization against the exact polar factor); :meth:`HealthMonitor.record` gives them.

Everything is read from the optimizer's param groups and options (where torch.optim keeps
them), never from a step's internals; the batches shown are those of one device.
"""

from __future__ import annotations

import math
import re
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .functional import matrix_shape, options_block_shape
from .heads import head_modules
from .muon import SKIPPED_STEPS_KEY
from .options import MuonOptions
from .orthogonalize import orthogonalize, polar
from .precision import slow_bf16
from .scaling import lr_scale

_MUON_ROLE = "muon"  # hybrid.MUON_ROLE (hybrid imports this module), not an optimizer name


class MuonWarning(UserWarning):
    """A parameter set-up under which Muon does less than asked (muonkit.diagnostics)."""


_WARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def warn_once(owner: object, message: str, stacklevel: int = 3) -> bool:
    """Warn ``message`` (:class:`MuonWarning`) unless it was said already about ``owner`` (an
    optimizer, a model); True when it was said now."""
    said = _WARNED.setdefault(owner, set())
    if message in said:
        return False
    said.add(message)
    warnings.warn(message, MuonWarning, stacklevel=stacklevel)
    return True


def is_muon_group(group: dict) -> bool:
    """A group stepped by Muon: ``use_muon`` True (muonkit's groups carry it)."""
    return bool(group.get("use_muon", False))


def group_label(group: dict, index: int) -> str:
    """The group's ``role`` (as :func:`muonkit.hybrid.hybrid_param_groups` sets it), else
    ``group<index>``."""
    return str(group.get("role") or f"group{index}")


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's model inside a DDP wrapper or ``torch.compile``'s (their parameter names
    carry ``module.`` / ``_orig_mod.`` prefixes)."""
    while isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "_orig_mod"):
        model = model.module if hasattr(model, "module") else model._orig_mod
    return model


def param_names(optimizer: torch.optim.Optimizer, model: nn.Module | None) -> dict[int, str]:
    """id(param) -> name: from ``model`` (:func:`unwrapped`), else the groups'
    ``param_names`` (torch.optim keeps them when given named parameters), else
    ``g<group>.p<index>``."""
    names = {}
    for gi, group in enumerate(optimizer.param_groups):
        given = group.get("param_names") or []
        for k, p in enumerate(group["params"]):
            names[id(p)] = given[k] if k < len(given) else f"g{gi}.p{k}"
    if model is not None:
        names.update({id(p): n for n, p in unwrapped(model).named_parameters()})
    return names


def orthogonalized_as(shape: Sequence[int], options: MuonOptions, role: str = "") -> str:
    """How a parameter of ``shape`` is orthogonalized under ``options``, in words."""
    b, k = options.ns_batch_dims, options.ns_split
    out, inp = options_block_shape(shape, options)
    how = f"({out}, {inp})"
    if k > 1:
        kind = ("Q, K, V" if k == 3 else f"{k // 3} heads x Q, K, V") if "qkv" in role else "rows"
        how = f"{k} blocks ({kind}) of {how}"
    if b:
        how = f"{math.prod(shape[:b])} experts x {how}"
    if options.transposed:
        how += ", stored (in, out)"
    elif len(shape) > 2 + b:
        how += f", kernel {tuple(shape[b:])} flattened"
    if options.ns_coefficients == "svd":
        how += ", exact (SVD)"
    return how


@dataclass(frozen=True)
class ParamRow:
    """One parameter in :class:`Description`: ``optimizer`` "Muon" or "AdamW" (or the class
    name of another optimizer); ``orthogonalized`` as :func:`orthogonalized_as` ("" off
    Muon); ``batch``: the label of its batched Newton-Schulz call ("" alone); ``lr``: the
    group's lr times the LR rule's factor."""

    name: str
    group: int
    role: str
    optimizer: str
    shape: tuple[int, ...]
    numel: int
    orthogonalized: str
    batch: str
    lr: float
    weight_decay: float


@dataclass
class Description:
    """What :func:`describe` found: ``rows``, ``batches`` (label -> the names batched in one
    Newton-Schulz call), ``totals`` (per optimizer kind: tensors and numbers) and
    ``warnings``. ``str()`` is the full table; :meth:`table` shortens it for big models."""

    rows: list[ParamRow]
    batches: dict[str, list[str]] = field(default_factory=dict)
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_record(self) -> dict:
        """JSON-ready (a run's config record keeps it)."""
        return {"rows": [asdict(r) for r in self.rows], "batches": self.batches,
                "totals": self.totals, "warnings": self.warnings}

    def table(self, max_rows: int | None = None, warnings: bool = True) -> str:
        """The table (then the warnings, unless ``warnings`` is False); with more than
        ``max_rows`` rows, rows that differ only in a layer index (``blocks.3.mlp.weight``) are
        folded into one (``blocks.*.mlp.weight x12``)."""
        rows = [(r.name, r) for r in self.rows]
        if max_rows is not None and len(rows) > max_rows:
            rows = fold_layers(self.rows)
        header = ("parameter", "group", "shape", "orthogonalized as", "batch", "lr", "wd")
        lines = [header] + [
            (name, f"{r.group} {r.optimizer} {r.role if r.role != _MUON_ROLE else ''}".rstrip(),
             "x".join(map(str, r.shape)), r.orthogonalized or "-", r.batch or "-",
             f"{r.lr:.3g}", f"{r.weight_decay:g}")
            for name, r in rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        for label, names in self.batches.items():
            shown = ", ".join(names[:4]) + (f", ... ({len(names)})" if len(names) > 4 else "")
            text.append(f"batch {label}: {shown}")
        text.append("totals: " + "; ".join(
            f"{kind} {t['tensors']} tensors, {t['numbers']:,} numbers"
            for kind, t in self.totals.items()))
        text += [f"warning: {w}" for w in self.warnings] if warnings else []
        return "\n".join(text)

    def __str__(self) -> str:
        return self.table()


def fold_layers(rows: Iterable[ParamRow]) -> list[tuple[str, ParamRow]]:
    """(name, row) with the rows that differ only in dotted layer indices folded into the
    first, named with ``*`` for the index and ``xN`` for their count."""
    folded: dict[tuple, list[ParamRow]] = defaultdict(list)
    for r in rows:
        pattern = re.sub(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", "*", r.name)
        key = (pattern, r.group, r.shape, r.orthogonalized, r.lr, r.weight_decay)
        folded[key].append(r)
    return [(key[0] + (f" x{len(rs)}" if len(rs) > 1 else ""), rs[0])
            for key, rs in folded.items()]


def describe(
    optimizer: torch.optim.Optimizer, model: nn.Module | None = None, *, warn: bool = True
) -> Description:
    """The table of every parameter of ``optimizer`` (names from ``model`` when given) and the
    warnings about its set-up (see the module docstring); ``warn``: also issue them as
    :class:`MuonWarning`, once per optimizer and message. ``print(describe(opt, model))``."""
    model = None if model is None else unwrapped(model)
    names = param_names(optimizer, model)
    rows: list[ParamRow] = []
    batches: dict[str, list[str]] = {}
    found: list[str] = []
    hybrid = any("use_muon" in g for g in optimizer.param_groups)
    for gi, group in enumerate(optimizer.param_groups):
        role = str(group.get("role", ""))
        if not is_muon_group(group):
            kind = "AdamW" if hybrid else type(optimizer).__name__
            rows += [ParamRow(names[id(p)], gi, role, kind, tuple(p.shape), p.numel(), "", "",
                              float(group["lr"]), float(group.get("weight_decay", 0.0)))
                     for p in group["params"]]
            continue
        if not group["params"]:
            found.append(f"Muon param group {gi} ({group_label(group, gi)}) is empty")
        options = MuonOptions.from_group(group)
        if group["params"]:
            slow = slow_bf16(f"Muon param group {gi}'s ns_dtype", options.ns_dtype,
                             group["params"][0].device)
            found += [slow] if slow else []
        shapes = {id(p): options_block_shape(p.shape, options) for p in group["params"]
                  if p.ndim >= 2 + options.ns_batch_dims}
        same: dict[tuple, list[Tensor]] = defaultdict(list)
        for p in group["params"]:
            if id(p) in shapes:
                same[(shapes[id(p)], p.dtype, p.device)].append(p)
        label = {}
        for ps in same.values():  # (a parameter's own blocks or experts: its "orthogonalized")
            if len(ps) > 1:
                name = f"b{len(batches) + 1}"
                batches[name] = [names[id(p)] for p in ps]
                label.update({id(p): name for p in ps})
        for p in group["params"]:
            matrix = id(p) in shapes  # a muonkit optimizer refuses others; warned below
            scale = lr_scale(options.lr_scaling, shapes[id(p)]) if matrix else 1.0
            how = orthogonalized_as(p.shape, options, role) if matrix else "not a matrix"
            rows.append(ParamRow(names[id(p)], gi, role, "Muon", tuple(p.shape), p.numel(), how,
                                 label.get(id(p), ""), float(group["lr"]) * scale,
                                 float(options.weight_decay)))
    found += misplaced_params(optimizer, model, names)
    if hybrid and not any(is_muon_group(g) and g["params"] for g in optimizer.param_groups):
        found.append("no parameter is in a Muon group: every parameter trains with AdamW and "
                     "Muon does nothing")
    totals: dict[str, dict[str, int]] = {}
    for r in rows:
        t = totals.setdefault(r.optimizer, {"tensors": 0, "numbers": 0})
        t["tensors"] += 1
        t["numbers"] += r.numel
    if warn:
        for message in found:
            warn_once(optimizer, message)
    return Description(rows, batches, totals, found)


def misplaced_params(
    optimizer: torch.optim.Optimizer, model: nn.Module | None, names: dict[int, str]
) -> list[str]:
    """A warning per kind of parameter in a Muon group that Muon is not for: 1-D parameters;
    with ``model``: embeddings and output layers (:func:`muonkit.heads.head_modules`)."""
    embeddings, heads = set(), set()
    if model is not None:
        embeddings = {id(m.weight) for m in model.modules()
                      if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
        heads = {id(p) for m in head_modules(model) for p in m.parameters() if p.ndim >= 2}
    kinds = {"vector": [], "embedding": [], "head": []}
    for group in optimizer.param_groups:
        if not is_muon_group(group):
            continue
        for p in group["params"]:
            if p.ndim < 2:
                kinds["vector"].append(names[id(p)])
            elif id(p) in embeddings:
                kinds["embedding"].append(names[id(p)])
            elif id(p) in heads:
                kinds["head"].append(names[id(p)])
    what = {
        "vector": "1-D parameters (biases, norm gains) are in a Muon group, which "
                  "orthogonalizes matrices",
        "embedding": "embeddings are in a Muon group: their rows are looked up one token at a "
                     "time, train them with AdamW",
        "head": "the output layer is in a Muon group: train it with AdamW "
                "(muonkit.hybrid_param_groups does)",
    }
    return [f"{what[k]}: {', '.join(v)}" for k, v in kinds.items() if v]


def rms(tensor: Tensor) -> Tensor:
    """Root mean square of a tensor (a DTensor's over all its shards)."""
    value = torch.linalg.vector_norm(tensor.float()) / math.sqrt(max(tensor.numel(), 1))
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def whole(tensor: Tensor) -> Tensor:
    """The full tensor of a DTensor (a collective: every rank calls it), else ``tensor``."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def ns_error(update: Tensor, options: MuonOptions) -> float:
    """Relative Frobenius distance between the group's orthogonalization of the first block
    of ``update`` (as the optimizer cuts it: split, experts, transposed) and its exact polar
    factor: how far Newton-Schulz (its steps, coefficients, precision) is from orthogonal."""
    b, k = options.ns_batch_dims, options.ns_split
    matrix = update.mT if options.transposed else update
    out, inp = matrix_shape(matrix.shape, b)
    block = matrix.reshape(-1, out // k, inp)[0].float()
    exact = polar(block)
    ns = orthogonalize(block, options.ns_coefficients, options.ns_steps, options.ns_dtype,
                       options.ns_gram).float()
    norm = torch.linalg.matrix_norm(exact)
    return float(torch.linalg.matrix_norm(ns - exact) / norm) if norm > 0 else 0.0


class HealthMonitor:
    """Step hooks on ``optimizer`` that watch Muon run (module docstring).

    Counts, per Muon group, the steps in which it stepped since the last :meth:`record` (a
    parameter had a gradient and the step was not skipped for a non-finite gradient); after
    ``first_steps`` steps warns once, naming them, about Muon parameters that never had a
    gradient. :meth:`arm` makes the next step measure the update RMS of each group (a copy of
    the parameters before the step) and the Newton-Schulz error of one Muon matrix.
    ``names``: id -> name (:func:`param_names`); ``say``: how a warning is said (default: a
    :class:`MuonWarning`, once). :meth:`close` removes the hooks.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, names: dict[int, str] | None = None,
                 first_steps: int = 10, say: Callable[[str], object] | None = None):
        self.optimizer, self.first_steps = optimizer, first_steps
        self.say = say if say is not None else (lambda message: warn_once(optimizer, message, 4))
        self.names = names if names is not None else param_names(optimizer, None)
        self.steps = 0
        self.since = 0  # steps since the last record
        self.stepped: dict[int, int] = defaultdict(int)  # group index -> steps it stepped since
        self.had_grad: set[int] = set()  # ids of Muon params that had a gradient
        self.armed = False
        self.sample: int | None = None
        self.samples = 0
        self.measured: dict = {}
        self._before: dict[int, Tensor] = {}
        self._had: set[int] = set()
        self._skipped = 0
        self._hooks = [optimizer.register_step_pre_hook(self._pre),
                       optimizer.register_step_post_hook(self._post)]

    def arm(self, sample: int | None = None) -> None:
        """Measure the next step; ``sample`` picks the Muon matrix whose Newton-Schulz error is
        measured (the ``sample % n``-th of the n with a gradient; default: the next one), so a
        caller passing its step number gets the same choice after a resume."""
        self.armed, self.sample = True, sample

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def _muon_params(self) -> list[tuple[int, dict, Tensor]]:
        return [(gi, g, p) for gi, g in enumerate(self.optimizer.param_groups)
                if is_muon_group(g) for p in g["params"]]

    @torch.no_grad()
    def _pre(self, optimizer, args, kwargs) -> None:
        self._skipped = optimizer.state.get(SKIPPED_STEPS_KEY, 0)
        self._had = {gi for gi, _, p in self._muon_params() if p.grad is not None}
        self.had_grad |= {id(p) for _, _, p in self._muon_params() if p.grad is not None}
        if not self.armed:
            return
        self._before = {id(p): p.detach().clone() for g in optimizer.param_groups
                        for p in g["params"]}
        with_grad = [(g, p) for _, g, p in self._muon_params() if p.grad is not None]
        self.measured = {}
        if with_grad:
            pick = self.samples if self.sample is None else self.sample
            group, p = with_grad[pick % len(with_grad)]
            self.samples += 1
            error = ns_error(whole(p.grad), MuonOptions.from_group(group))
            self.measured["ns_error"] = {"param": self.names.get(id(p), ""), "value": error}

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        self.since += 1
        if optimizer.state.get(SKIPPED_STEPS_KEY, 0) == self._skipped:
            for gi in self._had:
                self.stepped[gi] += 1
        if self.steps == self.first_steps:
            self.check_gradients()
        if self.armed:
            self.armed = False
            sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
            for gi, group in enumerate(optimizer.param_groups):
                for p in group["params"]:
                    if id(p) in self._before and p.numel():
                        total = sums[group_label(group, gi)]
                        total[0] += float(rms(p.detach() - self._before[id(p)])) ** 2 * p.numel()
                        total[1] += p.numel()
            self._before = {}
            self.measured["update_rms"] = {k: math.sqrt(s / n) for k, (s, n) in sums.items()}

    def check_gradients(self) -> list[str]:
        """Warn (once) about the Muon parameters that had no gradient in any step so far;
        returns their names."""
        missing = [self.names.get(id(p), "") for _, _, p in self._muon_params()
                   if id(p) not in self.had_grad]
        if missing and self.steps:
            self.say(f"Muon parameters received no gradient in the first "
                      f"{self.steps} steps (Muon never updates them): {', '.join(missing)}")
        return missing

    def record(self) -> dict:
        """The health of the steps since the previous record: ``muon_stepped`` (per Muon
        group, the fraction of those steps in which it stepped) and, from the last armed step,
        ``update_rms`` (per group) and ``ns_error`` (the sampled matrix and its error)."""
        groups = {gi: group_label(g, gi) for gi, g in enumerate(self.optimizer.param_groups)
                  if is_muon_group(g)}
        stepped = {label: self.stepped[gi] / self.since if self.since else 0.0
                   for gi, label in groups.items()}
        self.since, self.stepped = 0, defaultdict(int)
        return {"muon_stepped": stepped, **self.measured}
