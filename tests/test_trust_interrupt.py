"""Ctrl-C stops a study and the same command continues it (issue 22, point 5): no run starts
after the interrupt, no traceback (on the terminal or in error.txt), and the rerun keeps the
finished runs and completes the study. The machinery is shared (:mod:`muonlab.experiments.runs`):
compare tests it through its processes; horizon, the in-process runs and the untuned variant
studies each get a lighter check. Deadlines guard against a hang on a loaded machine; they are
not speed limits."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from cli_process import has_loaded, run_children, start_muonkit

TINY = ["--preset", "tiny", "--batch-size", "2", "--block-size", "8", "--eval-batches", "1",
        "--threads", "1", "--tracker", "none"]
COMPARE = ["compare", *TINY, "--eval-every", "0", "--warmup", "1", "--steps", "100",
           "--seeds", "0", "--optimizers", "adamw", "muon", "--jobs", "1",
           "--momentum-warmup", "5"]


def finished(run: Path) -> bool:
    metrics = run / "metrics.jsonl"
    return metrics.exists() and '"kind": "summary"' in metrics.read_text()


def started(out: Path, runs: str = "runs/*") -> list[Path]:
    return sorted(p.parent for p in out.glob(f"{runs}/metrics.jsonl"))


def wait_for(condition, proc, what: str, deadline_s: float = 300) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None and not condition():
        time.sleep(0.05)
    assert condition(), f"the study did not reach {what}"


def stop(proc, send) -> tuple[str, str]:
    """``send()`` the interrupt; the study's (stdout, stderr) once it has ended."""
    try:
        send()
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def assert_stopped(proc, out: str, err: str) -> None:
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err, out + err
    assert err.strip().splitlines()[-1].startswith("muonkit") and "run the same command" in err


def rerun(argv: list[str]) -> str:
    proc = start_muonkit(argv)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


@pytest.mark.timeout(600)
def test_ctrl_c_stops_a_compare_study_and_the_same_command_continues_it(tmp_path):
    out = tmp_path / "study"
    argv = [*COMPARE, "--out", str(out)]
    proc = start_muonkit(argv, own_group=True)
    wait_for(lambda: any(finished(r) for r in started(out)) and len(started(out)) >= 2, proc,
             "its second run")
    stdout, err = stop(proc, lambda: os.killpg(proc.pid, signal.SIGINT))  # Ctrl-C
    assert_stopped(proc, stdout, err)
    runs_at_stop = started(out)
    time.sleep(2)
    assert started(out) == runs_at_stop, "a queued run started after the interrupt"
    assert not all(finished(r) for r in runs_at_stop)
    assert not list(out.glob("runs/*/error.txt"))
    assert "[muon-s0] interrupted: the same command starts again" in stdout  # no checkpoint
    done = {r.name: (r / "metrics.jsonl").read_bytes() for r in runs_at_stop if finished(r)}
    assert done

    rerun(argv)
    runs = started(out)
    assert [r.name for r in runs] == ["adamw-s0", "muon-s0"]
    assert all(finished(r) for r in runs) and (out / "report.md").exists()
    for name, metrics in done.items():
        assert (out / "runs" / name / "metrics.jsonl").read_bytes() == metrics, name


@pytest.mark.timeout(600)
def test_ctrl_c_while_the_runs_start_stops_them_without_a_traceback(tmp_path):
    """Ctrl-C while --jobs 2 children are still starting (importing torch): they end as soon
    as they are ready, no KeyboardInterrupt traceback from inside an import reaches the
    terminal, no run trains, and the same command runs the study."""
    out = tmp_path / "study"
    argv = [*COMPARE, "--steps", "20", "--jobs", "2", "--out", str(out)]
    proc = start_muonkit(argv, own_group=True)

    def importing_torch() -> bool:  # (its shared library is mapped; its modules take seconds)
        children = run_children(proc.pid)
        return len(children) == 2 and all(has_loaded(pid, b"libtorch") for pid in children)

    wait_for(importing_torch, proc, "two runs importing torch", 120)
    stdout, err = stop(proc, lambda: os.killpg(proc.pid, signal.SIGINT))
    assert_stopped(proc, stdout, err)
    assert not started(out) and not list(out.glob("runs/*/error.txt"))

    rerun(argv)
    assert [r.name for r in started(out)] == ["adamw-s0", "muon-s0"]
    assert all(finished(r) for r in started(out))


@pytest.mark.timeout(600)
def test_sigterm_to_a_horizon_study_alone_stops_its_run_which_the_rerun_resumes(tmp_path):
    """SIGTERM to the study's process alone (its children get nothing from outside): it
    stops its running child, which keeps its checkpoint; the same command resumes that run
    from it (each evaluation once in the metrics: nothing repeated, nothing lost)."""
    out = tmp_path / "horizon"
    argv = ["horizon", *TINY, "--horizons", "100", "--evals-per-run", "20", "--seeds", "1",
            "--contenders", "adamw", "--grid-points", "1", "--sweep-extend", "0",
            "--out", str(out)]
    proc = start_muonkit(argv, own_group=True)
    wait_for(lambda: list(out.glob("h100/adamw/*/ckpt.pt")), proc, "a checkpoint")
    children = run_children(proc.pid)
    stdout, err = stop(proc, lambda: proc.send_signal(signal.SIGTERM))
    assert_stopped(proc, stdout, err)
    assert children and not any(Path(f"/proc/{pid}").exists() for pid in children)
    (run,) = started(out, "h100/adamw/*")
    assert not finished(run) and not (run / "error.txt").exists()
    assert "interrupted: the same command resumes from its checkpoint" in stdout

    assert "resuming from" in rerun(argv)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "session" in [r["kind"] for r in records] and finished(run)
    assert [r["step"] for r in records if r["kind"] == "val"] == list(range(0, 101, 5))


