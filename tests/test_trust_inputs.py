"""Bad inputs cost nothing (issue 22, points 2 and 7): data is validated before a run's files
are touched, ``--overwrite`` keeps the old run until the new one has taken a step, messages
speak in flags, and a misspelt keyword is a TypeError."""

from __future__ import annotations

import collections
import json
import pickle

import numpy as np
import pytest
import torch
from test_cli import FAST
from test_cli import train as cli_train
from test_cli import user_error as one_line_error

from muonkit import hybrid_param_groups
from muonkit.distributed.env import TORCHRUN_VARS
from muonlab.data.text import load_text
from muonlab.experiments.horizon import HorizonConfig, prepare_out
from muonlab.experiments.variants_gpt import VariantGPTConfig
from muonlab.models.gpt import GPT, preset_config
from muonlab.train.files import PARKED
from muonlab.train.gpt import gpt_optimizer
from muonlab.train.loop import TrainConfig, train


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
    assert "holds no checkpoint" in err and "only metrics.jsonl" in err  # what is there
    assert "--checkpoint-every" in err and "--overwrite" in err
    assert "resume=True" not in err and "checkpoint_every" not in err


def test_resume_where_there_is_no_run_says_so_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    err = one_line_error(capsys, ["train", "--optimizer", "adamw", "--out", str(out), *FAST,
                                  "--resume"])
    assert "holds no run to continue" in err and "leave out --resume" in err
    assert "--overwrite" not in err and not out.exists()


def test_too_large_batch_speaks_in_flags(tmp_path, capsys):
    err = one_line_error(capsys, ["train", "--optimizer", "adamw", "--out", str(tmp_path / "r"),
                                  *FAST, "--batch-size", "100000"])
    assert "--batch-size" in err and "--block-size" in err and "batch_size" not in err


def test_bad_token_directories_are_one_line_naming_the_file(tmp_path, capsys):
    """Every way a token directory can be unreadable is one line naming the file, before
    anything is written: an odd-sized .bin, meta.json that is not JSON, not a mapping, or
    with a vocab_size that is not an integer."""
    cases = {
        "odd": ("train.bin", b"\x01", "odd number"),
        "json": ("meta.json", b'{"vocab_size": 65', "is not valid JSON"),
        "list": ("meta.json", b"[65]", "must hold a mapping"),
        "vocab": ("meta.json", b'{"vocab_size": "65"}', "vocab_size must be an integer"),
    }
    for name, (file, content, expected) in cases.items():
        data = token_dir(tmp_path / name, bad_at=None)
        with open(data / file, "ab" if file.endswith(".bin") else "wb") as f:
            f.write(content)
        out = tmp_path / f"run-{name}"
        err = one_line_error(capsys, ["train", "--out", str(out), *FAST, "--data", str(data)])
        assert str(data / file) in err and expected in err, err
        assert not out.exists()


def test_a_bin_file_given_as_data_is_refused_not_read_as_text(tmp_path, capsys):
    """Small uint16 ids are valid UTF-8 bytes: a .bin passed as --data would train on its
    bytes as characters. It is refused (NUL bytes are not text), naming the directory to
    pass, and with --overwrite the old run stays."""
    out = tmp_path / "run"
    assert cli_train(out, "--steps", "2", "--checkpoint-every", "2") == 0
    before = files(out)
    data = token_dir(tmp_path / "tokens", bad_at=None)
    err = one_line_error(capsys, ["train", "--out", str(out), *FAST, "--steps", "2",
                                  "--data", str(data / "train.bin"), "--overwrite"])
    assert "holds NUL bytes" in err and f"--data {data}" in err
    assert files(out) == before and not (out / PARKED).exists()


def test_binary_text_file_is_refused(tmp_path):
    binary = tmp_path / "ids.dat"
    (np.arange(100) % 60).astype(np.uint16).tofile(binary)  # NUL bytes, valid UTF-8
    with pytest.raises(ValueError, match="ids.dat holds NUL bytes"):
        load_text(binary)


def test_nanogpt_meta_pkl_gives_the_vocabulary_and_is_read_as_plain_data(tmp_path):
    """nanoGPT's shakespeare_char directory has meta.pkl, not meta.json: its vocabulary (65,
    not GPT-2's 50304) bounds the ids and decodes them; a pickle that names a class is
    refused, not run."""
    data = token_dir(tmp_path / "char", bad_at=None)
    (data / "meta.json").unlink()
    itos = {i: chr(ord("A") + i) for i in range(65)}
    (data / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 65, "itos": itos,
                                                  "stoi": {c: i for i, c in itos.items()}}))
    tokens = load_text(data)
    assert tokens.vocab_size == 65 and tokens.tokenizer == "char"
    assert tokens.decode([0, 1, 64]) == "AB" + chr(ord("A") + 64)
    ids = np.fromfile(data / "train.bin", dtype=np.uint16)
    ids[7] = 65
    ids.tofile(data / "train.bin")
    with pytest.raises(ValueError, match=r"token id 65 at position 7 .* size 65 .*meta.pkl"):
        load_text(data)
    (data / "meta.pkl").write_bytes(pickle.dumps(collections.OrderedDict(vocab_size=65)))
    with pytest.raises(ValueError, match="meta.pkl cannot be read.*collections"):
        load_text(data)


