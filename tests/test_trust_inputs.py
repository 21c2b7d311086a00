"""Bad inputs cost nothing (issue 22, points 2 and 7): data is validated before a run's files
are touched, ``--overwrite`` keeps the old run until the new one has taken a step, messages
speak in flags, and a misspelt keyword is a TypeError."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from muonkit import hybrid_param_groups
from muonlab.cli import main
from muonlab.train.files import PARKED
from muonlab.train.loop import TrainConfig, train

FAST = ["--preset", "tiny", "--batch-size", "2", "--block-size", "8", "--eval-batches", "1",
        "--eval-every", "0", "--warmup", "1", "--no-progress", "--tracker", "none"]


def cli_train(out, *flags):
    return main(["train", "--optimizer", "adamw", "--out", str(out), *FAST, *flags])


def one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def files(out) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def token_dir(path, bad_at: int | None, vocab: int = 65):
    path.mkdir()
    ids = (np.arange(4000) % vocab).astype(np.uint16)
    if bad_at is not None:
        ids[bad_at] = vocab + 5
    ids.tofile(path / "train.bin")
    (np.arange(2000) % vocab).astype(np.uint16).tofile(path / "val.bin")
    (path / "meta.json").write_text(json.dumps({"vocab_size": vocab, "tokenizer": "char"}))
    return path


def test_out_of_vocabulary_token_is_one_line_and_overwrite_keeps_the_old_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_train(out, "--steps", "2", "--checkpoint-every", "2") == 0
    before = files(out)
    data = token_dir(tmp_path / "bad", bad_at=1234)
    err = one_line_error(capsys, ["train", "--optimizer", "adamw", "--out", str(out), *FAST,
                                  "--steps", "2", "--data", str(data), "--overwrite"])
    assert "train.bin" in err and "token id 70 at position 1234" in err and "65" in err
    assert files(out) == before and not (out / PARKED).exists()


class FailAtFirstStep(Exception):
    pass


def test_overwrite_puts_the_old_run_back_when_the_new_one_fails_before_a_step(tmp_path):
    """Any failure before the new run's first step (here its loss) leaves the old run as it was;
    after a step the old run is gone."""
    out = tmp_path / "run"
    model = torch.nn.Linear(3, 1)
    batches = [(torch.randn(4, 3), torch.randn(4, 1))] * 2

    class Batches:
        def __init__(self):
            self.i = 0

        def next_batch(self):
            self.i += 1
            return batches[self.i % 2]

    def mse(m, batch):
        return torch.nn.functional.mse_loss(m(batch[0]), batch[1])

    def failing(m, batch):
        raise FailAtFirstStep

    cfg = TrainConfig(steps=2, out_dir=str(out), progress=False, trackers=())
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), Batches(), mse, cfg)
    before = files(out)
    again = TrainConfig(steps=3, out_dir=str(out), progress=False, trackers=(), overwrite=True)
    with pytest.raises(FailAtFirstStep):
        train(model, torch.optim.SGD(model.parameters(), lr=0.1), Batches(), failing, again)
    assert files(out) == before and not (out / PARKED).exists()
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), Batches(), mse, again)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["steps"] == 3 and not (out / PARKED).exists()


def test_a_run_without_checkpoint_is_not_told_to_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_train(out, "--steps", "2") == 0  # no --checkpoint-every: nothing to resume
    err = one_line_error(capsys, ["train", "--optimizer", "adamw", "--out", str(out), *FAST,
                                  "--steps", "2"])
    assert "--resume" not in err and "--overwrite" in err and "no checkpoint" in err
    err = one_line_error(capsys, ["train", "--optimizer", "adamw", "--out", str(out), *FAST,
                                  "--steps", "4", "--resume"])
    assert "holds no checkpoint" in err and "--checkpoint-every" in err
    assert "resume=True" not in err and "checkpoint_every" not in err


def test_too_large_batch_speaks_in_flags(tmp_path, capsys):
    err = one_line_error(capsys, ["train", "--optimizer", "adamw", "--out", str(tmp_path / "r"),
                                  *FAST, "--batch-size", "100000"])
    assert "--batch-size" in err and "--block-size" in err and "batch_size" not in err


def test_misspelt_hybrid_keyword_is_a_type_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(TypeError, match="'muon_lrr'.*did you mean muon_lr"):
        hybrid_param_groups(model, muon_lrr=0.1)
    with pytest.raises(TypeError, match="'ns_stepz'"):
        hybrid_param_groups(model, ns_stepz=3)
    groups = hybrid_param_groups(model, ns_steps=3, rank=4)  # Muon and variant options pass
    assert groups[0]["ns_steps"] == 3 and groups[0]["rank"] == 4
