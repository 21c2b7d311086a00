"""Where and in which precision a study's runs ran, and what they cost, read from their records.

Every report states its hardware, precision and CPU time through :func:`provenance_section`,
so no text can say "one machine" or "fp32" where the records say otherwise. It reads every
record format the loop has written:

* the ``provenance`` object of a metrics record (the first line of a run, and a later line for
  each resumed session; keys ``device``, ``device_name``, ``isa``, ``threads``, ``dtype``,
  ``ns_dtype``, ``cpu_native_bf16``, any of them missing);
* older runs: each session's ``summary`` line (``device``: ``"cpu"`` or the GPU's name,
  ``cpu_flags``, ``cpu_native_bf16``, ``threads``) and the config line (``dtype``,
  ``ns_precision``, the optimizer options' ``ns_dtype``);
* ``sessions.jsonl`` next to the metrics (a study's run: one line per process that worked on
  it, its CPU and wall seconds and threads), else the metrics' ``session_end`` records (the
  loop's CPU and wall seconds of each session).

What a run does not record is said to be "not recorded", never guessed. Two statements are
derived, and marked so: the precision ``"auto"`` resolves to on the recorded device (from
records written after ``auto`` became the default, i.e. those with ``cpu_native_bf16``), and
training done outside the recorded sessions: a run's training time (``elapsed_s``, carried
across resumes) can only exceed its sessions' wall time when a session left no line in
``sessions.jsonl``; that part is counted at its training time x threads in the estimated CPU
total.

:func:`commands_text` lists a study's commands: those it logged and, after them, any other
command line its runs' provenance (``argv``) recorded, with the runs that recorded it.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from muonkit.hardware import NATIVE_BF16_ENV, NATIVE_BF16_FLAGS
from muonkit.registry import ADAMW

from .metrics import Run, read_jsonl
from .records import records_exist

SESSIONS_FILE = "sessions.jsonl"
SESSION_END = "session_end"  # a metrics record: the loop's CPU and wall seconds of a session
SECTION_TITLE = "## Hardware and precision (from the run records)"
NOT_RECORDED = "not recorded"
NO_NS = "not used"  # AdamW runs: no Newton-Schulz
SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


@dataclass(frozen=True)
class Machine:
    """A machine class: what decides a run's arithmetic and speed. ``name`` is the CPU model
    or GPU name ("" where not recorded); ``isa`` the CPU's arithmetic-relevant flags (None
    where not recorded; not part of a GPU's class)."""

    device: str
    name: str = ""
    isa: tuple[str, ...] | None = None

    def describe(self) -> str:
        if self.device == "cuda":
            return f"CUDA GPU {self.name or '(name not recorded)'}"
        isa = ("ISA flags not recorded" if self.isa is None
               else f"ISA flags {' '.join(self.isa) or 'none of the tracked ones'}")
        return f"{self.device.upper()} ({self.name or 'model not recorded'}; {isa})"


@dataclass(frozen=True)
class Segment:
    """What one session of a run recorded: its machine, training dtype, Newton-Schulz
    precision (``ns_derived``: resolved here from ``auto`` and the device) and threads."""

    machine: Machine | None
    dtype: str
    ns_dtype: str
    ns_derived: bool = False
    threads: int | None = None
    native_bf16: bool | None = None


@dataclass
class RunProvenance:
    """One run: its sessions' segments, its recorded CPU and wall seconds over ``sessions``
    sessions (``cpu_s`` None when nothing records them; ``cpu_source``: the file or record
    kind that does) and its training seconds (``elapsed_s`` of the last step)."""

    name: str
    group: str
    segments: list[Segment]
    cpu_s: float | None
    wall_s: float
    sessions: int
    cpu_source: str
    train_s: float

    @property
    def machines(self) -> list[Machine]:
        """The distinct recorded machine classes, in the order the sessions ran on them."""
        return list(dict.fromkeys(s.machine for s in self.segments if s.machine is not None))

    @property
    def threads(self) -> int:
        return max((s.threads for s in self.segments if s.threads), default=1)

    @property
    def unrecorded_s(self) -> float:
        """Training seconds outside the sessions ``sessions.jsonl`` records (0 without it)."""
        return max(0.0, self.train_s - self.wall_s) if self.cpu_s is not None else 0.0


def _short(dtype) -> str:
    text = str(dtype).removeprefix("torch.")
    return SHORT_DTYPES.get(text, text)