def test_sample_without_a_decoder_fails_before_training(tmp_path, capsys):
    """--sample decodes after training: data it cannot decode (char ids without itos) is
    refused before the run starts, not after it has trained."""
    data = token_dir(tmp_path / "tokens", bad_at=None)  # meta.json without itos
    out = tmp_path / "run"
    err = one_line_error(capsys, ["train", "--out", str(out), *FAST, "--data", str(data),
                                  "--sample", "5"])
    assert "cannot be decoded" in err and "--sample" in err
    assert not out.exists()


def test_compare_overwrite_keeps_the_old_experiment_when_a_batch_cannot_fit(tmp_path, capsys):
    out = tmp_path / "cmp"
    earlier = out / "runs" / "adamw-s0"
    earlier.mkdir(parents=True)
    (earlier / "metrics.jsonl").write_text('{"kind": "config"}\n')
    err = one_line_error(capsys, ["compare", "--out", str(out), "--overwrite", "--no-isolate",
                                  "--optimizers", "adamw", "--seeds", "0", "--steps", "2",
                                  "--batch-size", "100000", "--block-size", "64"])
    assert "--batch-size" in err and "larger than" in err
    assert (earlier / "metrics.jsonl").read_text() == '{"kind": "config"}\n'


def test_study_messages_name_flags_and_bad_batches_write_nothing(tmp_path):
    """A study rerun with other settings names each as its flag, with both values; a batch
    that does not fit the data fails before the study directory is made."""
    out = tmp_path / "study"
    with pytest.raises(ValueError, match="--batch-size .* larger than"):
        prepare_out(HorizonConfig(out=str(out), batch_size=100_000), "x")
    assert not out.exists()
    prepare_out(HorizonConfig(out=str(out), batch_size=2, horizons=[20]), "x")
    with pytest.raises(ValueError, match=r"--batch-size 2 there, 3 given; --horizons "
                                         r"\[20\] there, \[30\] given\)"):
        prepare_out(HorizonConfig(out=str(out), batch_size=3, horizons=[30]), "x")
    with pytest.raises(ValueError, match="--horizons must be at least --evals-per-run"):
        HorizonConfig(horizons=[5], evals_per_run=10)
    with pytest.raises(ValueError, match="--steps must be at least the evaluations per run"):
        VariantGPTConfig(horizons=[5], evals_per_run=10)


def test_launch_and_device_errors_speak_in_flags(tmp_path, capsys, monkeypatch):
    """--parallel outside torchrun, --replicate without hsdp (ignored before) and a CUDA device
    on a machine without one: one line in flags, nothing written."""
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "run"
    err = one_line_error(capsys, ["train", "--out", str(out), *FAST, "--parallel", "ddp"])
    assert "--parallel ddp runs one process per rank under torchrun" in err
    assert "parallel='ddp'" not in err and "compute_init" not in err
    err = one_line_error(capsys, ["train", "--out", str(out), *FAST, "--replicate", "2"])
    assert "--replicate 2 applies to --parallel hsdp" in err
    if not torch.cuda.is_available():
        err = one_line_error(capsys, ["train", "--out", str(out), *FAST, "--device", "cuda"])
        assert "--device cuda: CUDA is not available" in err and "device=" not in err
    assert not out.exists()


def test_misspelt_optimizer_and_model_keywords_are_type_errors():
    model = GPT(preset_config("tiny", vocab_size=65, n_layer=1))
    for kind in ("adamw", "muon"):
        with pytest.raises(TypeError, match=r"build_optimizer\(\) .*'momentun'.*momentum"):
            gpt_optimizer(model, kind, momentun=0.9)
    with pytest.raises(TypeError, match="'n_layers'; did you mean n_layer"):
        preset_config("tiny", n_layers=2)


def test_misspelt_hybrid_keyword_is_a_type_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(TypeError, match="'muon_lrr'.*did you mean muon_lr"):
        hybrid_param_groups(model, muon_lrr=0.1)
    with pytest.raises(TypeError, match="'ns_stepz'"):
        hybrid_param_groups(model, ns_stepz=3)
    groups = hybrid_param_groups(model, ns_steps=3, rank=4)  # Muon and variant options pass
    assert groups[0]["ns_steps"] == 3 and groups[0]["rank"] == 4
