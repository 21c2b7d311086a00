"""A full disk loses nothing (issue 22, point 4): a failed checkpoint or metrics write says so
in one line, leaves the previous checkpoint and the metrics whole and no temporary file, and
the same command with ``--resume`` ends where an uninterrupted run ends."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import resource
import signal
from pathlib import Path

import pytest
import torch

from muonkit.distributed import spawn
from muonlab.cli import main
from muonlab.train import files
from muonlab.train.files import load_checkpoint, load_train_state

FAST = ["--optimizer", "muon", "--preset", "tiny", "--batch-size", "2", "--block-size", "8",
        "--eval-batches", "1", "--eval-every", "2", "--warmup", "1", "--no-progress",
        "--steps", "6", "--checkpoint-every", "2", "--threads", "1"]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def cli(out, *flags):
    tracker = [] if "--tracker" in flags else ["--tracker", "none"]
    return main(["train", "--out", str(out), *FAST, *tracker, *flags])


def one_line_failure(capsys, out, *flags) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli(out, *flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def uninterrupted(tmp_path):  # per test: conftest's fp32 Newton-Schulz is per test too
    out = tmp_path / "full"
    assert cli(out) == 0
    return out


def resume_ends_like(out, reference) -> None:
    assert cli(out, "--resume") == 0
    mine, ref = load_checkpoint(out / "ckpt.pt"), load_checkpoint(reference / "ckpt.pt")
    for key, value in ref["model"].items():
        assert torch.equal(mine["model"][key], value), key
    assert records(out)[-1]["final_val_loss"] == records(reference)[-1]["final_val_loss"]
    steps = [r["step"] for r in records(out) if r["kind"] == "train"]
    assert steps == list(range(1, 7))


def test_full_disk_at_a_checkpoint(tmp_path, capsys, monkeypatch, uninterrupted):
    out = tmp_path / "run"
    calls = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the step-4 checkpoint: half written, then the disk is full
            f.write(b"\0" * 100)
            raise ENOSPC
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as patch:  # (undo() would also undo conftest's patches)
        patch.setattr(files.torch, "save", save)
        err = one_line_failure(capsys, out)
    assert "No space left on device" in err and "step 2 is kept" in err and "--resume" in err
    assert not (out / "ckpt.pt.tmp").exists()
    assert load_checkpoint(out / "ckpt.pt")["step"] == 2
    assert max(r.get("step", 0) for r in records(out)) == 4  # every line whole
    (out / "ckpt.pt.tmp").write_bytes(b"\0" * 10)  # as a process killed mid-save leaves it
    resume_ends_like(out, uninterrupted)
    assert not (out / "ckpt.pt.tmp").exists()
    assert "removed" in capsys.readouterr().err  # the note on the half-written file


def test_full_disk_at_a_metrics_line(tmp_path, capsys, monkeypatch, uninterrupted):
    out = tmp_path / "run"
    real_write = files.write_all
    lines = []

    def write_all(fd, data):
        lines.append(data)
        if b'"step": 5' in data and b'"kind": "train"' in data:
            real_write(fd, data[: len(data) // 2])  # half a record reaches the disk
            raise ENOSPC
        real_write(fd, data)

    with monkeypatch.context() as patch:
        patch.setattr(files, "write_all", write_all)
        err = one_line_failure(capsys, out)
    assert "No space left on device" in err and "metrics.jsonl" in err
    text = (out / "metrics.jsonl").read_text()
    assert text.endswith("\n") and [json.loads(x) for x in text.splitlines()]
    assert load_checkpoint(out / "ckpt.pt")["step"] == 4
    resume_ends_like(out, uninterrupted)


def failing_save(monkeypatch, which: int):
    """``torch.save`` as the loop calls it, failing with ENOSPC at its ``which``-th call."""
    calls = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == which:
            raise ENOSPC
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(files.torch, "save", save)


def test_full_disk_at_the_summary_resumes_from_the_checkpoint_before(
        tmp_path, capsys, monkeypatch, uninterrupted):
    # the last step's checkpoint comes after the summary: without it the run is not complete
    out = tmp_path / "run"
    real_write = files.write_all

    def write_all(fd, data):
        if b'"kind": "summary"' in data:
            raise ENOSPC
        real_write(fd, data)

    with monkeypatch.context() as patch:
        patch.setattr(files, "write_all", write_all)
        err = one_line_failure(capsys, out)
    assert "step 4 is kept" in err and "--resume" in err
    assert load_checkpoint(out / "ckpt.pt")["step"] == 4
    assert "summary" not in [r["kind"] for r in records(out)]
    resume_ends_like(out, uninterrupted)


def test_full_disk_at_the_last_checkpoint_after_a_complete_record(
        tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        failing_save(patch, 3)  # the step-6 checkpoint
        err = one_line_failure(capsys, out)
    assert "the run is complete" in err and "step 4 is kept" in err
    assert records(out)[-1]["kind"] == "summary" and records(out)[-1]["steps"] == 6
    assert load_checkpoint(out / "ckpt.pt")["step"] == 4
    assert cli(out, "--resume") == 0
    assert "the run is complete" in capsys.readouterr().out


def test_full_disk_before_any_checkpoint_says_overwrite(tmp_path, capsys, uninterrupted):
    out = tmp_path / "run"
    with file_size_limit(2**20):  # the metrics fit, the first checkpoint (6 MB) does not
        err = one_line_failure(capsys, out)
    assert "File too large" in err and "step-2 checkpoint" in err
    assert "no checkpoint" in err and "--overwrite" in err and "--resume" not in err
    assert not (out / "ckpt.pt.tmp").exists() and not (out / "ckpt.pt").exists()
    assert cli(out, "--overwrite") == 0
    assert records(out)[-1]["final_val_loss"] == records(uninterrupted)[-1]["final_val_loss"]


def test_resume_puts_back_a_multi_rank_checkpoint_caught_between_its_renames(tmp_path):
    # save_train_state renames ckpt_dcp -> ckpt_dcp.old, then ckpt_dcp.tmp -> ckpt_dcp
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "ckpt_dcp.old").mkdir()
    (tmp_path / "ckpt_dcp.old" / "rank0.pt").write_bytes(b"state")
    (tmp_path / "ckpt_dcp.tmp").mkdir()  # half written, killed
    files.prepare_out_dir(tmp_path, resume=True, overwrite=False)
    assert (tmp_path / "ckpt_dcp" / "rank0.pt").read_bytes() == b"state"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_dcp", "metrics.jsonl"]


class Sampler:
    """A batch source's resume state, as the loop checkpoints it."""

    def state_dict(self) -> dict:
        return {"position": 7}


