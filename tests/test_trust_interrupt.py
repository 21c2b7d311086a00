"""Ctrl-C stops a study and the same command continues it (issue 22, point 5): no run starts
after the interrupt, no traceback lands in error.txt, and the rerun keeps the finished runs and
completes the study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
COMPARE = ["compare", "--preset", "tiny", "--batch-size", "2", "--block-size", "8",
           "--eval-batches", "1", "--eval-every", "0", "--warmup", "1", "--steps", "200",
           "--seeds", "0", "--optimizers", "adamw", "muon", "--jobs", "1",
           "--threads", "1", "--tracker", "none", "--momentum-warmup", "5"]


def finished(run: Path) -> bool:
    metrics = run / "metrics.jsonl"
    return metrics.exists() and '"kind": "summary"' in metrics.read_text()


def started(out: Path) -> list[Path]:
    return sorted(p.parent for p in (out / "runs").glob("*/metrics.jsonl"))


def study(out: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "muonkit", *COMPARE, "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


@pytest.mark.timeout(600)
def test_ctrl_c_stops_a_compare_study_and_the_same_command_continues_it(tmp_path):
    out = tmp_path / "study"
    proc = study(out, start_new_session=True)  # its own process group, as a terminal job
    try:  # (generous deadlines guard against a hang on a loaded machine; not speed limits)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not (
            any(finished(r) for r in started(out)) and len(started(out)) >= 2
        ):
            time.sleep(0.1)
        assert len(started(out)) >= 2, "the study did not reach its second run"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the parent and its running child
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command again" in err, err
    runs_at_stop = started(out)
    time.sleep(2)
    assert started(out) == runs_at_stop, "a queued run started after the interrupt"
    assert not all(finished(r) for r in runs_at_stop)
    assert not list(out.glob("runs/*/error.txt"))
    done = {r.name: (r / "metrics.jsonl").read_bytes() for r in runs_at_stop if finished(r)}
    assert done

    rerun = study(out)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    runs = started(out)
    assert [r.name for r in runs] == ["adamw-s0", "muon-s0"]
    assert all(finished(r) for r in runs) and (out / "report.md").exists()
    for name, metrics in done.items():
        assert (out / "runs" / name / "metrics.jsonl").read_bytes() == metrics, name


def test_a_different_study_in_the_same_directory_is_refused(tmp_path, capsys):
    from muonlab.cli import main

    out = tmp_path / "study"
    (out / "runs").mkdir(parents=True)
    from muonlab.experiments.compare import STUDY_FILE

    (out / STUDY_FILE).write_text('{"steps": 10}')
    with pytest.raises(SystemExit) as exit_info:
        main([*COMPARE, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "another compare experiment" in err, err
    assert "--steps 10 there, 200 given" in err


def test_an_interrupted_variant_study_continues_with_the_same_command(tmp_path, monkeypatch):
    """The MLP variant studies run in this process: Ctrl-C mid-study, then the same study
    keeps its finished runs (same bytes) and redoes the interrupted one; another study in the
    directory is refused."""
    from fake_datasets import write_mnist
    from test_studies import TINY

    from muonlab.experiments import variants

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_mnist(data_dir, n_train=160, n_test=40)
    cfg = variants.StudyConfig("hybrid", data_dir=str(data_dir), out=str(tmp_path / "study"),
                               device="cpu", **TINY)
    real, calls = variants.run_arm, []

    def interrupted_second(*args):
        calls.append(args[-1].name)
        if len(calls) == 2:
            (args[-1] / "metrics.jsonl").parent.mkdir(parents=True, exist_ok=True)
            (args[-1] / "metrics.jsonl").write_text('{"kind": "config"}\n')  # a partial run
            raise KeyboardInterrupt
        return real(*args)

    with monkeypatch.context() as patch:
        patch.setattr(variants, "run_arm", interrupted_second)
        with pytest.raises(KeyboardInterrupt):
            variants.run_study(cfg, log=lambda s: None)
    runs = tmp_path / "study" / "runs"
    first = (runs / calls[0] / "metrics.jsonl").read_bytes()
    variants.run_study(cfg, log=lambda s: None)
    assert (runs / calls[0] / "metrics.jsonl").read_bytes() == first
    assert finished(runs / calls[1]) and (tmp_path / "study" / "table.md").exists()
    import dataclasses

    with pytest.raises(ValueError, match="--epochs: study"):
        variants.run_study(dataclasses.replace(cfg, epochs=cfg.epochs + 1), log=lambda s: None)