def machine_of(record: dict) -> Machine | None:
    """The machine class a ``provenance`` object or an older ``summary`` line records."""
    device = str(record.get("device") or "")
    if not device:
        return None
    kind = device.split(":")[0]
    if kind in ("cpu", "cuda", "mps", "xpu"):
        name = str(record.get("device_name") or record.get("cpu") or "")
    else:  # older summaries name the GPU in place of the device
        kind, name = "cuda", device
    if kind == "cuda":
        return Machine("cuda", name)
    isa = record.get("isa", record.get("cpu_flags"))
    return Machine(kind, name, None if isa is None else tuple(sorted(isa)))


def training_dtype(dtype, machine: Machine | None) -> str:
    """The training loop's compute dtype: ``auto`` is bf16 autocast on CUDA, fp32 elsewhere."""
    if dtype in (None, ""):
        return NOT_RECORDED
    if dtype == "auto":
        if machine is None:
            return NOT_RECORDED
        dtype = "bfloat16" if machine.device == "cuda" else "float32"
    short = _short(dtype)
    return short if short == "fp32" else f"{short} autocast"


def ns_label(text) -> str:
    """The precision part of a recorded Newton-Schulz precision, e.g. ``"fp32"`` from
    ``"auto: fp32 (cpu AVX2, no native bf16)"``."""
    return _short(str(text).removeprefix("auto: ").split(" (")[0])


def auto_ns(machine: Machine | None, native_bf16) -> str:
    """What ``ns_dtype="auto"`` ran as on ``machine`` (:func:`muonkit.precision.auto_dtype`):
    bf16 on CUDA, fp32 on a CPU without native bf16, the cheaper of mixed and fp32 per matrix
    shape with it; "not recorded" where the records do not say."""
    if machine is None:
        return NOT_RECORDED
    if machine.device == "cuda":
        return "bf16"
    if machine.device != "cpu":
        return "fp32"
    if native_bf16 is None:
        return NOT_RECORDED
    return "mixed or fp32 by matrix shape" if native_bf16 else "fp32"


def uses_newton_schulz(config: dict) -> bool:
    """False for AdamW runs (by the run's optimizer name or the study arm's kind)."""
    inner = config.get("config", {})
    return ADAMW not in (str(config.get("optimizer", "")).lower(), inner.get("kind"))


def ns_precision(config: dict, machine: Machine | None, source: dict) -> tuple[str, bool]:
    """(Newton-Schulz precision, derived?) of a session: recorded in its ``provenance``
    (``source``) or the config line, else resolved from ``auto`` and ``source``'s
    ``cpu_native_bf16`` (records written after ``auto`` became the default)."""
    if not uses_newton_schulz(config):
        return NO_NS, False
    recorded = source.get("ns_dtype")
    if recorded is None:
        recorded = config.get("config", {}).get("ns_precision")
    if isinstance(recorded, dict):  # per Muon group
        recorded = list(recorded.values())
    if isinstance(recorded, (list, tuple)):
        labels = sorted({ns_label(r) for r in recorded})
        if not labels:  # no Muon group
            return NO_NS, False
        if labels != ["auto"]:
            return " / ".join(labels), False
    elif recorded not in (None, "", "auto"):
        return ns_label(recorded), False
    options = config.get("config", {}).get("optimizer_options", {})
    if options.get("ns_dtype", "auto") not in ("auto", None):
        return ns_label(options["ns_dtype"]), False
    if "cpu_native_bf16" not in source:
        return NOT_RECORDED, False
    return auto_ns(machine, source["cpu_native_bf16"]), True


def segment(config: dict, source: dict) -> Segment:
    """The segment a ``provenance`` object or an older ``summary`` line (``source``) records."""
    machine = machine_of(source)
    dtype = source.get("dtype", config.get("config", {}).get("dtype"))
    ns, derived = ns_precision(config, machine, source)
    return Segment(machine, training_dtype(dtype, machine), ns, derived, source.get("threads"),
                   source.get("cpu_native_bf16"))


