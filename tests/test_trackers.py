"""Experiment trackers (`--tracker tensorboard|wandb|none`): what each receives is what
metrics.jsonl holds, read back with the trackers' own formats."""

import argparse
import sys

import pytest
import torch

from muonlab.cli import build_parser, main
from muonlab.cli.train import config_from_args
from muonlab.report.metrics import read_jsonl
from muonlab.train.trackers import WANDB_ID_FILE, parse_trackers

TRAIN = ["train", "--preset", "tiny", "--batch-size", "2", "--block-size", "16",
         "--eval-batches", "1", "--warmup", "1", "--no-progress", "--threads", "1"]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """No W&B login (no key, no netrc), wandb's own files in tmp_path; its service stopped
    after the test."""
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    yield
    wandb.teardown()


def test_wandb_offline_run_holds_the_metrics_config_and_summary_and_resumes_its_id(
    tmp_path, offline_wandb, capsys
):
    import wandb
    from wandb_records import offline_runs, read_run

    out = tmp_path / "run"
    argv = [*TRAIN, "--tracker", "wandb", "--wandb-project", "proj", "--wandb-run-name", "r1",
            "--checkpoint-every", "2", "--eval-every", "2", "--peak-flops", "1e12",
            "--out", str(out)]
    assert main([*argv, "--steps", "2"]) == 0
    wandb.teardown()  # wandb's service writes the run's file asynchronously: wait for it
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "offline" in err[0] and str(out / "wandb") in err[0]
    (path,) = offline_runs(out)
    first = read_run(path)
    assert (first["run"].project, first["run"].display_name) == ("proj", "r1")
    records = read_jsonl(out / "metrics.jsonl")
    config, summary = records[0], records[-1]
    assert first["config"]["config"]["steps"] == config["config"]["steps"] == 2
    assert first["config"]["optimizer"] == "muon"
    rows = history_by_step(first)
    for rec in (r for r in records if "step" in r):  # every train/val number, at its step
        for key, value in rec.items():
            if key not in ("kind", "step") and isinstance(value, float):
                assert rows[rec["step"]][f"{rec['kind']}/{key}"] == pytest.approx(value)
    train = [r for r in records if r["kind"] == "train"]
    assert set(train[-1]["lr_groups"]) == {"muon", "embedding", "vector"}
    model = config["config"]["model"]  # MFU per step: 6 N + 12 L C T FLOPs per token / peak
    per_token = 6 * config["config"]["params"] + 12 * model["n_layer"] * model["n_embd"] * 16
    for rec in train:
        assert rec["mfu"] == pytest.approx(rec["tokens_per_s"] * per_token / 1e12)
    assert rows[2]["train/lr_groups/muon"] == pytest.approx(train[-1]["lr_groups"]["muon"])
    assert {"train/loss", "train/grad_norm", "train/tokens_per_s", "train/mfu",
            "val/val_loss"} <= set(rows[2])
    assert first["summary"]["final_val_loss"] == pytest.approx(summary["final_val_loss"])
    run_id = (out / WANDB_ID_FILE).read_text().strip()
    assert first["run"].run_id == run_id

    assert main([*argv, "--steps", "3", "--resume"]) == 0  # continues the same W&B run
    wandb.teardown()
    old, new = offline_runs(out)
    assert old == path
    resumed = read_run(new)
    assert resumed["run"].run_id == run_id and resumed["config"]["config"]["steps"] == 2
    final = read_jsonl(out / "metrics.jsonl")[-1]
    assert history_by_step(resumed)[3]["train/loss"] == pytest.approx(
        [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"][-1]["loss"])
    assert resumed["summary"]["final_val_loss"] == pytest.approx(final["final_val_loss"])


def history_by_step(run: dict) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for row in run["history"]:
        rows.setdefault(row["_step"], {}).update(row)
    return rows


def test_tensorboard_gets_the_metrics_and_is_the_default_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = [*TRAIN, "--steps", "2", "--eval-every", "2"]
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0  # no --tracker
    assert main([*argv, "--out", str(tmp_path / "none"), "--tracker", "none"]) == 0
    assert not (tmp_path / "none" / "tb").exists()
    older = build_parser().parse_args([*TRAIN, "--no-tensorboard"])  # recorded commands' flag
    assert config_from_args(older).trackers == ()
    both = build_parser().parse_args([*TRAIN, "--no-tensorboard", "--tracker", "tensorboard"])
    assert config_from_args(both).trackers == ()
    events = EventAccumulator(str(tmp_path / "default" / "tb")).Reload()
    records = read_jsonl(tmp_path / "default" / "metrics.jsonl")
    for rec in records:
        if rec["kind"] in ("train", "val"):
            for key in ("loss", "val_loss", "grad_norm"):
                if key in rec:
                    (point,) = [e for e in events.Scalars(f"{rec['kind']}/{key}")
                                if e.step == rec["step"]]
                    assert point.value == pytest.approx(rec[key])
    last = [r for r in records if r["kind"] == "train"][-1]
    assert events.Scalars("train/lr_groups/muon")[-1].value == pytest.approx(last["lr"])
    assert events.Scalars("summary/final_val_loss")[0].value == pytest.approx(
        records[-1]["final_val_loss"])


def test_missing_wandb_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(SystemExit) as info:
        main([*TRAIN, "--tracker", "tensorboard,wandb", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "muonkit[wandb]" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value, message", [
    ("mlflow", "unknown tracker 'mlflow'"),
    ("none,wandb", "'none' cannot be combined"),
])
def test_bad_tracker_is_one_line_exit_2(tmp_path, capsys, value, message):
    with pytest.raises(SystemExit) as info:
        main([*TRAIN, "--tracker", value, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_tracker_names_repeat_or_comma_separate():
    args = build_parser().parse_args(["train", "--tracker", "wandb,tensorboard",
                                      "--tracker", "wandb"])
    assert args.tracker == ["wandb", "tensorboard", "wandb"]
    assert parse_trackers(args.tracker) == ("wandb", "tensorboard")
    assert parse_trackers(["none"]) == ()
    with pytest.raises(argparse.ArgumentTypeError):
        from muonlab.cli.common import tracker_list

        tracker_list("tensorboard,wandbb")


def test_compare_horizon_and_variants_pass_the_trackers_to_every_run(tmp_path, monkeypatch):
    """The tracker flags reach the TrainConfig of each run (a compare run's goes to its child
    process inside its RunSpec), with the W&B run named after the run and grouped."""
    from muonlab.cli import compare as compare_cli
    from muonlab.cli import horizon as horizon_cli
    from muonlab.cli import variants as variants_cli
    from muonlab.experiments import compare, variants

    flags = ["--tracker", "tensorboard", "--wandb-project", "p", "--wandb-run-name", "g"]
    specs = []
    monkeypatch.setattr(compare, "run_isolated", lambda spec, log: specs.append(spec) or 1.0)
    args = build_parser().parse_args(["compare", "--out", str(tmp_path / "c"), *flags])
    exp = compare.Experiment(compare_cli.config_from_args(args), log=lambda _: None)
    exp.run("muon", tmp_path / "c" / "runs" / "muon-s0", 0, 1e-3, 0.02, 1e-3)
    cfg = specs[0].kwargs["train_config"]
    assert (cfg.trackers, cfg.wandb_project, cfg.wandb_group) == (("tensorboard",), "p", "g")
    assert cfg.wandb_run_name == "runs/muon-s0"

    args = build_parser().parse_args(["horizon", "--out", str(tmp_path / "h"), *flags])
    cfg = horizon_cli.config_from_args(args).train_config(8, 0, tmp_path / "h" / "x", True)
    assert (cfg.trackers, cfg.wandb_project, cfg.wandb_group) == (("tensorboard",), "p", "g")
    default = build_parser().parse_args(["horizon", "--out", str(tmp_path / "h")])
    assert horizon_cli.config_from_args(default).train_config(8, 0, tmp_path, True).trackers == ()

    configs = []
    monkeypatch.setattr(variants, "train", lambda *a, **k: configs.append(a[4]) or
                        type("R", (), {"metrics_path": None})())
    args = build_parser().parse_args(["variants", "large", "--hidden", "4", *flags])
    study = variants_cli.config_from_args(args)
    data = {"train": (torch.randn(8, 784), torch.randint(0, 10, (8,)))}
    variants.run_arm(variants.Arm("Muon", "muon"), 0, study, data, tmp_path / "v" / "00-muon-s0")
    assert (configs[0].trackers, configs[0].wandb_group) == (("tensorboard",), "g")
    assert configs[0].wandb_run_name == "large/00-muon-s0"
