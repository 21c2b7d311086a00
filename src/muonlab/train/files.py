"""A run's directory: what a run leaves there, and the rules that keep runs from being lost.

* ``OUT/metrics.jsonl`` (:class:`MetricsLogger`), ``OUT/ckpt.pt`` (:func:`save_checkpoint`, or
  ``OUT/ckpt_dcp/`` under torch.distributed), the trackers' ``OUT/tb/`` and ``OUT/wandb/``;
  a finished run's metrics may be packed (``OUT/metrics.jsonl.xz``,
  :mod:`muonlab.report.records`): it is read like the plain file and never trained on;
* :func:`prepare_out_dir`: a directory that holds a run is refused unless resumed or
  overwritten; :func:`check_resume`: a resume that would not continue the run is refused, a
  finished run is reported complete (:class:`RunComplete`) and left alone;
* :func:`load_checkpoint`: a truncated or corrupt checkpoint is a :class:`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import shutil
import signal
import sys
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from muonkit.distributed.env import is_distributed

from ..report.records import (
    METRICS_NAME,
    finished_summary,
    is_packed,
    packed_path,
    read_text,
    records_exist,
    replace_file,
)
from .config import TrainConfig, resume_may_differ
from .trackers import TRACKER_FILES, Tracker

CHECKPOINT = "ckpt.pt"

CHECKPOINT_DIR = "ckpt_dcp"  # multi-rank runs: save_train_state

METRICS = METRICS_NAME

# files that say a directory holds a run
RUN_MARKERS = (METRICS, packed_path(METRICS).name, CHECKPOINT, CHECKPOINT_DIR)

# what overwrite=True deletes: the run's files and its trackers' (tb/, wandb/, the W&B run id)
RUN_FILES = (*RUN_MARKERS, CHECKPOINT + ".tmp", CHECKPOINT_DIR + ".tmp", CHECKPOINT_DIR + ".old",
             METRICS + ".tmp", *TRACKER_FILES)

PARKED = ".replaced"  # where --overwrite keeps the old run until the new one has taken a step

CHECKPOINT_KEYS = ("model", "optimizers", "batches", "rng", "step", "elapsed_s", "tokens")



class RunComplete(Exception):
    """``resume=True`` on a run that has already trained all its steps; nothing was changed."""



class RunExistsError(FileExistsError):
    """``out_dir`` holds a run, and neither ``resume`` nor ``overwrite`` was asked for."""



class RunWriteError(OSError):
    """A run's file could not be written (a full disk, a quota, an I/O error); what was there
    before is intact, and the message says what was kept (the loop adds how to continue)."""



class ResumeMismatch(ValueError):
    """``resume`` with settings that would change the run's result; ``lines`` names each
    differing setting with the checkpoint's value and the given one."""

    def __init__(self, out_dir: Path, lines: list[str]):
        self.lines = lines
        self.head = (f"cannot resume the run in {out_dir}: {len(lines)} setting(s) differ from "
                     "the run's (resume with the run's own, or --overwrite to start anew)")
        super().__init__(self.head + ": " + "; ".join(lines))



class CheckpointError(ValueError):
    """A checkpoint that cannot be read: truncated, corrupt, or not written by this loop."""