def run_provenance(run: Run, name: str, group: str = "") -> RunProvenance:
    """What ``run`` (and the ``sessions.jsonl`` beside its metrics) records about its sessions.

    One segment per ``provenance`` object; for older runs, one per ``summary`` line; a run
    with neither has one segment of an unrecorded machine.
    """
    sources = run.provenance or run.summaries
    segments = [segment(run.config, s) for s in sources] or [segment(run.config, {})]
    path = run.path.parent / SESSIONS_FILE
    source = SESSIONS_FILE if records_exist(path) else SESSION_END
    sessions = read_jsonl(path) if records_exist(path) else [
        r for r in read_jsonl(run.path) if r.get("kind") == SESSION_END] or None
    threads = [s["threads"] for s in sessions or [] if s.get("threads")]
    if threads and not any(s.threads for s in segments):
        segments = [dataclasses.replace(s, threads=max(threads)) for s in segments]
    return RunProvenance(
        name=name,
        group=group,
        segments=segments,
        cpu_s=None if sessions is None else sum(s.get("cpu_s", 0.0) for s in sessions),
        wall_s=sum(s.get("wall_s", 0.0) for s in sessions or []),
        sessions=len(sessions or []),
        cpu_source=source,
        train_s=float(run.train[-1]["elapsed_s"]) if run.train else 0.0,
    )


def study_provenance(runs: Iterable[Run], root: str | Path,
                     group: Callable[[Run], str] | None = None) -> list[RunProvenance]:
    """:func:`run_provenance` of every run, named by its folder under ``root`` and labelled
    by ``group`` (e.g. the horizon), in the order given."""
    root = Path(root)
    return [run_provenance(r, r.path.parent.relative_to(root).as_posix(),
                           group(r) if group else "") for r in runs]


def _runs(n: int) -> str:
    return f"{n} run{'s' * (n != 1)}"


def _tally(items: list[str], fmt: Callable[[str, int], str] = "{}: {}".format) -> str:
    """Each distinct item with its count (``fmt(item, count)``), in first-seen order."""
    return ", ".join(fmt(k, items.count(k)) for k in dict.fromkeys(items))


def _in_runs(item: str, n: int) -> str:
    return f"{item} in {_runs(n)}"


def ns_text(segs: list[Segment]) -> str:
    """Newton-Schulz precision per run of a class, which of them were resolved here, and the
    AdamW runs that have none."""
    used = [s for s in segs if s.ns_dtype != NO_NS]
    parts = []
    if used:
        text = _tally([s.ns_dtype for s in used], _in_runs)
        derived = sum(s.ns_derived for s in used)
        if derived:
            text += (f" ({'all' if derived == len(used) else derived} resolved from `auto` and "
                     "the recorded device: the run did not record it)")
        parts.append(text)
    if len(used) < len(segs):
        parts.append(f"not used in {_runs(len(segs) - len(used))} (AdamW)")
    return ", ".join(parts)


def class_line(machine: Machine | None, runs: list[RunProvenance], by_group: bool) -> str:
    """One machine class: its runs (per group if ``by_group``), precision and threads."""
    segs = [next(s for s in r.segments if s.machine == machine) for r in runs]
    where = machine.describe() if machine else "machine not recorded"
    line = f"- {where}: {_runs(len(runs))}"
    if by_group:
        line += f" ({_tally([r.group for r in runs])})"
    dtypes = [s.dtype for s in segs]
    line += "; training " + (dtypes[0] if len(set(dtypes)) == 1 else _tally(dtypes, _in_runs))
    if machine and machine.isa and any(f in machine.isa for f in NATIVE_BF16_FLAGS) and any(
            s.native_bf16 is False for s in segs):
        line += f"; its native bf16 recorded as off (`{NATIVE_BF16_ENV}=0`)"
    threads = sorted({s.threads for s in segs if s.threads})
    return (f"{line}; Newton-Schulz {ns_text(segs)}; torch threads "
            f"{', '.join(map(str, threads)) or NOT_RECORDED}.")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def _sessions_of(runs: list[RunProvenance]) -> str:
    """``"N recorded sessions of M runs"`` of runs that record their CPU time."""
    return f"{sum(r.sessions for r in runs)} recorded sessions of {_runs(len(runs))}"


def group_costs(recorded: list[RunProvenance]) -> str:
    """Each group's share of the CPU time, in first-seen order."""
    parts = []
    for group in dict.fromkeys(r.group for r in recorded):
        runs = [r for r in recorded if r.group == group]
        parts.append(f"{group} {_hours(sum(r.cpu_s for r in runs))} over {_sessions_of(runs)}")
    return "; by group: " + ", ".join(parts)