def no_space(*args, **kwargs):
    raise ENOSPC


def full_disk_on_rank_1(rank: int, world: int, out_dir: str, where: str) -> None:
    """Rank 1's write of the step-4 checkpoint fails (``where``: "dcp", in DCP's shard files;
    "kernel": every file of rank 1 past 1 KiB, its own sampler/RNG file at least); every rank
    must raise, naming rank 1, and the step-2 checkpoint stay whole."""
    import torch.distributed.checkpoint.filesystem as dcp_files

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        model(torch.randn(2, 4)).square().sum().backward()
        opt.step()

    path = Path(out_dir) / "ckpt_dcp"
    save = functools.partial(files.save_checkpoint, path, model, [opt], Sampler(),
                             elapsed=1.0, tokens=8, device=torch.device("cpu"))
    step()
    save(step=2)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    step()
    if rank == 1 and where == "dcp":
        dcp_files._write_item = no_space
    limit = file_size_limit(1024 if rank == 1 and where == "kernel" else resource.RLIM_INFINITY)
    with limit, pytest.raises(files.RunWriteError, match=rf"{ERRORS[where]} \(rank 1\)$"):
        save(step=4)  # named by the rank whose write failed, once
    assert sorted(p.name for p in Path(out_dir).iterdir()) == ["ckpt_dcp"]
    fresh = torch.nn.Linear(4, 4)
    state = load_train_state(path, fresh, [torch.optim.SGD(fresh.parameters(), lr=0.1)])
    assert state["step"] == 2 and state["batches"] == {"position": 7}
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, kept[key]), key