def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Create ``out_dir``; refuse a file or an unwritable directory, and a directory that holds
    a run (``RUN_MARKERS``) unless ``resume`` (continue it) or ``overwrite`` (replace its
    ``RUN_FILES``, nothing else) is set. The run being replaced is parked in ``OUT/.replaced``
    (:func:`park_run_files`) until the new run has taken a step: the caller then calls
    :func:`drop_parked`, or :func:`unpark` when the new run failed before that, so a run that
    cannot start never costs the old one. Returns whether a run was parked (on rank 0 under
    torch.distributed, which alone moves files)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output directory {out_dir} is a file, not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create output directory {out_dir}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {out_dir} is not writable")
    found = [name for name in RUN_MARKERS if (out_dir / name).exists()]
    if found and not (resume or overwrite):
        resumable = CHECKPOINT in found or CHECKPOINT_DIR in found
        raise RunExistsError(
            f"{out_dir} already holds a run ({', '.join(found)}); "
            + ("pass --resume to continue it or --overwrite to replace it" if resumable else
               "it has no checkpoint to resume from: pass --overwrite to replace it, or "
               "another --out")
        )
    distributed = is_distributed()
    if distributed:
        torch.distributed.barrier()  # every rank has looked before any rank writes or deletes
    main_rank = not distributed or torch.distributed.get_rank() == 0
    parked = bool(found) and overwrite and main_rank
    if parked:
        park_run_files(out_dir)
    elif resume and main_rank:
        recover_checkpoint(out_dir)
    if distributed:
        torch.distributed.barrier()
    return parked


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def recover_checkpoint(out_dir: Path) -> None:
    """Before a resume, undo what a session stopped mid-save (killed) left: a half-written
    ``ckpt.pt.tmp`` or ``ckpt_dcp.tmp`` is removed (with a note on stderr); of
    :func:`save_train_state`'s two renames, ``ckpt_dcp.old`` is the
    checkpoint when ``ckpt_dcp`` is missing, and is removed when it is not."""
    for name in (CHECKPOINT, CHECKPOINT_DIR):
        tmp = out_dir / (name + ".tmp")
        if tmp.exists():
            _remove(tmp)
            print(f"muonkit: removed {tmp}, a checkpoint left half-written by a session that "
                  "stopped while saving it", file=sys.stderr)
    old, current = out_dir / (CHECKPOINT_DIR + ".old"), out_dir / CHECKPOINT_DIR
    if old.exists() and not current.exists():
        os.replace(old, current)
    _remove(old)


def park_run_files(out_dir: Path) -> None:
    """Move the ``RUN_FILES`` of ``out_dir`` into ``out_dir/.replaced`` (replacing what an
    earlier, killed overwrite left there: a run the user had already asked to replace)."""
    parked = out_dir / PARKED
    _remove(parked)
    parked.mkdir()
    for name in RUN_FILES:
        if (out_dir / name).exists():
            os.replace(out_dir / name, parked / name)


def drop_parked(out_dir: Path) -> None:
    """The new run has started: delete the run it replaces."""
    _remove(out_dir / PARKED)


def unpark(out_dir: Path) -> None:
    """The new run failed before its first step: delete what it wrote, put the old run back."""
    parked = out_dir / PARKED
    for name in RUN_FILES:
        _remove(out_dir / name)
        if (parked / name).exists():
            os.replace(parked / name, out_dir / name)
    _remove(parked)



def read_records(path: Path) -> list[dict]:
    """The JSON records of a metrics file (or of its packed ``.xz`` when the file is absent);
    a last line cut short by a kill is left out."""
    lines = read_text(path).splitlines()
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path} line {i + 1} is not JSON: {line[:60]!r}") from None
    return records



def finished_run(metrics: Path) -> dict | None:
    """The summary record of the run in ``metrics`` (plain or packed) if it ended after all
    its planned steps (the config line's ``steps``), else None."""
    if not records_exist(metrics):
        return None
    return finished_summary(read_records(metrics))



def check_resume(cfg: TrainConfig, out_dir: Path, ckpt_step: int | None) -> None:
    """Refuse a resume that would not continue the run: :class:`RunComplete` when all
    ``cfg.steps`` are done, ValueError when ``cfg.steps`` is below what is done.
    ``ckpt_step`` None: the checkpoint has not been read yet (only the metrics are checked)."""
    summary = finished_run(out_dir / METRICS)
    done = summary["steps"] if summary is not None else ckpt_step
    if is_packed(out_dir / METRICS) and (done is None or done < cfg.steps):
        raise ValueError(f"the run in {out_dir} is packed ({METRICS}.xz): unpack it "
                         f"(unxz {out_dir}/*.jsonl.xz) to train on")
    if done is None or done < cfg.steps:
        return
    if done > cfg.steps:
        raise ValueError(
            f"the run in {out_dir} has trained {done} steps; --steps {cfg.steps} is below that: "
            f"pass --steps {done} (the run is complete then) or more to train on"
        )
    loss = None if summary is None else summary.get("final_val_loss")
    raise RunComplete(
        f"{out_dir}: the run is complete ({done} of {cfg.steps} steps"
        + (f", final val loss {loss:.4f}" if loss is not None else "")
        + "); nothing to do. Pass a larger --steps to train on, or --overwrite to start again."
    )



