"""How run records are stored: plain JSONL while a run writes them, xz-packed once it is done.

A run appends its records to ``metrics.jsonl`` (a study's runs also to ``sessions.jsonl``)
one whole line at a time (:func:`muonlab.train.files.append_line`). A finished run can be
packed for committing (:func:`pack_study`, ``muonkit results pack DIR``): each ``X.jsonl`` of
its directory becomes ``X.jsonl.xz`` (``lzma`` of the standard library; ``unxz X.jsonl.xz``
gives the plain file back). Whoever reads records names the plain file and reads it through
:func:`read_text` (which reads ``X.jsonl.xz`` when ``X.jsonl`` is absent), tests for it with
:func:`records_exist`, and finds runs with :func:`find_records`, so reports, provenance and a
study's run status see a packed run as the run it was; the training loop never writes to one
(it is a finished run; unpack it to train on).

A study's committed copy can leave out what a study file already holds. A fine-tuning study
writes its test problems once, ``OUT/task/test.jsonl`` (:data:`STUDY_TASK`: ``id, question,
answer, gold``, scored order), and every run's ``predictions*.jsonl`` repeats each problem's
``question``. Packed ``thin``, a predictions file whose study (the nearest folder above it
holding :data:`STUDY_TASK`) lists each of its rows' ids with the same question and gold is
packed without the ``question`` field; any other (no task file, a question or gold that
differs, an id not listed) is packed whole. Predictions are read through
:func:`read_predictions`, which puts each question back from the study's task file (and
refuses, naming the file, when that file no longer lists the problem as it was scored).
A study directory's own record files (:data:`STUDY_RECORDS`: the fine-tuning report's
``runs.jsonl`` and the task file, each written whole) are packed with its runs, and the
study rewrites them in the form they are stored in (:func:`write_records`).

xz, not gzip, and thinned: the committed studies' records (51 MB) pack to 13.8 MB with
gzip -9 and to 10.5 MB with xz -9e, too much for docs/results' 10 MB then; thinned
(:data:`THINNED_FIELDS`), to 3.8 MB with xz.
"""

from __future__ import annotations

import json
import lzma
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import BinaryIO

PACKED_SUFFIX = ".xz"
RECORDS_GLOB = "*.jsonl"  # the record files of a run directory that packing compresses
METRICS_NAME = "metrics.jsonl"  # the file whose summary line says a run is finished
PREDICTIONS_GLOB = "predictions*.jsonl"  # a fine-tuning run's scored test problems
STUDY_TASK = "task/test.jsonl"  # a study's test problems, which its packed predictions refer to
# a study directory's own record files, each written whole: its report's runs, its test problems
STUDY_RECORDS = ("runs.jsonl", STUDY_TASK)

# What ``thin`` packing leaves out of every ``train`` record but a run's last: fields no report
# reads. The step's timing (the curves' time axis is the ``val`` records' ``elapsed_s``, the
# tables read the last step's ``elapsed_s`` and the summary's tokens/s and ms/step), and what
# the run's config gives (the LR schedule's ``lr`` and ``lr_groups``, the tokens seen). Every
# train record keeps ``step``, ``loss`` and ``grad_norm``; the last keeps everything.
THINNED_FIELDS = ("elapsed_s", "tokens_per_s", "mfu", "lr", "lr_groups", "tokens")

# xz at its strongest: the same bytes in, the same bytes out (the format has no timestamp)
_XZ = {"format": lzma.FORMAT_XZ, "check": lzma.CHECK_CRC64, "preset": 9 | lzma.PRESET_EXTREME}


def packed_path(path: str | Path) -> Path:
    """Where the packed form of the record file ``path`` lives: ``X.jsonl`` -> ``X.jsonl.xz``."""
    path = Path(path)
    return path.with_name(path.name + PACKED_SUFFIX)


def stored_path(path: str | Path) -> Path | None:
    """The file that holds the records of ``path``: ``path`` itself, else its packed form,
    else None."""
    path = Path(path)
    for candidate in (path, packed_path(path)):
        if candidate.is_file():
            return candidate
    return None


def records_exist(path: str | Path) -> bool:
    """Whether the records of ``path`` are there, plain or packed."""
    return stored_path(path) is not None


def is_packed(path: str | Path) -> bool:
    """Whether the records of ``path`` are there only in packed form."""
    return stored_path(path) == packed_path(path)


