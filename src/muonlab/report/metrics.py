"""Read metrics JSONL files (the training loop's schema) and aggregate them over seeds.

Schema (one JSON object a line): a ``config`` line first (with the first session's
``provenance``), then ``train`` lines (step, loss, lr, tokens, elapsed_s, tokens_per_s), ``val``
lines (step, val_loss, elapsed_s), optional ``epoch`` lines, a ``session`` line where each
resume starts (its own ``provenance``), a ``session_end`` line where each session ends
(:func:`run_sessions`), and a final ``summary`` line. A finished run's files may be packed
(``metrics.jsonl.xz``, :mod:`muonlab.report.records`): every function here reads either.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .records import METRICS_NAME, find_records, read_text

METRICS_FILE = METRICS_NAME


@dataclass
class Run:
    """One training run's records, split by kind."""

    path: Path
    config: dict
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    summary: dict | None = None  # the last session's
    summaries: list[dict] = field(default_factory=list)  # every session's, in order
    provenance: list[dict] = field(default_factory=list)  # every session's that recorded one

    @property
    def optimizer(self) -> str:
        return self.config.get("optimizer", "")

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def name(self) -> str:
        return self.config.get("run", self.path.parent.name)

    def val_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, val losses) in step order."""
        return (
            np.array([r["step"] for r in self.val], dtype=float),
            np.array([r["val_loss"] for r in self.val], dtype=float),
        )


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSONL file (or of its packed ``.xz`` when the file is absent); a
    clear error names the file and line that is not JSON."""
    records = []
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i} is not valid JSON: {e}") from None
    return records


def load_run(path: str | Path) -> Run:
    """A :class:`Run` from one metrics file (its first record must be the config)."""
    path = Path(path)
    records = read_jsonl(path)
    if not records or records[0].get("kind") != "config":
        raise ValueError(f"{path} does not start with a 'config' record; is it a metrics file?")
    run = Run(path=path, config=records[0])
    run.provenance = [r["provenance"] for r in records if isinstance(r.get("provenance"), dict)]
    for r in records[1:]:
        kind = r.get("kind")
        if kind == "train":
            run.train.append(r)
        elif kind == "val":
            run.val.append(r)
        elif kind == "epoch":
            run.epochs.append(r)
        elif kind == "summary":
            run.summary = r
            run.summaries.append(r)
    return run


def run_sessions(run_dir: str | Path) -> list[dict]:
    """Every session of the run in ``run_dir`` (one call of the training loop: the first, then
    each resume), in order, from its ``metrics.jsonl``; each a dict:

    * ``start_step``, ``end_step``: the steps it started from and reached;
    * ``status``: "finished", "stopped" (at ``stop_at``), "interrupted", "failed", or None;
    * ``cpu_s``, ``wall_s``: CPU seconds (all threads of its process) and wall seconds from
      the loop's start to its end (data loading before the loop is not counted; a study's
      ``sessions.jsonl`` counts its whole process);
    * ``provenance``: :func:`muonlab.train.provenance.provenance` of the session (versions,
      device and name, ISA flags, threads, dtypes, command line, ``machine_class``): the
      config line's for the first session, its ``session`` line's for each resume;
    * ``machine_changed``: True when its machine class differs from the first session's
      (``first_machine_class`` then holds that one), None when the run's first session
      recorded none (a run from before provenance was recorded).

    A session killed outright (SIGKILL, power loss) has no end record: ``end_step``,
    ``status``, ``cpu_s`` and ``wall_s`` are None. A run's CPU-hours are
    ``sum(s["cpu_s"] or 0 for s in sessions) / 3600`` (rank 0's process under torchrun:
    ``provenance["world_size"]`` processes ran). A run recorded before provenance was: [].
    """
    sessions: list[dict] = []
    for record in read_jsonl(Path(run_dir) / METRICS_FILE):
        kind = record.get("kind")
        if kind == "config" and "provenance" in record:  # the first session starts the run
            sessions.append(_session(0, record["provenance"], {"machine_changed": False}))
        elif kind == "session":
            sessions.append(_session(record["start_step"], record["provenance"], record))
        elif kind == "session_end" and sessions:
            sessions[-1].update({k: record[k] for k in ("end_step", "status", "cpu_s", "wall_s")})
    return sessions


def _session(start_step: int, provenance: dict, change: dict) -> dict:
    return {"start_step": start_step, "end_step": None, "status": None, "cpu_s": None,
            "wall_s": None, "provenance": provenance,
            "machine_changed": change["machine_changed"],
            "first_machine_class": change.get("first_machine_class")}


def run_machine_classes(run_dir: str | Path) -> list[dict]:
    """The distinct machine classes (:func:`muonkit.hardware.machine_class`: device, its name,
    ISA flags, CPU kernel level, threads) the sessions of the run in ``run_dir`` ran on, in
    order of first use: more than one means the run changed machines and its bits are not
    those of a run on one machine. [] for a run recorded before provenance was."""
    classes: list[dict] = []
    for session in run_sessions(run_dir):
        cls = session["provenance"]["machine_class"]
        if cls not in classes:
            classes.append(cls)
    return classes


def find_runs(directory: str | Path) -> list[Run]:
    """Every run under ``directory`` (each ``metrics.jsonl``, recursively, plain or packed),
    sorted by path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    paths = find_records(directory, "**/" + METRICS_FILE)
    if not paths:
        raise ValueError(
            f"no {METRICS_FILE} under {directory}; point at the output directory of "
            "`muonkit compare` / `muonkit train`"
        )
    return [load_run(p) for p in paths]


def group_runs(runs: Iterable[Run], key: Callable[[Run], str] = lambda r: r.optimizer) -> dict:
    """{key: [runs]} keeping first-seen key order."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[key(run)].append(run)
    return dict(groups)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("mean_std of no values")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def steps_to_reach(steps: np.ndarray, losses: np.ndarray, target: float) -> float | None:
    """First step at which the curve reaches ``target``, interpolated between evaluations;
    None if it never does."""
    below = np.nonzero(losses <= target)[0]
    if below.size == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(steps[0])
    s0, s1, l0, l1 = steps[i - 1], steps[i], losses[i - 1], losses[i]
    return float(s0 + (l0 - target) / (l0 - l1) * (s1 - s0))


def common_val_steps(runs: Sequence[Run]) -> list[int]:
    """Steps at which every run has a validation loss."""
    sets = [{int(r["step"]) for r in run.val} for run in runs]
    return sorted(set.intersection(*sets)) if sets else []


def milestones(steps: Sequence[int], total: int, fractions=(0.1, 0.25, 0.5, 1.0)) -> list[int]:
    """For each fraction of ``total``, the nearest step in ``steps`` (deduplicated, ordered)."""
    if not steps:
        raise ValueError("no evaluation steps common to all runs")
    picked = []
    for f in fractions:
        target = f * total
        best = min(steps, key=lambda s: (abs(s - target), s))
        if best not in picked:
            picked.append(best)
    return picked


def val_loss_at(run: Run, step: int) -> float:
    for r in run.val:
        if int(r["step"]) == step:
            return float(r["val_loss"])
    raise ValueError(f"{run.path} has no val loss at step {step}")


def mean_curve(runs: Sequence[Run], key: str = "loss") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, std) of a per-step train key over runs, on the steps all runs share."""
    per_run = [{int(r["step"]): float(r[key]) for r in run.train} for run in runs]
    steps = sorted(set.intersection(*(set(d) for d in per_run)))
    values = np.array([[d[s] for s in steps] for d in per_run])
    std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
    return np.array(steps, dtype=float), values.mean(axis=0), std
