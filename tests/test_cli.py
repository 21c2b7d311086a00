"""`muonkit` as a user meets it: runs are never lost, bad values and user errors end in one
line on stderr with exit code 2 before any work, Ctrl-C says how to resume."""

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from cli_process import start_muonkit

from muonkit import MuonOptions
from muonlab.cli import main
from muonlab.cli.train import config_from_args
from muonlab.train.gpt import GPTRunConfig

FAST = ["--preset", "tiny", "--batch-size", "2", "--block-size", "8", "--eval-batches", "1",
        "--eval-every", "0", "--warmup", "1", "--no-progress", "--tracker", "none"]


def train(out, *flags):
    return main(["train", "--optimizer", "adamw", "--out", str(out), *FAST, *flags])


def user_error(capsys, argv) -> str:
    """Run ``muonkit argv``; assert exit code 2 and one line on stderr; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def snapshot(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run with a checkpoint at steps 2 and 4."""
    out = tmp_path_factory.mktemp("finished")
    assert train(out, "--steps", "4", "--checkpoint-every", "2") == 0
    return out


def test_train_with_the_byte_tokenizer(tmp_path):
    assert train(tmp_path, "--steps", "2", "--tokenizer", "byte") == 0
    config = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["config"]
    assert config["data"]["tokenizer"] == "byte" and config["data"]["vocab_size"] == 256
    assert config["model"]["vocab_size"] == 256


def test_resume_of_a_finished_run_says_complete_and_changes_nothing(finished, capsys):
    before = snapshot(finished)
    capsys.readouterr()
    assert train(finished, "--steps", "4", "--checkpoint-every", "2", "--resume") == 0
    assert "complete" in capsys.readouterr().out
    assert snapshot(finished) == before


def test_resume_below_the_runs_steps_is_refused_and_changes_nothing(finished, capsys):
    before = snapshot(finished)
    err = user_error(capsys, ["train", "--optimizer", "adamw", "--out", str(finished), *FAST,
                              "--steps", "3", "--resume"])
    assert "--steps 4" in err
    assert snapshot(finished) == before


def test_a_directory_holding_a_run_is_refused_unless_overwrite(finished, tmp_path, capsys):
    out = tmp_path / "again"
    out.mkdir()
    for p in finished.iterdir():
        if p.is_file():
            (out / p.name).write_bytes(p.read_bytes())
    before = snapshot(out)
    err = user_error(capsys, ["train", "--out", str(out), *FAST, "--steps", "2"])
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(out) == before
    (out / "notes.txt").write_text("mine")
    assert train(out, "--steps", "2", "--overwrite") == 0  # no checkpointing this time
    assert not (out / "ckpt.pt").exists() and (out / "notes.txt").read_text() == "mine"
    assert '"steps": 2' in (out / "metrics.jsonl").read_text().splitlines()[-1]


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["train", "--min-lr-ratio", "-1"], "--min-lr-ratio"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--steps", "0"], "--steps"),
        (["train", "--muon-momentum", "1"], "--muon-momentum"),
        (["train", "--grad-clip", "inf"], "--grad-clip"),
        (["train", "--eval-batches", "0"], "--eval-batches"),
        (["train", "--batch-size", "2.5"], "--batch-size"),
        (["demo", "--steps", "0"], "--steps"),
        (["variants", "large", "--momentum", "1.0"], "--momentum"),
        (["variants", "large", "--ranks", "4", "0"], "--ranks"),
        (["compare", "--seeds", "-1"], "--seeds"),
        (["compare", "--lr-sweep", "--sweep-steps", "0"], "--sweep-steps"),
        (["compare", "--adamw-lrs", "nan"], "--adamw-lrs"),
        (["compare", "--aux-lrs", "0"], "--aux-lrs"),
        (["compare", "--jobs", "0"], "--jobs"),
        (["compare", "--sweep-extend", "-1"], "--sweep-extend"),
        (["horizon", "--horizons", "0"], "--horizons"),
        (["horizon", "--seeds", "-1"], "--seeds"),
        (["horizon", "--threads", "0"], "--threads"),
        (["horizon", "--grid-points", "1.5"], "--grid-points"),
    ],
)
def test_every_numeric_value_is_checked_before_work(argv, flag, capsys, tmp_path):
    err = user_error(capsys, [*argv, "--out", str(tmp_path / "o")] if argv[0] != "demo" else argv)
    assert flag in err
    assert not (tmp_path / "o").exists()


def test_config_mirrors_the_flags():
    """Every GPTRunConfig field has a flag with the same default; the config checks values."""
    from muonlab.cli import build_parser

    args = build_parser().parse_args(["train"])
    config = config_from_args(args)  # the --ns-* flags: MuonOptions' defaults, recorded
    assert config == dataclasses.replace(GPTRunConfig(), muon_options=config.muon_options)
    assert MuonOptions(**config.muon_options) == MuonOptions()
    with pytest.raises(ValueError, match="--min-lr-ratio"):  # the flag, never the field
        GPTRunConfig(min_lr_ratio=-1.0)
    with pytest.raises(ValueError, match="unknown device"):
        GPTRunConfig(device="tpu:0")


def test_user_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--data", str(empty)], "empty.txt is empty"),
        (["--data", str(binary)], "weights.bin is not UTF-8"),
        (["--out", str(a_file)], "is a file"),
        (["--out", str(a_file / "sub")], "cannot create output directory"),
        (["--device", "tpu"], "unknown device"),
    ]
    for flags, expected in cases:
        argv = ["train", "--out", str(tmp_path / "o"), *FAST, "--steps", "1", "--warmup", "0",
                *flags]
        assert expected in user_error(capsys, argv)
    with pytest.raises(ValueError, match="empty"):  # --debug: the exception itself
        main(["train", "--debug", *FAST, "--data", str(empty), "--out", str(tmp_path / "d")])