def read_text(path: str | Path) -> str:
    """The text of the record file ``path``, or of its packed form when ``path`` is absent."""
    stored = stored_path(path)
    if stored is None:
        raise FileNotFoundError(f"records file {path} does not exist")
    if stored.suffix == PACKED_SUFFIX:
        try:
            return lzma.decompress(stored.read_bytes()).decode()
        except lzma.LZMAError as e:
            raise ValueError(f"{stored} is not a whole xz file ({e})") from None
    return stored.read_text()


def find_records(directory: str | Path, pattern: str) -> list[Path]:
    """The record files under ``directory`` that match the glob ``pattern`` (e.g.
    ``"runs/*/metrics.jsonl"``), plain or packed, each named by its plain path, sorted."""
    directory = Path(directory)
    plain = set(directory.glob(pattern))
    packed = {p.with_name(p.name.removesuffix(PACKED_SUFFIX))
              for p in directory.glob(pattern + PACKED_SUFFIX)}
    return sorted(plain | packed)


def finished_summary(records: list[dict]) -> dict | None:
    """The summary record of a run whose records are ``records`` if it ended after all its
    planned steps (the config line's ``steps``), else None."""
    config = next((r for r in records if r.get("kind") == "config"), None)
    planned = (config or {}).get("config", {}).get("steps")
    if planned is None or records[-1].get("kind") != "summary":
        return None
    return records[-1] if records[-1].get("steps", -1) >= planned else None


def parse(text: str, path: str | Path) -> list[dict]:
    """The records of the JSONL ``text`` (of ``path``, named in the error)."""
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSONL ({e})") from None


def thinned(records: list[dict]) -> list[dict]:
    """``records`` with :data:`THINNED_FIELDS` left out of every ``train`` record but the
    last."""
    trains = [i for i, r in enumerate(records) if r.get("kind") == "train"]
    thin = set(trains[:-1])
    return [{k: v for k, v in r.items() if k not in THINNED_FIELDS} if i in thin else r
            for i, r in enumerate(records)]


def thinned_text(text: str, path: str | Path) -> str:
    """``text`` (the metrics of ``path``) :func:`thinned`: only the train lines that lose a
    field are rewritten, every other line is kept as it is."""
    lines = [line for line in text.splitlines() if line.strip()]
    before = parse(text, path)
    after = thinned(before)
    return "".join((line if old == new else json.dumps(new)) + "\n"
                   for line, old, new in zip(lines, before, after, strict=True))


def study_task(path: str | Path) -> Path | None:
    """The :data:`STUDY_TASK` file of the study holding the record file ``path``: that of the
    nearest folder above it that has one (plain or packed), else None."""
    for folder in Path(path).absolute().parents:
        if records_exist(folder / STUDY_TASK):
            return folder / STUDY_TASK
    return None


def task_problems(task: Path) -> dict[str, tuple[str, object]]:
    """id -> (question, gold) of the study task file ``task``."""
    return {r.get("id"): (r.get("question"), r.get("gold")) for r in parse(read_text(task), task)}


def thinned_predictions_text(text: str, path: str | Path) -> str:
    """``text`` (the predictions file ``path``) with every row's ``question`` left out when its
    study's task file (:func:`study_task`) lists each row's id with the same question and
    gold; else ``text`` as it is."""
    rows = parse(text, path)
    task = study_task(path)
    problems = task_problems(task) if task is not None else {}
    if not rows or not all(isinstance(r.get("id"), str) and
                           problems.get(r["id"]) == (r.get("question"), r.get("gold"))
                           for r in rows):
        return text
    return "".join(json.dumps({k: v for k, v in r.items() if k != "question"}) + "\n"
                   for r in rows)


