"""Resume refuses changed settings (issue 22, point 3): every flag that changes the result must
equal the checkpoint's run, else one line per differing flag; flags that cannot change it
(progress, trackers, --steps to train on, ...) may differ and the run continues bit for bit."""

from __future__ import annotations

import json
import shutil

import pytest

from muonlab.cli import build_parser, main
from muonlab.cli.train import config_from_args
from muonlab.train.files import RESUME_MAY_DIFFER, resume_differences
from muonlab.train.gpt import train_gpt

BASE = ["--preset", "tiny", "--batch-size", "2", "--block-size", "8", "--eval-batches", "1",
        "--eval-every", "0", "--warmup", "1", "--steps", "4", "--checkpoint-every", "2",
        "--threads", "1"]


def train(out, *flags):
    return main(["train", "--out", str(out), *BASE, *flags])


@pytest.fixture
def run(tmp_path):
    """A 4-step run whose session stopped at its step-2 checkpoint, made with BASE's flags."""
    out = tmp_path / "run"
    args = build_parser().parse_args(["train", "--out", str(out), *BASE, "--no-progress",
                                      "--tracker", "none"])
    gpt = config_from_args(args)
    cfg = gpt.train_config("muon", str(out), 0, checkpoint_every=2, stop_at=2)
    train_gpt(**gpt.train_gpt_kwargs("muon", cfg))
    return out


@pytest.fixture
def text_with_other_vocabulary(tmp_path):
    path = tmp_path / "other.txt"
    path.write_text("abcdefgh " * 400)
    return str(path)


@pytest.mark.parametrize("flags, line", [
    (["--muon-lr", "0.05"], "--muon-lr: checkpoint 0.02, given 0.05"),
    (["--batch-size", "3"], "--batch-size: checkpoint 2, given 3"),
    (["--seed", "1"], "--seed: checkpoint 0, given 1"),
    (["--preset", "small"], "--preset: checkpoint 'tiny', given 'small'"),
    (["--rope"], "--rope: checkpoint False, given True"),
    (["--optimizer", "adamw"], "--optimizer: checkpoint 'muon', given 'adamw'"),
    (["--warmup", "3"], "--warmup: checkpoint 1, given 3"),
    (["--data", "OTHER"], "--data (its vocabulary): checkpoint 65, given 9"),
])  # fmt: skip
def test_a_changed_flag_is_refused_in_one_line_each(run, capsys, flags, line,
                                                    text_with_other_vocabulary):
    flags = [text_with_other_vocabulary if f == "OTHER" else f for f in flags]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        train(run, "--resume", "--no-progress", "--tracker", "none", *flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert line in err.splitlines()[1:][0] or any(line in x for x in err.splitlines()), err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_several_changed_flags_give_a_line_each(run, capsys):
    with pytest.raises(SystemExit):
        train(run, "--resume", "--no-progress", "--muon-lr", "0.05", "--seed", "3")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("muonkit train: error: cannot resume the run in")
    assert sorted(x.strip() for x in err[1:]) == [
        "--muon-lr: checkpoint 0.02, given 0.05", "--seed: checkpoint 0, given 3"]


def test_flags_that_cannot_change_the_result_may_differ(run, tmp_path):
    """Progress bar and trackers differ on resume; the run ends where one uninterrupted run
    with the first flags ends."""
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    assert train(resumed, "--resume", "--tracker", "tensorboard") == 0
    whole = tmp_path / "whole"
    assert train(whole, "--no-progress", "--tracker", "none") == 0
    final = [json.loads(x)["final_val_loss"] for x in
             ((d / "metrics.jsonl").read_text().splitlines()[-1] for d in (resumed, whole))]
    assert final[0] == final[1]


def test_resume_differences_skips_what_may_differ_and_what_the_record_lacks():
    recorded = {"optimizer": "muon", "config": {"steps": 4, "progress": False, "seed": 0,
                                                "optimizer_options": {"muon_lr": 0.02}}}
    given = {"optimizer": "muon", "steps": 8, "progress": True, "seed": 0, "new_field": 1,
             "optimizer_options": {"muon_lr": 0.02, "betas": (0.9, 0.95)}}
    assert resume_differences(recorded, given) == []
    assert {"steps", "progress", "trackers", "out_dir"} <= RESUME_MAY_DIFFER
    given["optimizer_options"]["muon_lr"] = 0.03
    assert resume_differences(recorded, given) == ["--muon-lr: checkpoint 0.02, given 0.03"]
