"""Training runs of the experiments, each in its own process, a few at a time.

* :class:`RunSpec`: everything one run needs: the function that trains it (``entry``, by
  default :func:`muonlab.train.gpt.train_gpt`), its keyword arguments (``train_config`` among
  them), its thread count, whether to log weight/update RMS (GPT runs).
* :func:`run_isolated`: run a spec in a fresh Python process (:data:`CHILD`) at ``threads``
  torch threads, printing one progress line per evaluation (read from the run's
  ``metrics.jsonl``). A run whose loss became non-finite is a diverged run (loss ``inf``),
  not an error.
* :func:`run_status` / resume: a finished run (summary line with the planned steps) is skipped;
  a run with a checkpoint resumes from it; anything else starts afresh.
* :class:`SlotPool`: at most ``jobs`` runs at once, granted in priority order.
* :func:`default_threads`: threads per run that do not oversubscribe the cores, fixed by the
  machine (never by its load, which would change a run's bits from one launch to the next).
* Ctrl-C (SIGINT, to the whole process group as a terminal sends it, or to this process
  alone) and SIGTERM stop a study within seconds: no queued run starts, each running child is
  sent SIGINT and ends its run (its checkpoints stay; no ``error.txt``: an interrupted run is
  not a failed one; a child still starting ends as soon as it is ready), and
  :class:`StudyInterrupted` reaches the caller. Running the same command again continues:
  finished runs are skipped, interrupted ones resume from their last checkpoint or start
  again. Runs trained in this process (:func:`run_in_process`) run one after another in the
  main thread (``run_concurrently(..., in_threads=False)``), where Ctrl-C reaches them.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import heapq
import importlib
import itertools
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..report.metrics import load_run
from ..report.records import is_packed, records_exist
from ..train.files import RunWriteError, append_line, setting_name
from ..train.loop import CHECKPOINT, METRICS
from ..train.provenance import launched_as

ERROR_FILE = "error.txt"
SESSIONS = "sessions.jsonl"  # one line per process that worked on the run: CPU and wall time
DIVERGED = "FloatingPointError"


GPT_ENTRY = "muonlab.train.gpt:train_gpt"
INTERRUPTED_EXIT = 130  # a child whose run was interrupted (128 + SIGINT)
STOP_GRACE_S = 20.0  # how long an interrupted child may take to end its run before it is killed

_stop = threading.Event()  # set once a study is interrupted: nothing new starts


class StudyInterrupted(KeyboardInterrupt):
    """A study was interrupted (Ctrl-C, SIGTERM): no run was started after it, and its runs'
    files are as a rerun of the same command needs them to continue."""

    def __str__(self) -> str:
        return ("interrupted: no further run was started; finished runs are kept, interrupted "
                "ones resume from their last checkpoint or start again: run the same command "
                "again to continue the study")


class _Default:
    """An option a study's record leaves out: it was at its default."""

    def __repr__(self) -> str:
        return "the default"


_DEFAULT = _Default()


def _with_flag_options(study: dict) -> dict:
    """``study`` with its ``muon_options`` (the changed ``--ns-*`` options) as one setting
    each, "muon_options.ns_steps", so a refusal names each option's own flag."""
    flat = {k: v for k, v in study.items() if k != "muon_options"}
    flat.update({f"muon_options.{k}": v for k, v in (study.get("muon_options") or {}).items()})
    return flat


def check_same_study(saved: Path, study: dict, flag_names: Mapping[str, str] = {},  # noqa: B006
                     may_change: Iterable[str] = (), *, what: str = "a study with other "
                     "settings", remedy: str = "rerun with the study's settings to continue "
                     "it, or use another --out", absent: Mapping = {}) -> None:  # noqa: B006
    """Refuse to continue the study whose settings file ``saved`` (its ``study.json``, if
    there) holds other settings than ``study`` (``may_change`` aside), in one line: the
    directory holds ``what``, each differing setting as its flag (``flag_names``, else ``--``
    + its name) with both values, and ``remedy``. ``absent``: the value of each setting a
    file written before it existed lacks."""
    if not saved.exists():
        return
    old = _with_flag_options({**absent, **json.loads(saved.read_text())})
    new = _with_flag_options(study)
    keys = sorted((set(old) | set(new)) - set(may_change))
    diff = [f"{setting_name(k, flag_names)} {old.get(k, _DEFAULT)!r} there, "
            f"{new.get(k, _DEFAULT)!r} given" for k in keys if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"{saved.parent} holds {what} ({'; '.join(diff)}); {remedy}")