# TrainConfig's fields that a resume may change: they cannot change what the run computes
# (where files go, what is shown, when a session stops, --steps to train on) or are the
# machine's (the device; the provenance records it); see config.may_differ_on_resume
RESUME_MAY_DIFFER = frozenset(resume_may_differ(TrainConfig))


def differing(recorded: Mapping, given: Mapping, prefix: str = "") -> Iterator[tuple]:
    """(path, recorded value, given value) of each setting in ``given`` that differs from
    ``recorded``'s, nested settings by dotted path ("optimizer_options.muon_lr"); a setting
    ``recorded`` lacks is left out: its run was recorded before the setting existed."""
    for key, value in given.items():
        if key not in recorded:
            continue
        path, was = prefix + key, recorded[key]
        if isinstance(was, Mapping) and isinstance(value, Mapping):
            yield from differing(was, value, path + ".")
        elif was != value:
            yield path, was, value


def setting_name(path: str, flag_names: Mapping[str, str]) -> str:
    """How a user names the setting at ``path`` (e.g. "optimizer_options.muon_lr" ->
    "--muon-lr"): ``flag_names[path]``, else its last part as a flag."""
    if path in flag_names:
        return flag_names[path]
    return "--" + path.rsplit(".", 1)[-1].replace("_", "-")


def resume_differences(recorded: dict, given: dict,
                       flag_names: Mapping[str, str] = {},  # noqa: B006
                       derived: Collection[str] = ()) -> list[str]:
    """One line per setting (flag) whose value in ``given`` differs from the run's config
    record ``recorded`` (``{"optimizer": ..., "config": {...}}``; ``given``: the optimizer's
    name and the config's settings), skipping :data:`RESUME_MAY_DIFFER` and settings the
    record lacks (older runs). Facts that follow from the settings (``derived``: paths or
    their prefixes, e.g. "model" for the model's shape, "data.token_hash") are named only
    when no setting differs: then they are what changed (the data file's contents, the
    model's code), and otherwise they would repeat a flag that is already named."""
    old = {"optimizer": recorded.get("optimizer"), **recorded.get("config", {})}
    new = json.loads(json.dumps(given, default=str))
    found = [d for d in differing(old, new) if d[0].split(".")[0] not in RESUME_MAY_DIFFER]
    settings = [d for d in found if not any(d[0] == p or d[0].startswith(p + ".")
                                            for p in derived)]
    lines: dict[str, str] = {}
    for path, was, value in settings or found:
        name = setting_name(path, flag_names)
        lines.setdefault(name, f"{name}: checkpoint {was!r}, given {value!r}")
    return list(lines.values())


def check_same_run(out_dir: Path, given: dict, flag_names: Mapping[str, str] = {},  # noqa: B006
                   derived: Collection[str] = ()) -> None:
    """Refuse (:class:`ResumeMismatch`) to resume the run in ``out_dir`` with settings that
    differ from its config record (:func:`resume_differences`); nothing is read but the
    record."""
    metrics = out_dir / METRICS
    if not records_exist(metrics):
        return
    recorded = next((r for r in read_records(metrics) if r.get("kind") == "config"), None)
    if recorded is None:
        return
    lines = resume_differences(recorded, given, flag_names, derived)
    if lines:
        raise ResumeMismatch(out_dir, lines)