@pytest.mark.timeout(300)
def test_ctrl_c_stops_a_run_trained_in_the_study_process(tmp_path):
    """`compare --no-isolate` trains in the study's own process: Ctrl-C stops the run at
    once (it was meant to take a million steps), not after it."""
    out = tmp_path / "study"
    argv = [*COMPARE, "--steps", "1000000", "--no-isolate", "--out", str(out)]
    proc = start_muonkit(argv, own_group=True)
    metrics = out / "runs" / "adamw-s0" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and '"kind": "train"' in metrics.read_text(), proc,
             "a training step")
    stdout, err = stop(proc, lambda: os.killpg(proc.pid, signal.SIGINT))
    assert_stopped(proc, stdout, err)
    assert "[adamw-s0] interrupted" in stdout and started(out) == [metrics.parent]


def test_a_study_interrupted_between_its_phases_continues_in_the_right_one(tmp_path,
                                                                           monkeypatch):
    """A horizon study (sweep, then the other seeds at the chosen LR, horizon after horizon)
    interrupted as the first seed-1 run begins: the rerun does not sweep again, and it
    chooses and records what an uninterrupted study does; finished runs are kept as they
    were. (A guard: the phases are replayed from the finished runs' results.)"""
    from muonlab.experiments import horizon
    from muonlab.experiments.runs import StudyInterrupted, run_in_process
    from muonlab.train import gpt

    def study(out):
        cfg = horizon.HorizonConfig(
            out=str(out), horizons=[4, 8], seeds=[1], contenders=["adamw"], batch_size=2,
            block_size=8, eval_batches=1, evals_per_run=2, model_overrides={"n_layer": 1},
            grid_points=2, sweep_extend=0)
        horizon.prepare_out(cfg, "muonkit horizon (test)")
        horizon.Study(cfg, log=lambda _: None).run_all()

    train_gpt = gpt.train_gpt

    def ctrl_c_at_seed_1(**kwargs):
        if kwargs["train_config"].seed == 1:
            raise KeyboardInterrupt
        return train_gpt(**kwargs)

    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    monkeypatch.setattr(gpt, "train_gpt", ctrl_c_at_seed_1)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt) as stop:
        study(out)
    assert isinstance(stop.value, StudyInterrupted)
    monkeypatch.setattr(gpt, "train_gpt", train_gpt)
    runs = started(out, "h*/adamw/*")
    assert [r.parent.parent.name for r in runs] == ["h4", "h4"]  # the sweep, nothing after
    kept = {r: (r / "metrics.jsonl").read_bytes() for r in runs}

    study(out)
    study(tmp_path / "whole")
    for run, metrics in kept.items():
        assert (run / "metrics.jsonl").read_bytes() == metrics
    assert (json.loads((out / "sweeps.json").read_text())
            == json.loads((tmp_path / "whole" / "sweeps.json").read_text()))
    assert ([r.relative_to(out) for r in started(out, "h*/adamw/*")]
            == [r.relative_to(tmp_path / "whole") for r in started(tmp_path / "whole",
                                                                     "h*/adamw/*")])


def test_a_different_study_in_the_same_directory_is_refused(tmp_path, capsys):
    from muonlab.cli import main
    from muonlab.experiments.compare import STUDY_FILE

    out = tmp_path / "study"
    (out / "runs").mkdir(parents=True)
    (out / STUDY_FILE).write_text('{"steps": 10}')
    with pytest.raises(SystemExit) as exit_info:
        main([*COMPARE, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "another compare experiment" in err, err
    assert "--steps 10 there, 100 given" in err


def test_an_interrupted_variant_study_continues_with_the_same_command(tmp_path, monkeypatch):
    """The MLP variant studies run in this process: Ctrl-C mid-study, then the same study
    keeps its finished runs (same bytes) and redoes the interrupted one; another study in the
    directory is refused."""
    from fake_datasets import write_mnist
    from test_studies import TINY

    from muonlab.experiments import variants
    from muonlab.experiments.runs import StudyInterrupted

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
        with pytest.raises(KeyboardInterrupt) as stop:  # (caught: pytest would end the session)
            variants.run_study(cfg, log=lambda s: None)
    assert isinstance(stop.value, StudyInterrupted)  # whose message says how to continue
    runs = tmp_path / "study" / "runs"
    first = (runs / calls[0] / "metrics.jsonl").read_bytes()
    variants.run_study(cfg, log=lambda s: None)
    assert (runs / calls[0] / "metrics.jsonl").read_bytes() == first
    assert finished(runs / calls[1]) and (tmp_path / "study" / "table.md").exists()
    import dataclasses

    with pytest.raises(ValueError, match="--epochs 2 there, 3 given"):
        variants.run_study(dataclasses.replace(cfg, epochs=cfg.epochs + 1), log=lambda s: None)


def test_a_study_line_is_written_whole_so_threads_never_run_two_together(monkeypatch):
    """The studies' progress lines come from several threads: each is one write, text and
    newline together (print writes them apart, and two threads' lines ran together)."""
    import inspect
    import io
    import sys
    import threading

    from muonlab.experiments import compare, finetune_study, horizon, runs

    writes = []

    class Recorder(io.StringIO):
        def write(self, text):
            writes.append(text)
            return len(text)

    monkeypatch.setattr(sys, "stdout", Recorder())
    threads = [threading.Thread(target=runs.say, args=(f"[run {k}] interrupted",))
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(writes) == sorted(f"[run {k}] interrupted\n" for k in range(8))
    for logs in (runs.run_isolated, runs.run_in_process, compare.Experiment,
                 finetune_study.FinetuneStudy, horizon.Study):
        assert inspect.signature(logs).parameters["log"].default is runs.say, logs
