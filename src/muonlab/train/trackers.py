"""Experiment trackers: where a run's metrics go besides ``metrics.jsonl`` (always written).

A :class:`Tracker` receives exactly what the metrics file holds: the run's config line
(``log_config``), every record that has a ``step`` (``log_metrics``: train, val and the extra
records of ``on_eval`` hooks) and the final summary (``log_summary``). Numbers are logged as
``<kind>/<key>`` scalars (nested dicts as ``<kind>/<key>/<sub>``, e.g. ``train/lr_groups/muon``);
strings, lists and None are left to the metrics file.

* ``tensorboard``: :class:`torch.utils.tensorboard.SummaryWriter` event files in ``OUT/tb``
  (the default when the tensorboard package is installed; extra ``muonkit[tb]``).
* ``wandb``: a Weights & Biases run (extra ``muonkit[wandb]``), files in ``OUT/wandb``. Without
  a login (no ``WANDB_API_KEY``, no API key in ``~/.netrc`` where ``wandb login`` puts it) and
  no ``WANDB_MODE`` it runs offline (upload later with ``wandb sync``). Its run id is kept in
  ``OUT/wandb-run-id.txt`` so a resumed run continues the same W&B run.
* ``none``: no tracker.

A tracker that cannot write its files (a full disk) raises ``OSError`` in the loop's thread
(the loop reports it in one line); TensorBoard's writer thread stays silent about it
(:func:`quiet_tensorboard_thread`).
"""

from __future__ import annotations

import importlib
import json
import netrc
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

TRACKERS = ("tensorboard", "wandb", "none")

EXTRAS = {"tensorboard": "tb", "wandb": "wandb"}  # the pip extra that installs each one

MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}

WANDB_ID_FILE = "wandb-run-id.txt"

TRACKER_FILES = ("tb", "wandb", WANDB_ID_FILE)  # what a run's trackers write in OUT


class Tracker(Protocol):
    """What the training loop tells an experiment tracker; ``name`` is its ``--tracker`` name,
    ``files`` where it writes."""

    name: str
    files: Path

    def log_config(self, config: dict) -> None: ...

    def log_metrics(self, record: dict) -> None: ...

    def log_summary(self, summary: dict) -> None: ...

    def close(self) -> None: ...


def parse_trackers(names: Iterable[str]) -> tuple[str, ...]:
    """Tracker names from ``--tracker`` values (each may be comma-separated), in order,
    without repeats; "none" alone is no tracker. ValueError for an unknown name."""
    out: list[str] = []
    for name in (n.strip() for value in names for n in value.split(",")):
        if name not in TRACKERS:
            raise ValueError(f"unknown tracker {name!r}; valid: {', '.join(TRACKERS)}")
        if name not in out:
            out.append(name)
    if "none" in out and len(out) > 1:
        raise ValueError("tracker 'none' cannot be combined with other trackers")
    return tuple(n for n in out if n != "none")


def installed(name: str) -> bool:
    try:
        importlib.import_module(MODULES[name])
    except ImportError:
        return False
    return True


def default_trackers() -> tuple[str, ...]:
    """TensorBoard when the tensorboard package is installed, else none."""
    return ("tensorboard",) if installed("tensorboard") else ()


def resolve_trackers(trackers: Sequence[str] | None) -> tuple[str, ...]:
    """The trackers a run uses (None: :func:`default_trackers`); ImportError naming the extra
    for one that is asked for and not installed."""
    names = default_trackers() if trackers is None else parse_trackers(trackers)
    for name in names:
        if not installed(name):
            raise ImportError(f"the {name} tracker needs the {MODULES[name]} package: "
                              f"pip install 'muonkit[{EXTRAS[name]}]'")
    return names


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a record as ``<kind>/<key>`` (nested dicts flattened with ``/``)."""
    prefix = prefix or f"{record.get('kind', 'run')}/"
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("kind", "step"):
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)):
            out[f"{prefix}{key}"] = value
    return out


def quiet_tensorboard_thread() -> None:
    """TensorBoard writes its event file in a thread: an ``OSError`` there (a full disk) is
    printed by that thread as a traceback, then raised again by the writer's next call in the
    loop's thread, which reports it in one line. Keep only the second (a ``threading.excepthook``
    that lets every other thread's exception through)."""
    from tensorboard.summary.writer import event_file_writer

    worker = getattr(event_file_writer, "_AsyncWriterThread", None)
    previous = threading.excepthook
    if worker is None or getattr(previous, "quiets", None) is worker:
        return

    def hook(args) -> None:
        if not (isinstance(args.thread, worker) and issubclass(args.exc_type, OSError)):
            previous(args)

    hook.quiets = worker
    threading.excepthook = hook


class TensorBoardTracker:
    """Scalars per step, the config as text, the summary's numbers at its last step; flushed
    after each record, so a write that fails (a full disk) fails at its record."""

    name = "tensorboard"

    def __init__(self, out_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        quiet_tensorboard_thread()
        self.files = out_dir / "tb"
        self.writer = SummaryWriter(str(self.files), purge_step=resume_step)

    def log_config(self, config: dict) -> None:
        text = json.dumps(config, indent=1, default=str)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "))
        self.writer.flush()

    def log_metrics(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def log_summary(self, summary: dict) -> None:
        for key, value in scalars(summary).items():
            self.writer.add_scalar(key, value, summary["steps"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_login_configured() -> bool:
    """An API key in ``WANDB_API_KEY``, or in the netrc file (``NETRC``, else ``~/.netrc``)
    for the host of ``WANDB_BASE_URL`` (default api.wandb.ai), where ``wandb login`` saves it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    """One W&B run per training run: history keyed by the loop's step, config, summary."""

    name = "wandb"

    def __init__(self, out_dir: Path, resume: bool, project: str, name: str,
                 group: str | None = None):
        import wandb

        self.files = out_dir / "wandb"

        id_file = out_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.exists() else None
        mode = None  # WANDB_MODE, if set, is the user's choice; wandb reads it
        if "WANDB_MODE" not in os.environ and not wandb_login_configured():
            mode = "offline"
            print(f"wandb: no login configured; logging offline to {out_dir / 'wandb'} "
                  "(upload later with `wandb sync`)", file=sys.stderr)
        self.run = wandb.init(
            project=project, name=name, group=group, id=run_id, resume="allow", mode=mode,
            dir=str(out_dir), settings=wandb.Settings(silent=mode == "offline"),
        )
        id_file.write_text(self.run.id + "\n")

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_metrics(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def log_summary(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if k != "kind"})

    def close(self) -> None:
        self.run.finish()


def build_trackers(names: Sequence[str], out_dir: Path, resume_step: int | None,
                   wandb_options: dict) -> list[Tracker]:
    """The trackers ``names`` of the run in ``out_dir`` (``resume_step``: the step a resumed run
    continues from, else None); ``wandb_options``: project, name, group of the W&B run."""
    trackers: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(out_dir, resume_step))
        elif name == "wandb":
            trackers.append(WandbTracker(out_dir, resume_step is not None, **wandb_options))
    return trackers
