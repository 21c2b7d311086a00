"""`muonkit` started as a user starts it in a terminal, for the tests that interrupt it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def as_in_a_terminal() -> None:
    """SIGINT delivered and handled by default, as for a command typed in a terminal: a child
    inherits its parent's ignored signals and signal mask, and something earlier in the
    test process (a library's signal handling) may leave SIGINT ignored or blocked, which
    Python then keeps (a background job started by a shell ignores SIGINT the same way)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def start_muonkit(argv: list[str], own_group: bool = False) -> subprocess.Popen:
    """``python -m muonkit argv`` with this checkout's sources, stdout and stderr piped (text).
    ``own_group``: in a process group of its own, as a terminal runs a job, so that
    ``os.killpg(proc.pid, SIGINT)`` is a Ctrl-C (it reaches the process and its children)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "muonkit", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_in_a_terminal, start_new_session=own_group)


def run_children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children that train a run (Python ``-c`` processes, not
    multiprocessing's resource tracker)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):  # it ended
            continue
        if ppid == pid:
            kids.append(int(stat.parent.name))
    found = []
    for kid in kids:
        try:
            argv = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended
            continue
        if b"-c" in argv and not any(b"resource_tracker" in a for a in argv):
            found.append(kid)
    return found


def has_loaded(pid: int, library: bytes) -> bool:
    """Whether process ``pid`` has mapped a shared library whose path holds ``library``."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_bytes()
    except OSError:  # it ended
        return False