def with_questions(rows: list[dict], path: str | Path) -> list[dict]:
    """``rows`` (of the predictions file ``path``) with the ``question`` of each row packed
    without it put back (after its ``id``) from its study's task file; ValueError when there
    is none or it does not list the row's problem with the gold it was scored against."""
    if all("question" in r for r in rows):
        return rows
    task = study_task(path)
    if task is None:
        raise ValueError(f"{path} leaves its questions out, but no folder above it holds "
                         f"{STUDY_TASK}")
    problems = task_problems(task)
    restored = []
    for r in rows:
        if "question" not in r:
            question, gold = problems.get(r.get("id"), (None, None))
            if question is None or gold != r.get("gold"):
                raise ValueError(f"{path}: problem {r.get('id')!r} is not in {task} as it was "
                                 "scored; that task file is not the one of these predictions")
            r = {"id": r["id"], "question": question, **{k: v for k, v in r.items() if k != "id"}}
        restored.append(r)
    return restored


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of the predictions file ``path`` (plain or packed; ``id, question, output,
    pred, gold, correct``), each with its question (:func:`with_questions`)."""
    return with_questions(parse(read_text(path), path), path)


def packed_form(path: Path, text: str, thin: bool) -> tuple[str, Callable[[str], bool]]:
    """What the record file ``path`` holding ``text`` packs to, and the check its read-back
    must pass: with ``thin``, a metrics file :func:`thinned` (the same records thinned), a
    predictions file :func:`thinned_predictions_text` (its rows, questions restored, are the
    original rows); else the text itself."""
    if thin and path.name == METRICS_NAME:
        return thinned_text(text, path), lambda back: (
            parse(back, path) == thinned(parse(text, path)))
    if thin and fnmatch(path.name, PREDICTIONS_GLOB):
        return thinned_predictions_text(text, path), lambda back: (
            with_questions(parse(back, path), path) == parse(text, path))
    return text, lambda back: True


def replace_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` by what ``write(file)`` writes, whole or not at all: written to
    ``path.tmp``, flushed to disk, renamed over ``path``; on a failure (``OSError``: a full
    disk) the temporary file is removed and ``path`` is as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def pack_file(path: Path, thin: bool = False) -> Path:
    """Pack the record file ``path`` into ``path.xz`` (written through ``.tmp``), read it back,
    and delete ``path`` only when what was read back is what was meant: the same text, and
    with ``thin`` the same records as :func:`packed_form` says. Returns the packed file."""
    text = path.read_text()
    meant, same = packed_form(path, text, thin)
    packed = packed_path(path)
    replace_file(packed, lambda f: f.write(lzma.compress(meant.encode(), **_XZ)))
    back = lzma.decompress(packed.read_bytes()).decode()
    try:
        kept = back == meant and same(back)
    except ValueError:  # the restored rows could not be read
        kept = False
    if not kept:
        packed.unlink()
        raise OSError(f"{packed} did not read back as the records of {path}; {path} is kept")
    path.unlink()
    return packed


def write_records(path: str | Path, text: str) -> Path:
    """Write the record file ``path`` whole in the form it is stored in: packed
    (:func:`pack_file`) when only its packed form is there (a packed study's ``runs.jsonl``
    rewritten by its report), else plain. Returns the file written."""
    path = Path(path)
    packed = is_packed(path)
    replace_file(path, lambda f: f.write(text.encode()))
    return pack_file(path) if packed else path


@dataclass
class PackResult:
    """What :func:`pack_study` did: the runs and study record files it packed and their bytes
    before and after, the runs already packed, the runs it left alone (not finished)."""

    packed: list[Path] = field(default_factory=list)
    study_files: list[Path] = field(default_factory=list)
    already: list[Path] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0


def run_is_finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` trained all its planned steps (its metrics end with the
    summary line of its last step); a run being written or stopped early is not."""
    try:
        records = parse(read_text(run_dir / METRICS_NAME), run_dir / METRICS_NAME)
    except ValueError:  # a line being written
        return False
    return bool(records) and finished_summary(records) is not None


def pack_study(directory: str | Path, thin: bool = False) -> PackResult:
    """Pack every finished run under ``directory`` (each folder with a ``metrics.jsonl``):
    each of its ``*.jsonl`` files becomes ``*.jsonl.xz`` (:func:`pack_file`; ``thin``: its
    metrics :func:`thinned`, its predictions without the questions its study's task file
    holds), and so do ``directory``'s own :data:`STUDY_RECORDS` (written whole). Runs not
    finished are left as they are; packing again changes nothing (the packed files of the
    same records are the same bytes)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")
    result = PackResult()
    for metrics in find_records(directory, "**/" + METRICS_NAME):
        run_dir = metrics.parent
        plain = sorted(run_dir.glob(RECORDS_GLOB))
        if not plain:
            result.already.append(run_dir)
        elif not run_is_finished(run_dir):
            result.unfinished.append(run_dir)
        else:
            result.bytes_before += sum(p.stat().st_size for p in plain)
            result.bytes_after += sum(pack_file(p, thin).stat().st_size
                                      for p in plain)
            result.packed.append(run_dir)
    for plain in (directory / name for name in STUDY_RECORDS):
        if plain.is_file():
            result.bytes_before += plain.stat().st_size
            result.bytes_after += pack_file(plain).stat().st_size
            result.study_files.append(plain)
    return result