@dataclass
class RunSpec:
    """One run: ``kwargs`` for the training function ``entry`` ("module:function", called in
    the child process; the kwargs hold the loop's ``train_config``), a label for the progress
    lines, the torch thread count, and ``log_rms`` (weight/update RMS records: passes
    ``monitor=RMSMonitor``, which :func:`muonlab.train.gpt.train_gpt` takes)."""

    kwargs: dict
    label: str
    threads: int = 1
    log_rms: bool = False
    entry: str = GPT_ENTRY

    @property
    def out_dir(self) -> Path:
        return Path(self.kwargs["train_config"].out_dir)

    @property
    def steps(self) -> int:
        return self.kwargs["train_config"].steps


def default_threads(jobs: int = 1) -> int:
    """Torch threads per run for ``jobs`` concurrent runs (or ranks) on this machine: the cores
    this process may use (its CPU affinity) shared equally among them, at least 1.

    Fixed by the machine and ``jobs`` only, never by the machine's load: the thread count
    changes how reductions are split, hence the rounding, so the same command on the same
    machine class must get the same count to compute the same bits."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, jobs))


def run_status(out_dir: Path, steps: int) -> str:
    """"finished" (a summary line at ``steps``, its records plain or packed), "diverged" (its
    loss became non-finite), "resumable" (a checkpoint) or "new". A packed run
    (:mod:`muonlab.report.records`) is finished or refused: it is never resumed or replaced."""
    error = out_dir / ERROR_FILE
    if error.exists() and DIVERGED in error.read_text():
        return "diverged"
    metrics = out_dir / METRICS
    if records_exist(metrics):
        try:
            summary = load_run(metrics).summary
        except ValueError:
            summary = None
        if summary is not None and summary.get("steps") == steps:
            return "finished"
        if is_packed(metrics):
            done = "no summary" if summary is None else f"{summary.get('steps')} steps"
            raise ValueError(f"{out_dir} holds a packed run ({done}, not the {steps} asked "
                             f"for); unpack it (unxz {out_dir}/*.jsonl.xz) to continue it")
    return "resumable" if (out_dir / CHECKPOINT).exists() else "new"


def final_val_loss(out_dir: Path) -> float:
    run = load_run(out_dir / METRICS)
    return float(run.val[-1]["val_loss"]) if run.val else math.inf


def resolve_entry(entry: str) -> Callable:
    """The function named by ``"package.module:function"``."""
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def train_spec(spec: RunSpec) -> None:
    """Train ``spec`` in this process at its thread count; append this session's CPU and
    wall time to the run's ``sessions.jsonl``; a failure's traceback goes to ``error.txt``."""
    from .rms import RMSMonitor

    wall, cpu = time.perf_counter(), time.process_time()
    status = "failed"
    try:
        torch.set_num_threads(spec.threads)
        extra = {"monitor": RMSMonitor} if spec.log_rms else {}
        with launched_as({"label": spec.label, "entry": spec.entry, "threads": spec.threads}):
            resolve_entry(spec.entry)(**spec.kwargs, **extra)
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:
        detail = traceback.format_exc()
        try:
            (spec.out_dir / ERROR_FILE).write_text(detail)
        except OSError:  # a full disk: the error is shown here, not lost behind this one
            print(f"[{spec.out_dir}] {detail.strip().splitlines()[-1]}", file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(RunWriteError):  # (a full disk: the run's error comes first)
            append_line(spec.out_dir / SESSIONS, json.dumps({
                "status": status, "threads": spec.threads, "cpu_s": time.process_time() - cpu,
                "wall_s": time.perf_counter() - wall}))


# A run's process: a fresh interpreter in this process group (a terminal's Ctrl-C reaches it
# too) that reads this process's sys.path and sys.argv, then the spec, from its stdin. It
# starts with SIGINT blocked (:func:`_start_child`): its imports take seconds, and a Ctrl-C
# meanwhile waits until it is ready (:func:`child_main`) rather than printing a
# KeyboardInterrupt traceback from inside an import.
CHILD = """
import pickle, sys
sys.path[:], sys.argv[:] = pickle.load(sys.stdin.buffer)
from muonlab.experiments.runs import child_main
raise SystemExit(child_main(pickle.load(sys.stdin.buffer)))
"""


def child_main(spec: RunSpec) -> int:
    """Train ``spec`` in :data:`CHILD`; its exit code: 0, :data:`INTERRUPTED_EXIT` (also for
    a Ctrl-C that came while it started) or 1 (the error is in error.txt)."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the shell ignores it
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # one held back comes now
        train_spec(spec)
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT
    except BaseException:
        return 1
    return 0


