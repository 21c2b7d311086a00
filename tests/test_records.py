"""Packed run records (``muonkit results pack``, :mod:`muonlab.report.records`): a finished
run's ``*.jsonl`` become ``*.jsonl.xz`` that every reader reads as it read the plain files
(the plain reading is the reference), packing is byte-deterministic and leaves unfinished runs
alone, a packed run is finished for a study and never trained on, and docs/results, packed,
stays under its size limit."""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path

import pytest

from muonlab.cli import main
from muonlab.experiments.runs import RunSpec, run_in_process, run_status
from muonlab.report.metrics import find_runs, load_run, read_jsonl, run_sessions
from muonlab.report.provenance import run_provenance
from muonlab.report.records import THINNED_FIELDS, pack_study
from muonlab.train.config import TrainConfig
from muonlab.train.files import finished_run, read_records

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
FAST = ["--optimizer", "adamw", "--preset", "tiny", "--batch-size", "2", "--block-size", "8",
        "--eval-batches", "1", "--eval-every", "2", "--warmup", "1", "--no-progress",
        "--tracker", "none", "--steps", "4", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 4-step run of `muonkit train` (with a checkpoint) and a study's
    sessions.jsonl beside it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(out), *FAST]) == 0
    (out / "sessions.jsonl").write_text('{"status": "finished", "threads": 1, "cpu_s": 2.5, '
                                        '"wall_s": 3.0}\n')
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run, in a study folder ``tmp_path/study``."""
    out = tmp_path / "study" / "run"
    shutil.copytree(trained, out)
    return out


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def readings(run_dir: Path) -> dict:
    """Everything the readers take from a run's records."""
    run = load_run(run_dir / "metrics.jsonl")
    return {"records": read_jsonl(run_dir / "metrics.jsonl"),
            "sessions file": read_jsonl(run_dir / "sessions.jsonl"),
            "run": (run.config, run.train, run.val, run.summaries, run.provenance),
            "sessions": run_sessions(run_dir),
            "provenance": run_provenance(run, "run"),
            "loop's records": read_records(run_dir / "metrics.jsonl"),
            "finished": finished_run(run_dir / "metrics.jsonl")}


def test_a_packed_run_reads_as_the_plain_one(run, capsys):
    before, plain = readings(run), snapshot(run)
    assert main(["results", "pack", str(run.parent)]) == 0
    assert "packed 1 finished runs" in capsys.readouterr().out
    assert not list(run.glob("*.jsonl"))
    assert sorted(p.name for p in run.glob("*.xz")) == ["metrics.jsonl.xz", "sessions.jsonl.xz"]
    assert readings(run) == before
    assert [r.path for r in find_runs(run.parent)] == [run / "metrics.jsonl"]
    for name in ("metrics.jsonl", "sessions.jsonl"):  # unxz gives the file back
        assert lzma.decompress((run / f"{name}.xz").read_bytes()) == plain[name]


def test_pack_is_byte_deterministic_and_packing_again_changes_nothing(run, tmp_path, capsys):
    twin = tmp_path / "twin"
    shutil.copytree(run.parent, twin)
    pack_study(run.parent)
    pack_study(twin)
    packed = snapshot(run.parent)
    assert packed == snapshot(twin) and "run/metrics.jsonl.xz" in packed
    again = pack_study(run.parent)
    assert (again.packed, again.already) == ([], [run])
    assert snapshot(run.parent) == packed


def test_unfinished_runs_are_left_as_they_are(run, tmp_path):
    """A run still writing (no summary; a half-written last line) or stopped before its last
    step is not packed; its finished neighbour is."""
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["kind"] == "summary"
    study = run.parent
    for name, text in [("writing", "".join(lines[:-1])),
                       ("half-line", "".join(lines[:-1]) + lines[-1][:20]),
                       ("stopped", "".join(lines[:-1]) + lines[-1].replace('"steps": 4',
                                                                           '"steps": 3'))]:
        (study / name).mkdir()
        (study / name / "metrics.jsonl").write_text(text)
        (study / name / "sessions.jsonl").write_text("{}\n")
    before = snapshot(study)
    result = pack_study(study)
    assert result.packed == [run]
    assert sorted(p.name for p in result.unfinished) == ["half-line", "stopped", "writing"]
    after = snapshot(study)
    assert {k: v for k, v in after.items() if not k.startswith("run/")} == {
        k: v for k, v in before.items() if not k.startswith("run/")}