def test_corrupt_checkpoint_is_a_user_error(finished, tmp_path, capsys):
    out = tmp_path / "corrupt"
    out.mkdir()
    for p in finished.iterdir():
        if p.is_file():
            data = p.read_bytes()
            (out / p.name).write_bytes(data[: len(data) // 2] if p.name == "ckpt.pt" else data)
    flags = ["--steps", "6", "--checkpoint-every", "2", "--resume"]
    assert "ckpt.pt cannot be read" in user_error(
        capsys, ["train", "--optimizer", "adamw", "--out", str(out), *FAST, *flags]
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_out_is_a_user_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert "not writable" in user_error(capsys, ["train", "--out", str(locked), *FAST])


def test_ctrl_c_names_the_checkpoint_and_the_resume_command(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *FAST, "--steps", "100000", "--checkpoint-every", "1"]
    proc = start_muonkit(argv)
    try:  # a loaded machine is slow to start and to stop; never leave the child running
        deadline = time.monotonic() + 200
        while not (out / "ckpt.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert f"last checkpoint {out / 'ckpt.pt'}" in err
    assert "continue with: muonkit train --out" in err and err.strip().endswith("--resume")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_another_thread_takes_waits_until_the_checkpoint_is_written(signum):
    """The process's signal may go to any thread that does not block it (torch's, a progress
    bar's); it must still wait until the write is done, then interrupt."""
    from muonlab.train.files import interrupts_deferred

    release, ready = threading.Event(), threading.Event()

    def other_thread():  # takes the signals (an earlier test may leave them blocked,
        # and a new thread inherits the mask)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        ready.set()
        release.wait()

    other = threading.Thread(target=other_thread)
    other.start()
    ready.wait()
    written = False
    held = {signal.SIGINT, signal.SIGTERM}  # as a terminal's command has them (see above)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    on_ctrl_c = signal.signal(signal.SIGINT, signal.default_int_handler)
    on_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), interrupts_deferred() as noted:
            signal.pthread_kill(other.ident, signum)
            deadline = time.monotonic() + 60  # a loaded machine may run the other thread late
            while not noted and time.monotonic() < deadline:
                time.sleep(0.01)  # bytecode runs meanwhile: a pending signal would raise here
            written = True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, on_ctrl_c)
        signal.signal(signal.SIGTERM, on_term)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        release.set()
        other.join()
    assert written


def test_threads_flag_and_its_default_are_applied_and_recorded(tmp_path, monkeypatch):
    import torch

    from muonkit.hardware import TIMING_FLAGS, cpu_flags
    from muonlab import cli

    def records(out):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert train(tmp_path / "two", "--steps", "1", "--warmup", "0", "--threads", "2") == 0
    summary = records(tmp_path / "two")[-1]
    assert summary["threads"] == 2 == torch.get_num_threads()
    assert summary["cpu_flags"] == sorted(f for f in TIMING_FLAGS if f in cpu_flags())
    assert summary["load_1min_start"] == pytest.approx(os.getloadavg()[0], abs=10)
    assert isinstance(summary["load_1min_end"], float)
    monkeypatch.setattr(cli.train, "default_threads", lambda jobs=1: 1)
    assert train(tmp_path / "default", "--steps", "1", "--warmup", "0") == 0
    assert records(tmp_path / "default")[-1]["threads"] == 1


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--help"], ["--threads", "(default: 2000)", "(default: 0.1)"]),
        (["demo", "--help"], ["training steps (default: 300)", "character-level MLP"]),
        (["variants", "--help"], ["(default: 0.02)"]),
        (["data", "fetch", "--help"], ["--data-dir"]),
    ],
)
def test_help_describes_options_with_defaults(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(e in text for e in expected), text


@pytest.mark.parametrize("command", [["compare"], ["horizon"], ["variants", "large"]])
def test_an_unknown_device_is_refused_before_anything_is_written(command, tmp_path, capsys):
    out = tmp_path / "o"
    assert "unknown device" in user_error(capsys, [*command, "--device", "foo", "--out", str(out)])
    assert not out.exists() and capsys.readouterr().out == ""


def test_help_shows_no_meaningless_default(capsys):
    texts = {}
    for command in ("compare", "variants", "horizon"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        texts[command] = " ".join(capsys.readouterr().out.split())
    assert "(default: True)" not in texts["compare"] and "--no-progress" not in texts["compare"]
    assert "(default: )" not in texts["variants"] and "(default: False)" not in texts["horizon"]
    assert "every optimizer trains once per seed (default: [0, 1, 2])" in texts["compare"]
    assert "optimizers to compare (default: ['adamw', 'muon'])" in texts["compare"]


def test_variants_refuses_an_earlier_study_unless_overwrite(tmp_path, capsys):
    earlier = tmp_path / "study" / "runs" / "00-muon-s0" / "metrics.jsonl"
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"kind": "config"}\n')
    argv = ["variants", "large", "--out", str(tmp_path / "study"), "--data-dir", str(tmp_path)]
    err = user_error(capsys, argv)
    assert "--overwrite" in err and earlier.read_text() == '{"kind": "config"}\n'
    assert "mnist file not found" in user_error(capsys, [*argv, "--overwrite"])  # goes on


def test_unwritable_out_is_a_user_error_for_any_user(tmp_path, capsys, monkeypatch):
    import muonlab.train.files as files

    monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    out = tmp_path / "locked"
    assert "not writable" in user_error(capsys, ["train", "--out", str(out), *FAST])