ERRORS = {"dcp": "No space left on device", "kernel": "File too large"}


@pytest.mark.parametrize("where", ["dcp", "kernel"])
def test_full_disk_on_one_rank_fails_every_rank_and_keeps_the_checkpoint(tmp_path, where):
    spawn(full_disk_on_rank_1, 2, args=(str(tmp_path), where), timeout_s=60)


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_full_disk_at_a_tensorboard_write(tmp_path, capsys, monkeypatch, uninterrupted):
    pytest.importorskip("tensorboard")
    from tensorboard.summary.writer.record_writer import RecordWriter

    from muonlab.train.trackers import TensorBoardTracker

    out = tmp_path / "run"
    full = []
    real_log, real_write = TensorBoardTracker.log_metrics, RecordWriter.write

    def log_metrics(self, record):
        if record["kind"] == "train" and record["step"] == 3:
            full.append(1)  # from the step-3 record on, TensorBoard's writer thread fails
        real_log(self, record)

    def write(self, data):
        if full:
            raise ENOSPC
        real_write(self, data)

    with monkeypatch.context() as patch:
        patch.setattr(TensorBoardTracker, "log_metrics", log_metrics)
        patch.setattr(RecordWriter, "write", write)
        err = one_line_failure(capsys, out, "--tracker", "tensorboard")
    assert "tensorboard tracker" in err and str(out / "tb") in err and "step 2 is kept" in err
    assert max(r.get("step", 0) for r in records(out)) == 3
    resume_ends_like(out, uninterrupted)


def train_gpt_on_a_full_disk(**kwargs):
    """A study's run (``RunSpec.entry``, in its own process) whose step-4 checkpoint meets a
    full disk."""
    failing_save(pytest.MonkeyPatch(), 2)
    from muonlab.train.gpt import train_gpt

    return train_gpt(**kwargs)


def test_full_disk_in_a_study_run_is_one_line_and_the_study_continues(tmp_path):
    from muonlab.experiments.runs import RunSpec, run_in_process, run_isolated
    from muonlab.train.loop import TrainConfig

    def spec(out, entry="muonlab.train.gpt:train_gpt"):
        cfg = TrainConfig(steps=6, eval_every=2, checkpoint_every=2, out_dir=str(out),
                          trackers=(), progress=False)
        kwargs = dict(optimizer="muon", preset="tiny", batch_size=2, block_size=8,
                      eval_batches=1, train_config=cfg)
        return RunSpec(kwargs, "r", threads=1, entry=entry)

    with pytest.raises(OSError) as info:
        run_isolated(spec(tmp_path / "r", f"{__name__}:train_gpt_on_a_full_disk"),
                     lambda _: None, poll_s=0.2)
    message = str(info.value)
    assert "No space left on device" in message and "run the same command again" in message
    assert "\n" not in message and "--resume" not in message
    assert load_checkpoint(tmp_path / "r" / "ckpt.pt")["step"] == 2
    resumed = run_in_process(spec(tmp_path / "r"), lambda _: None)  # as the study's rerun
    assert resumed == run_in_process(spec(tmp_path / "full"), lambda _: None)
    assert [r["step"] for r in records(tmp_path / "r") if r["kind"] == "train"] == list(range(1, 7))


@contextlib.contextmanager
def file_size_limit(size: int):
    """The kernel refuses to grow any file of this process past ``size`` bytes (EFBIG), as a
    full disk refuses (ENOSPC): a real failed write, whatever writes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (else the signal kills)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_keeps_a_studys_files_as_they_were(tmp_path):
    from muonlab.experiments.horizon import HorizonConfig, prepare_out

    cfg = HorizonConfig(out=str(tmp_path), horizons=[4], seeds=[1], contenders=["adamw"],
                        evals_per_run=2)
    prepare_out(cfg, "muonkit horizon --contenders adamw")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert len(before["study.json"]) > 100
    more = HorizonConfig(**{**cfg.__dict__, "contenders": ["adamw", "muon"]})
    with file_size_limit(20), pytest.raises(OSError, match="study.json"):
        prepare_out(more, "muonkit horizon --contenders adamw muon")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