def _start_child(spec: RunSpec) -> subprocess.Popen:
    """:data:`CHILD` for ``spec``, started with SIGINT blocked (a new process inherits the
    signal mask of the thread that starts it; only this thread's mask changes, briefly)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    with child.stdin:
        child.stdin.write(pickle.dumps((sys.path, sys.argv)) + pickle.dumps(spec))
    return child


def _stop_child(child: subprocess.Popen) -> None:
    """Ask ``child`` to end its run (SIGINT), wait up to :data:`STOP_GRACE_S`, then kill it."""
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _stopped(spec: RunSpec, log: Callable[[str], None]) -> StudyInterrupted:
    """Log how an interrupted run will continue; the error that stops the study."""
    _stop.set()
    how = ("resumes from its checkpoint" if run_status(spec.out_dir, spec.steps) == "resumable"
           else "starts again")
    log(f"[{spec.label}] interrupted: the same command {how}")
    return StudyInterrupted()


def _progress_lines(path: Path, seen: int, spec: RunSpec, log: Callable[[str], None]) -> int:
    """Log the val records of ``path`` after the first ``seen``; returns the new count."""
    if not records_exist(path):
        return seen
    try:
        vals = load_run(path).val
    except ValueError:  # a line being written
        return seen
    for rec in vals[seen:]:
        log(f"[{spec.label}] step {rec['step']}/{spec.steps}: val loss {rec['val_loss']:.4f} "
            f"({rec['elapsed_s']:.0f} s)")
    return max(seen, len(vals))


def _prepare(spec: RunSpec, log: Callable[[str], None]) -> tuple[RunSpec, str]:
    """The spec to run now (resume set from :func:`run_status`) and the status."""
    out = spec.out_dir
    status = run_status(out, spec.steps)
    if status in ("finished", "diverged"):
        return spec, status
    out.mkdir(parents=True, exist_ok=True)
    (out / ERROR_FILE).unlink(missing_ok=True)
    cfg = dataclasses.replace(spec.kwargs["train_config"], resume=status == "resumable",
                              overwrite=status == "new", progress=False)
    if status == "resumable":
        log(f"[{spec.label}] resuming from {out / CHECKPOINT}")
    return dataclasses.replace(spec, kwargs={**spec.kwargs, "train_config": cfg}), status


def _outcome(out: Path, status: str) -> float:
    return math.inf if status == "diverged" else final_val_loss(out)


_SAY_LOCK = threading.Lock()


def say(line: str) -> None:
    """Print ``line`` as one write (text and newline together, under a lock): a study's
    threads report runs at the same time, and ``print`` writes the text and the newline
    separately, so two of its lines could run together."""
    with _SAY_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run_isolated(spec: RunSpec, log: Callable[[str], None] = say, poll_s: float = 2.0) -> float:
    """Run ``spec`` in a process of its own (resuming or skipping as :func:`run_status` says);
    returns its final val loss (``inf`` if it diverged)."""
    out = spec.out_dir
    spec, status = _prepare(spec, log)
    if status in ("finished", "diverged"):
        return _outcome(out, status)
    if _stop.is_set():
        raise StudyInterrupted
    child = _start_child(spec)
    seen = 0 if status == "new" else len(load_run(out / METRICS).val)
    try:
        while child.poll() is None and not _stop.is_set():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(min(poll_s, 0.5))
            seen = _progress_lines(out / METRICS, seen, spec, log)
    except KeyboardInterrupt:  # this thread is the main one
        _stop.set()
    if _stop.is_set() or child.returncode == INTERRUPTED_EXIT:
        _stop_child(child)
        raise _stopped(spec, log)
    error = out / ERROR_FILE
    if child.returncode != 0:
        detail = error.read_text() if error.exists() else f"exit code {child.returncode}"
        if DIVERGED in detail:
            log(f"[{spec.label}] diverged (non-finite loss)")
            return math.inf
        raise _child_error(out, detail)
    return final_val_loss(out)


def _child_error(out: Path, detail: str) -> Exception:
    """The error a failed child run raises here: a user error (a ValueError or OSError in the
    child, e.g. unreadable data) as one line naming the run, anything else with its traceback;
    a failed write of the run's files (:class:`RunWriteError`, a full disk) as one line saying
    that the same study command continues."""
    last = detail.strip().splitlines()[-1] if detail.strip() else ""
    name, _, message = last.partition(": ")
    if name.rpartition(".")[2] == RunWriteError.__name__:  # what failed: up to the first ";"
        return RunWriteError(
            f"training run {out} stopped: {message.split('; ')[0]}; free space (or fix the "
            "disk) and run the same command again: finished runs are kept, and this one "
            "continues from its last checkpoint"
        )
    kind = getattr(builtins, name.rpartition(".")[2], None)
    if isinstance(kind, type) and issubclass(kind, (ValueError, OSError)):
        return ValueError(f"training run {out} failed: {message}")
    return RuntimeError(f"training run {out} failed:\n{detail}")


def run_in_process(spec: RunSpec, log: Callable[[str], None] = say) -> float:
    """:func:`run_isolated` without the child process (tests, debugging); a diverged run
    returns ``inf``."""
    out = spec.out_dir
    spec, status = _prepare(spec, log)
    if status in ("finished", "diverged"):
        return _outcome(out, status)
    try:
        train_spec(spec)
    except FloatingPointError:
        return math.inf
    except KeyboardInterrupt:  # in the main thread (``run_concurrently(..., in_threads=False)``)
        raise _stopped(spec, log) from None
    _progress_lines(out / METRICS, 0, spec, log)
    return final_val_loss(out)


class SlotPool:
    """At most ``jobs`` holders at once; waiting threads are admitted lowest priority first
    (then first come)."""

    def __init__(self, jobs: int):
        self.free = jobs
        self.cond = threading.Condition()
        self.queue: list[tuple] = []
        self.counter = itertools.count()

    def run(self, priority: tuple, fn: Callable, *args):
        ticket = (priority, next(self.counter))
        with self.cond:
            heapq.heappush(self.queue, ticket)
            while not self.cond.wait_for(
                lambda: _stop.is_set() or (self.free > 0 and self.queue[0] == ticket), 0.5
            ):
                pass
            if _stop.is_set():
                self.queue.remove(ticket)
                heapq.heapify(self.queue)
                self.cond.notify_all()
                raise StudyInterrupted
            heapq.heappop(self.queue)
            self.free -= 1
            self.cond.notify_all()
        try:
            return fn(*args)
        finally:
            with self.cond:
                self.free += 1
                self.cond.notify_all()


def run_concurrently(fns: list[Callable[[], float]], in_threads: bool = True) -> list[float]:
    """Call each function in its own thread (each typically waits for a pool slot and then
    for its child process); re-raises the first error (:class:`StudyInterrupted` first);
    results in order. ``in_threads=False``: one after another in this thread (runs trained
    in this process, which only the main thread can interrupt). From the main thread, Ctrl-C
    or SIGTERM stops them all (module doc)."""
    run = _run_threads if in_threads else _run_here
    if threading.current_thread() is threading.main_thread():
        _stop.clear()  # a new study (or the next stage of one that was not interrupted)
        with _sigterm_interrupts():
            return run(fns)
    return run(fns)


class _sigterm_interrupts:
    """SIGTERM raises KeyboardInterrupt in the main thread while the study runs."""

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, signal.default_int_handler)

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)


def _run_threads(fns: list[Callable[[], float]]) -> list[float]:
    results: list = [None] * len(fns)
    errors: list[BaseException] = []
    done = [threading.Event() for _ in fns]

    def call(i: int) -> None:
        try:
            results[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - re-raised below in the caller's thread
            errors.append(e)
        finally:
            done[i].set()

    def wait(threads: list[threading.Thread]) -> None:
        # Not Thread.join: a KeyboardInterrupt inside join can mark a running thread as ended
        # (CPython 3.11), and the process would then exit before it has stopped its child.
        while not all(done[i].is_set() for i, t in enumerate(threads) if t.ident is not None):
            time.sleep(0.1)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(fns))]
    try:
        for t in threads:
            t.start()
        wait(threads)
    except KeyboardInterrupt:
        _stop.set()  # every thread stops its child or leaves the queue, within seconds
        wait(threads)
        raise StudyInterrupted from None
    interrupted = [e for e in errors if isinstance(e, StudyInterrupted)]
    if interrupted or errors:
        raise (interrupted or errors)[0]
    return results


def _run_here(fns: list[Callable[[], float]]) -> list[float]:
    try:
        return [fn() for fn in fns]
    except StudyInterrupted:
        raise
    except KeyboardInterrupt:  # in a run trained here, or between two
        _stop.set()
        raise StudyInterrupted from None