def test_thin_packing_leaves_out_only_the_fields_no_report_reads(run):
    before = read_jsonl(run / "metrics.jsonl")
    text = (run / "metrics.jsonl").read_text().splitlines()
    pack_study(run.parent, thin=True)
    after = read_jsonl(run / "metrics.jsonl")
    packed_text = lzma.decompress((run / "metrics.jsonl.xz").read_bytes()).decode().splitlines()
    trains = [i for i, r in enumerate(before) if r["kind"] == "train"]
    assert len(after) == len(before) and len(trains) == 4
    for i, (old, new) in enumerate(zip(before, after)):
        if i in trains[:-1]:
            assert new == {k: v for k, v in old.items() if k not in THINNED_FIELDS}
            assert {"step", "loss"} <= set(new) and "elapsed_s" in old
        else:  # every other line is kept as it was written
            assert packed_text[i] == text[i]
    # what the reports read is the same
    assert load_run(run / "metrics.jsonl").val == [r for r in before if r["kind"] == "val"]
    assert load_run(run / "metrics.jsonl").train[-1] == before[trains[-1]]


def test_a_study_skips_a_packed_finished_run_and_never_trains_on_it(run, capsys):
    pack_study(run.parent)
    packed = snapshot(run)
    assert run_status(run, 4) == "finished"
    # continuing the study: the run is not trained again (this entry would fail if called)
    spec = RunSpec(kwargs={"train_config": TrainConfig(out_dir=str(run), steps=4)},
                   label="packed")
    assert run_in_process(spec) == load_run(run / "metrics.jsonl").val[-1]["val_loss"]
    with pytest.raises(ValueError, match="packed run.*unxz"):
        run_status(run, 6)  # other steps than the packed run's: refused, never replaced
    # the loop: a resume of the complete run changes nothing, a longer one is refused in
    # one line, and a new run is not written over it
    capsys.readouterr()
    assert main(["train", "--out", str(run), *FAST, "--resume"]) == 0
    assert "complete" in capsys.readouterr().out
    for flags, says in [(["--resume", "--steps", "6"], "is packed"),
                        ([], "already holds a run (metrics.jsonl.xz")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--out", str(run), *FAST, *flags])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert says in err
    assert snapshot(run) == packed


def test_pack_of_a_missing_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["results", "pack", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "nope is not a directory" in err
    assert len(err.strip().splitlines()) == 1


def test_docs_results_are_packed_and_under_45_mb():
    """Every committed run's records are packed, and docs/results (without the studies' local
    checkpoints, which git ignores) stays under 45 MB: 10 MB until the GPU horizon study and
    the held-out GPT variant and comparison studies (2.0, 1.8 and 0.8 MB: thin packing keeps
    every step's loss and gradient norm), 14 MB until the horizon study's 20 tokens/param and
    weight-decay cells, the LoRA-Pre factor-step ablation and the held-out MNIST and
    two-dimensional-sweep studies (about 3.5 MB), 18 MB until the group-LR comparison and the
    LoRA-Pre factor step 0.5 (about 2.3 MB), 21 MB until the micro GPT's horizon study to 200
    tokens per parameter (12.2 MB with its weight-decay contender: 182 runs of up to 13,247
    steps, every step's loss kept), 33 MB until its LR x weight-decay sweep at 60 and 200
    tokens per parameter (horizon-micro-wd2d, about 11 MB)."""
    files = [p for p in RESULTS.rglob("*") if p.is_file() and not p.name.startswith("ckpt")]
    runs = [p.parent for p in files if p.name.startswith("metrics.jsonl")]
    assert len(runs) > 200
    assert [p for r in runs for p in r.glob("*.jsonl")] == []
    assert sum(p.stat().st_size for p in files) < 45 * 10**6


def test_packed_run_is_read_from_its_plain_name_only(run):
    """A packed file is found through its plain name: the plain file wins when both are
    there (a pack interrupted before it deleted it: the same records)."""
    pack_study(run.parent)
    lines = read_jsonl(run / "metrics.jsonl")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:2]))
    assert read_jsonl(run / "metrics.jsonl") == lines[:2]
    assert pack_study(run.parent).unfinished == [run]