def cost_lines(runs: list[RunProvenance], by_group: bool = False) -> list[str]:
    """CPU time over every recorded session (with each group's share if ``by_group``), and
    the training no session recorded."""
    recorded = [r for r in runs if r.cpu_s is not None]
    lines = []
    if recorded:
        cpu = sum(r.cpu_s for r in recorded)
        gpu = [r for r in recorded if any(m.device == "cuda" for m in r.machines)]
        sources = " and ".join(f"`{s}`" for s in dict.fromkeys(r.cpu_source for r in recorded))
        text = (f"- CPU time: {_hours(cpu)} over all {_sessions_of(recorded)} ({sources}")
        if gpu:
            text += (f"; on a GPU this is the host process's CPU time; the {_runs(len(gpu))} that "
                     f"used a GPU took {_hours(sum(r.wall_s for r in gpu))} of wall time")
        text += ")"
        if by_group:
            text += group_costs(recorded)
        gaps = [r for r in recorded if r.unrecorded_s > 0]
        if gaps:
            extra = sum(r.unrecorded_s * r.threads for r in gaps)
            text += (f"; with the training outside the recorded sessions counted at its "
                     f"training time x threads: about {_hours(cpu + extra)}")
        lines.append(text + ".")
    if len(recorded) < len(runs):
        lines.append(f"- CPU time: not recorded for {_runs(len(runs) - len(recorded))} (no "
                     f"`{SESSIONS_FILE}` nor `{SESSION_END}` records).")
    return lines


def provenance_lines(runs: list[RunProvenance], cost_by_group: bool = False) -> list[str]:
    """The hardware, precision and cost statements of a study, every one from its records;
    the CPU time split by the runs' groups too if ``cost_by_group``."""
    if not runs:
        return ["- no runs recorded yet."]
    classes: dict[Machine | None, list[RunProvenance]] = {}
    for r in runs:
        for m in r.machines or [None]:
            classes.setdefault(m, []).append(r)
    by_group = len({r.group for r in runs}) > 1
    lines = [class_line(m, rs, by_group) for m, rs in classes.items()]
    switched = [r for r in runs if len(r.machines) > 1]
    lines.append("- Runs whose sessions ran on more than one machine class: " + (
        ", ".join(f"{r.name} ({' -> '.join(m.describe() for m in r.machines)})"
                  for r in switched) if switched else "none recorded") + ".")
    gaps = [r for r in runs if r.unrecorded_s > 0]
    if gaps:
        lines.append(
            f"- Runs that trained outside their recorded sessions (their training time exceeds "
            f"the wall time `{SESSIONS_FILE}` records, so a session left no record; the machine "
            f"of that part is not recorded): " + ", ".join(
                f"{r.name} (at least {r.unrecorded_s:,.0f} s of its {r.train_s:,.0f} s of "
                "training)" for r in gaps) + ".")
    return lines + cost_lines(runs, cost_by_group)


def command_line(argv: list[str]) -> str:
    """A recorded ``argv`` as the study logs its commands: ``muonkit`` and the arguments
    when the program is muonkit (its script or ``python -m muonkit``), else as recorded."""
    program = Path(argv[0])
    if program.name == "muonkit" or program.parent.name == "muonkit":
        return "muonkit " + shlex.join(argv[1:])
    return shlex.join(argv)


def recorded_commands(runs: Iterable[Run], root: str | Path) -> dict[str, list[str]]:
    """Each command line the sessions of ``runs`` recorded (their provenance's ``argv``: a
    study's run records the study's command), written by :func:`command_line`, with the runs
    that recorded it (named by their folder under ``root``), in first-seen order."""
    found: dict[str, list[str]] = {}
    for run in runs:
        for command in dict.fromkeys(command_line(p["argv"]) for p in run.provenance
                                     if p.get("argv")):
            found.setdefault(command, []).append(run.path.parent.relative_to(root).as_posix())
    return found


def commands_text(logged: list[str], runs: Iterable[Run], root: str | Path) -> str:
    """The commands of a study: those it logged (``commands.txt``), then each command its
    runs recorded that the log lacks, with the runs that recorded it."""
    text = "".join(f"    {c}\n" for c in logged)
    for command, names in recorded_commands(runs, root).items():
        if command not in logged:
            text += (f"\nRecorded by {_runs(len(names))} (the `argv` of their provenance: "
                     f"{', '.join(names)}), not in `commands.txt`:\n\n    {command}\n")
    return text


def provenance_section(runs: list[RunProvenance], cost_by_group: bool = False) -> str:
    """The report section: :data:`SECTION_TITLE` and :func:`provenance_lines`."""
    return SECTION_TITLE + "\n\n" + "\n".join(provenance_lines(runs, cost_by_group)) + "\n"
