"""A fine-tuning study's packed predictions (:mod:`muonlab.report.records`): packed ``--thin``,
a run's predictions leave out the questions its study's ``task/test.jsonl`` holds and
:func:`read_predictions` gives back exactly the rows the run wrote (the plain file is the
reference); a file whose problems the task file does not list as scored is packed whole; the
study's own ``runs.jsonl`` is packed and rewritten packed. Synthetic studies: no training."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

from muonlab.cli import main
from muonlab.report import records
from muonlab.report.metrics import read_jsonl
from muonlab.train.finetune import Task

PROBLEMS = [{"id": f"arith-7-{i}", "question": f"Ann has {i} apples. Bo gives her {i + 1} more "
             "apples. How many apples does Ann have now?",
             "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}", "gold": 2 * i + 1}
            for i in range(4)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """``rows`` as the study writes them (one ``json.dumps`` a line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def predictions(seed: int) -> list[dict]:
    """A run's predictions of :data:`PROBLEMS` (fields and order of ``evaluate_task``)."""
    return [{"id": p["id"], "question": p["question"], "output": f"#### {p['gold'] + seed}",
             "pred": p["gold"] + seed, "gold": p["gold"], "correct": seed == 0}
            for p in PROBLEMS]


def make_study(root: Path, task: bool = True) -> list[Path]:
    """A fine-tuning study in ``root``: its task file (unless not ``task``) and two finished
    runs, each with its metrics and predictions; returns the runs' folders."""
    if task:
        write_jsonl(root / "task" / "test.jsonl", PROBLEMS)
    runs = []
    for seed in (0, 1):
        run = root / "ft" / "adamw" / "muon-kj" / f"lr0.004-s{seed}"
        write_jsonl(run / "metrics.jsonl", [{"kind": "config", "config": {"steps": 2}},
                                            {"kind": "summary", "steps": 2}])
        write_jsonl(run / "predictions.jsonl", predictions(seed))
        runs.append(run)
    return runs


def unpacked(run: Path) -> str:
    """What ``unxz`` gives back of the run's packed predictions."""
    return lzma.decompress((run / "predictions.jsonl.xz").read_bytes()).decode()


def test_thin_pack_leaves_the_questions_out_and_reads_back_the_rows_the_runs_wrote(tmp_path):
    runs = make_study(tmp_path)
    written = {run: (run / "predictions.jsonl").read_text() for run in runs}
    records.pack_study(tmp_path, thin=True)
    for seed, run in enumerate(runs):
        assert not (run / "predictions.jsonl").exists()
        bare = [json.loads(x) for x in unpacked(run).splitlines()]
        assert bare == [{k: v for k, v in r.items() if k != "question"} for r in predictions(seed)]
        rows = records.read_predictions(run / "predictions.jsonl")
        assert rows == predictions(seed)
        assert "".join(json.dumps(r) + "\n" for r in rows) == written[run]  # key order too
    # the task file is packed with the study and reads as it was written
    assert records.is_packed(tmp_path / "task" / "test.jsonl")
    assert read_jsonl(tmp_path / "task" / "test.jsonl") == PROBLEMS


@pytest.mark.parametrize("change", ["question", "gold", "id"])
def test_predictions_the_task_file_does_not_list_as_scored_are_packed_whole(tmp_path, change):
    """One row's question, gold or id differs from the task file: that run's file is packed
    whole (unxz gives it back as written), its neighbour's is thinned."""
    kept, changed = make_study(tmp_path)
    rows = predictions(1)
    rows[2][change] = {"question": "Who has the apples?", "gold": -1, "id": "gsm8k-3"}[change]
    write_jsonl(changed / "predictions.jsonl", rows)
    text = (changed / "predictions.jsonl").read_text()
    records.pack_study(tmp_path, thin=True)
    assert unpacked(changed) == text
    assert records.read_predictions(changed / "predictions.jsonl") == rows
    assert "question" not in unpacked(kept)


def test_a_study_without_a_task_file_packs_its_predictions_whole(tmp_path):
    runs = make_study(tmp_path, task=False)
    records.pack_study(tmp_path, thin=True)
    for seed, run in enumerate(runs):
        assert json.loads(unpacked(run).splitlines()[0])["question"] == PROBLEMS[0]["question"]
        assert records.read_predictions(run / "predictions.jsonl") == predictions(seed)


def test_thinned_predictions_refuse_a_task_file_that_is_not_theirs(tmp_path):
    run, _ = make_study(tmp_path)
    records.pack_study(tmp_path, thin=True)
    other = [{**p, "gold": p["gold"] + 1} for p in PROBLEMS]
    write_jsonl(tmp_path / "task" / "test.jsonl", other)
    with pytest.raises(ValueError, match="arith-7-0.*not in .*test.jsonl as it was scored"):
        records.read_predictions(run / "predictions.jsonl")
    for task in (tmp_path / "task").iterdir():  # plain and packed
        task.unlink()
    with pytest.raises(ValueError, match="no folder above it holds task/test.jsonl"):
        records.read_predictions(run / "predictions.jsonl")


def test_the_study_runs_jsonl_is_packed_and_its_report_rewrites_it_packed(tmp_path, capsys):
    make_study(tmp_path)
    lines = [{"base": "adamw", "arm": "muon-kj", "seed": s, "accuracy": 0.5} for s in (0, 1)]
    write_jsonl(tmp_path / "runs.jsonl", lines)
    assert main(["results", "pack", "--thin", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "packed 2 finished runs under" in out
    assert "and its runs.jsonl and its task/test.jsonl" in out
    assert records.is_packed(tmp_path / "runs.jsonl")
    assert read_jsonl(tmp_path / "runs.jsonl") == lines
    # the report writes it again (one more run): in the form it is stored in
    records.write_records(tmp_path / "runs.jsonl",
                          "".join(json.dumps(r) + "\n" for r in lines + lines[:1]))
    assert records.is_packed(tmp_path / "runs.jsonl")
    assert read_jsonl(tmp_path / "runs.jsonl") == lines + lines[:1]


def test_a_packed_task_file_is_rewritten_packed_and_only_when_its_problems_differ(tmp_path):
    """A continued study writes its test problems again: nothing changes when they are the
    same, a packed file is replaced packed when they differ."""
    path = tmp_path / "task" / "test.jsonl"
    task = Task.make("arithmetic", None, 0, 4, 3, 16)
    task.write_test_problems(path)
    assert read_jsonl(path) == [{"id": p.id, "question": p.question, "answer": p.answer,
                                 "gold": p.gold} for p in task.test]
    records.pack_study(tmp_path)
    packed = records.packed_path(path).read_bytes()
    task.write_test_problems(path)
    assert not path.exists() and records.packed_path(path).read_bytes() == packed
    other = Task.make("arithmetic", None, 1, 4, 3, 16)
    other.write_test_problems(path)
    assert records.is_packed(path) and [r["id"] for r in read_jsonl(path)] == [
        p.id for p in other.test] != [p.id for p in task.test]