def load_checkpoint(path: Path) -> dict:
    """A single-process checkpoint, on CPU (RNG and generator states must stay CPU tensors;
    ``load_state_dict`` moves model and optimizer tensors to their parameters' device)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({reason}): it is truncated or corrupt; restore "
            "it, or start the run again with --overwrite"
        ) from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: not a muonkit "
                              "training checkpoint")
    return ckpt



@contextlib.contextmanager
def interrupts_deferred():
    """Hold SIGINT/SIGTERM while a checkpoint is written (main thread): a Ctrl-C then
    interrupts the run after the write, as a KeyboardInterrupt, instead of inside
    ``torch.save``, which turns it into a RuntimeError (a failed run, not an interrupted one).

    Each signal's handler is swapped for one that only notes it; on leaving, the handlers are
    restored and each noted signal is raised again. Yields the list of the signals noted so
    far (empty off the main thread, where nothing is held). (Blocking the signals with
    ``pthread_sigmask`` would hold them on this thread only: another thread, torch's or a
    progress bar's, would take the signal and Python would still raise in this one.)
    """
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = {s: signal.signal(s, lambda signum, frame: noted.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield noted
    finally:
        for s, handler in previous.items():  # (None: a handler not set from Python)
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in dict.fromkeys(noted):
            signal.raise_signal(s)


def save_checkpoint(path, model, optimizers, batches, step, elapsed, tokens, device) -> None:
    """Everything a resumed run needs to continue exactly; written atomically: to
    ``ckpt.pt.tmp``, flushed to disk, then renamed over ``ckpt.pt``.

    Under torch.distributed (several ranks) model and optimizers go through DCP, each rank's
    sampler and RNG states to their own file
    (:func:`save_train_state`).
    A failed write (e.g. a full disk) removes the temporary file, leaves the previous
    checkpoint as it was and raises :class:`RunWriteError` (the caller says what to do next).
    """
    try:
        with interrupts_deferred():
            _save_checkpoint(path, model, optimizers, batches, step, elapsed, tokens, device)
    except Exception as e:
        from muonkit.distributed.checkpoint import write_error

        error = write_error(e)
        if error is None:
            raise
        raise RunWriteError(
            f"cannot write the step-{step} checkpoint {path}: {error.strerror or error}"
        ) from None


def _save_checkpoint(path, model, optimizers, batches, step, elapsed, tokens, device) -> None:
    state = {
        "batches": batches.state_dict(),
        "rng": rng_state(device),
        "step": step,
        "elapsed_s": elapsed,
        "tokens": tokens,
    }
    if is_distributed():
        save_train_state(path, model, optimizers, state)
        return
    state["model"] = model.state_dict()
    state["optimizers"] = [opt.state_dict() for opt in optimizers]
    replace_file(Path(path), functools.partial(torch.save, state))


def save_train_state(path, model, optimizers, rank_state: dict) -> None:
    """A multi-rank run's checkpoint, directory ``path``; call on every rank.

    Model and optimizers by DCP (:func:`muonkit.distributed.save_checkpoint`: any world size
    loads them); ``rank_state`` (this rank's batch-sampler and RNG states, step counters) goes
    to ``path/rank{r}.pt``. Written to ``path.tmp`` and renamed by rank 0 (the previous
    checkpoint to ``path.old`` first, removed last), so a crash mid-save leaves a whole
    checkpoint (:func:`recover_checkpoint` puts ``.old`` back); a failed write on any rank (a
    full disk) removes ``path.tmp`` and raises ``OSError`` on every rank.
    """
    import torch.distributed as dist

    from muonkit.distributed.checkpoint import all_ranks_wrote, save_checkpoint, write_error

    path, rank = Path(path), dist.get_rank()
    tmp = path.with_name(path.name + ".tmp")
    if rank == 0 and tmp.exists():  # left by a crash mid-save
        shutil.rmtree(tmp)
    dist.barrier()
    error = None
    try:
        save_checkpoint(tmp, model, optimizers)
        torch.save(rank_state, tmp / f"rank{rank}.pt")
    except Exception as e:
        if write_error(e) is None:
            raise
        error = e
    try:
        all_ranks_wrote(error)
    except OSError:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()  # no rank goes on before the partial checkpoint is gone
        raise
    if rank == 0:  # the old checkpoint goes only once the new one has its name
        old = path.with_name(path.name + ".old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_train_state(path, model, optimizers) -> dict:
    """Load :func:`save_train_state`'s directory into ``model``/``optimizers``; returns this
    rank's ``rank_state``. The sampler/RNG states are per rank, so the world size must be the
    one that saved (:func:`muonkit.distributed.load_checkpoint` reads the model/optimizer part
    on any world size)."""
    import torch.distributed as dist

    from muonkit.distributed.checkpoint import load_checkpoint as load_dcp

    path = Path(path)
    saved = len(list(path.glob("rank*.pt")))
    if saved != dist.get_world_size():
        raise ValueError(
            f"checkpoint {path} was saved by {saved} ranks, this job has "
            f"{dist.get_world_size()}: resume a training run with the same --nproc_per_node "
            "(muonkit.distributed.load_checkpoint loads its model/optimizer on any world size)"
        )
    load_dcp(path, model, optimizers)
    return torch.load(path / f"rank{dist.get_rank()}.pt", map_location="cpu", weights_only=False)


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as :func:`replace_file` does (a resume's metrics, a study's
    state files: what a rerun reads); :class:`RunWriteError` when it cannot."""
    try:
        replace_file(path, lambda f: f.write(text.encode()))
    except OSError as e:
        raise RunWriteError(f"cannot write {path}: {e.strerror or e}; it is as it was") from None



def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state



def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])



