"""What a run records about where its numbers came from, and the fixed default thread count:
the same flags on the same machine class give the same bits (issue 22, point 6 and provenance)."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import muonkit
from muonlab.cli import main
from muonlab.experiments.runs import GPT_ENTRY, RunSpec, default_threads, train_spec
from muonlab.report.metrics import run_machine_classes, run_sessions
from muonlab.train import TrainConfig
from muonlab.train.provenance import git_revision

FAST = ["--preset", "tiny", "--batch-size", "2", "--block-size", "8", "--eval-batches", "1",
        "--eval-every", "0", "--warmup", "1", "--no-progress", "--tracker", "none"]
REPO = Path(__file__).resolve().parents[1]


def train(out, *flags):
    return main(["train", "--out", str(out), *FAST, *flags])


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def cpuinfo(field):
    """The first ``field`` line of /proc/cpuinfo, read here (not through muonkit.hardware)."""
    line = next(x for x in open("/proc/cpuinfo") if x.startswith(field))
    return line.split(":", 1)[1].strip()


def machine(monkeypatch, cores: int, load: float):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))


@pytest.mark.parametrize("jobs, threads", [(1, 8), (2, 4), (3, 2), (16, 1)])
def test_the_default_thread_count_does_not_follow_the_load(monkeypatch, jobs, threads):
    got = set()
    for load in (0.0, 5.5, 7.9, 40.0):
        machine(monkeypatch, cores=8, load=load)
        got.add(default_threads(jobs))
    assert got == {threads}  # the cores shared by the jobs, whatever the load


def test_same_flags_and_machine_class_give_the_same_bits(tmp_path, monkeypatch):
    """Two runs of one command (default threads) on a 2-core machine, idle then busy."""
    flags = ["--optimizer", "muon", "--steps", "2", "--checkpoint-every", "2"]
    runs = []
    for name, load in (("idle", 0.0), ("busy", 1.9)):
        machine(monkeypatch, cores=2, load=load)
        assert train(tmp_path / name, *flags) == 0
        ckpt = torch.load(tmp_path / name / "ckpt.pt", weights_only=False)
        runs.append((ckpt, records(tmp_path / name)))
    (a, rec_a), (b, rec_b) = runs
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    state_a, state_b = a["optimizers"][0]["state"], b["optimizers"][0]["state"]
    assert all(torch.equal(state_a[i][k], state_b[i][k]) for i in state_a for k in state_a[i])
    losses = [[r["loss"] for r in rec if r["kind"] == "train"] for rec in (rec_a, rec_b)]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    classes = [rec[0]["provenance"]["machine_class"] for rec in (rec_a, rec_b)]
    assert classes[0] == classes[1] and classes[0]["threads"] == 2


def expected_git():
    """The commit and dirtiness of the checkout the tests import muonkit from, else None."""
    package = Path(muonkit.__file__).resolve().parent
    if not (REPO / ".git").exists() or REPO not in package.parents:
        return None

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", str(package)))}


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="Linux only")
def test_the_first_metrics_line_records_the_provenance(tmp_path):
    assert train(tmp_path, "--optimizer", "muon", "--steps", "2", "--threads", "2") == 0
    recs = records(tmp_path)
    config, end = recs[0], next(r for r in recs if r["kind"] == "session_end")
    assert config["kind"] == "config" and "session" not in [r["kind"] for r in recs]
    p = config["provenance"]
    flags = set(cpuinfo("flags").split())
    isa = sorted({"avx2", "avx512f", "avx512_bf16", "amx_bf16"} & flags)
    assert p["muonkit"] == muonkit.__version__ == "0.1.0"
    assert p["git"] == expected_git()
    assert p["torch"] == torch.__version__ and p["python"] == platform.python_version()
    assert p["device"] == "cpu" and p["device_name"] == p["cpu"] == cpuinfo("model name")
    assert p["isa"] == isa
    assert p["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())
    assert p["threads"] == 2 == torch.get_num_threads()
    assert p["dtype"] == "float32"
    assert p["ns_dtype"]["0"].startswith("auto: fp32 (cpu ")  # tests see no native bf16
    assert p["argv"] == sys.argv and p["launched_as"] is None and p["world_size"] == 1
    assert p["machine_class"] == {"device": "cpu", "name": cpuinfo("model name"), "isa": isa,
                                  "cpu_capability": p["cpu_capability"], "threads": 2}
    assert end["end_step"] == 2 and end["status"] == "finished"
    assert end["cpu_s"] > 0 and end["wall_s"] > 0
    assert recs[-1]["kind"] == "summary"  # the session's end comes before the summary


def test_a_study_run_records_its_spec(tmp_path):
    cfg = TrainConfig(steps=1, out_dir=str(tmp_path), progress=False, trackers=(),
                      device="cpu")
    kwargs = dict(preset="tiny", batch_size=2, block_size=8, eval_batches=1, train_config=cfg)
    train_spec(RunSpec(kwargs, "lr0.02 s0", threads=1))
    assert records(tmp_path)[0]["provenance"]["launched_as"] == {
        "label": "lr0.02 s0", "entry": GPT_ENTRY, "threads": 1}


def test_a_resume_on_another_machine_class_records_both(tmp_path, monkeypatch, capsys):
    flags = ["--optimizer", "adamw", "--checkpoint-every", "2", "--threads", "1"]
    assert train(tmp_path, "--steps", "2", *flags) == 0
    first = records(tmp_path)[0]["provenance"]["machine_class"]
    capsys.readouterr()
    monkeypatch.setattr("muonkit.hardware.cpu_model", lambda: "Another CPU")
    assert train(tmp_path, "--steps", "4", "--resume", *flags) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "Another CPU" in warning[0], warning
    (resumed,) = [r for r in records(tmp_path) if r["kind"] == "session"]
    assert resumed["machine_changed"] is True and resumed["first_machine_class"] == first
    assert resumed["provenance"]["machine_class"] == {**first, "name": "Another CPU"}
    sessions = run_sessions(tmp_path)
    assert [s["machine_changed"] for s in sessions] == [False, True]
    assert [(s["start_step"], s["end_step"], s["status"]) for s in sessions] == [
        (0, 2, "finished"), (2, 4, "finished")]
    assert all(s["cpu_s"] > 0 for s in sessions)
    assert run_machine_classes(tmp_path) == [first, {**first, "name": "Another CPU"}]


def test_the_git_revision_is_none_without_git(monkeypatch):
    git_revision.cache_clear()
    monkeypatch.setenv("PATH", "")  # no git to run
    try:
        assert git_revision() is None
    finally:
        git_revision.cache_clear()