def append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` whole or not at all: a failed write (a full disk) cuts the
    file back to its size before, so a reader never meets half a record, and raises
    :class:`RunWriteError` (the caller says what to do next)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            write_all(fd, (line + "\n").encode())
        except OSError as e:
            os.ftruncate(fd, size)
            raise RunWriteError(f"cannot write to {path}: {e.strerror or e}; its records "
                                "up to the last whole line are kept") from None
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (a write may take fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]



class MetricsLogger:
    """The JSONL metrics of one run (None path: no file), each record also sent to the run's
    experiment trackers (:mod:`muonlab.train.trackers`): config, per-step records, summary."""

    def __init__(self, out_dir: Path | None, resume_step: int | None,
                 trackers: Sequence[Tracker] = ()):
        self.path = None if out_dir is None else out_dir / METRICS
        self.trackers = list(trackers)
        if self.path is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate(resume_step)
        elif self.path.exists():
            self.path.unlink()

    def _truncate(self, step: int) -> None:
        """Keep the config line and the records up to ``step`` (the checkpoint's)."""
        kept = [
            rec
            for rec in read_records(self.path)
            if rec["kind"] == "config" or (rec["kind"] != "summary" and rec.get("step", 0) <= step)
        ]
        write_whole(self.path, "".join(json.dumps(rec) + "\n" for rec in kept))

    @property
    def config(self) -> dict | None:
        """The config record already in the file (a resumed run's), else None."""
        if self.path is None or not self.path.exists() or self.path.stat().st_size == 0:
            return None
        return next((r for r in read_records(self.path) if r["kind"] == "config"), None)

    def write(self, record: dict) -> None:
        if self.path is not None:
            append_line(self.path, json.dumps(record))
        self.track(record)

    def track(self, record: dict) -> None:
        """Send ``record`` to the trackers (a config line, a summary, or a record with a step)."""
        for tracker in self.trackers:
            with tracker_writes(tracker):
                if record["kind"] == "config":
                    tracker.log_config({k: v for k, v in record.items() if k != "kind"})
                elif record["kind"] == "summary":
                    tracker.log_summary(record)
                elif "step" in record:
                    tracker.log_metrics(record)

    def close(self, quiet: bool = False) -> None:
        """End the trackers' runs; ``quiet``: on the way out of a failed run, a tracker that
        cannot close (its disk is full too) does not hide the error that ended the run."""
        for tracker in self.trackers:
            try:
                with tracker_writes(tracker):
                    tracker.close()
            except Exception:
                if not quiet:
                    raise


@contextlib.contextmanager
def tracker_writes(tracker: Tracker):
    """A tracker's failed write (a full disk) as :class:`RunWriteError` naming the tracker."""
    try:
        yield
    except OSError as e:
        raise RunWriteError(f"the {tracker.name} tracker cannot write to {tracker.files}: "
                            f"{e.strerror or e}") from None
