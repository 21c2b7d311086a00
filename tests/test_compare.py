"""A tiny end-to-end `muonkit compare`: real training runs, report numbers equal the JSONL."""

import json
from pathlib import Path

import numpy as np
import pytest

from muonlab.cli import main
from muonlab.cli.compare import config_from_args
from muonlab.report.metrics import load_run
from muonlab.train.gpt import gpt_optimizer


def test_tiny_compare_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--preset",
        "tiny",
        "--steps",
        "12",
        "--seeds",
        "0",
        "1",
        "--warmup",
        "2",
        "--eval-every",
        "6",
        "--eval-batches",
        "2",
        "--batch-size",
        "4",
        "--block-size",
        "16",
        "--lr-sweep",
        "--sweep-steps",
        "4",
        "--adamw-lrs",
        "1e-3",
        "2e-3",
        "--sweep-extend",
        "1",
        "--muon-lrs",
        "0.02",
        "--tracker", "none",
        "--no-isolate",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "report.md" in capsys.readouterr().out
    runs = {p.parent.name: load_run(p) for p in (out / "runs").glob("*/metrics.jsonl")}
    assert sorted(runs) == ["adamw-s0", "adamw-s1", "muon-s0", "muon-s1"]
    # same data order and initial weights per seed: identical val loss at step 0
    assert runs["adamw-s0"].val[0]["val_loss"] == runs["muon-s0"].val[0]["val_loss"]
    settings = json.loads((out / "settings.json").read_text())
    chosen = settings["chosen_lr"]
    sweep = {p.parent.name: load_run(p) for p in (out / "sweep").glob("*/metrics.jsonl")}
    best_adamw = min(
        (r.val[-1]["val_loss"], r.config["config"]["optimizer_options"]["lr"])
        for n, r in sweep.items()
        if n.startswith("adamw")
    )[1]
    assert chosen["adamw"] == best_adamw
    assert runs["muon-s0"].config["config"]["optimizer_options"]["lr"] == best_adamw
    text = (out / "report.md").read_text()
    for opt in ("adamw", "muon"):  # seed 0 tuned the LRs: seed 1 alone reports
        assert f"{opt} {runs[f'{opt}-s1'].val[-1]['val_loss']:.3f} (n=1)" in text
    assert "seed 0 tuned the LRs and is left out" in text
    assert (out / "curves.png").stat().st_size > 10_000
    note = settings["sweeps"]["adamw"][0]["note"]
    assert note in text and ("extended by" in note) == bool(settings["sweeps"]["adamw"][0]["added"])
    assert "1-minute load average" in text and "thread(s) per run" in text


def user_error(capsys, argv) -> str:
    """Run ``muonkit argv``; assert exit code 2 and one line on stderr; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_compare_bad_input(tmp_path, capsys):
    assert "factor 2" in user_error(capsys, ["compare", "--adamw-lrs", "3e-4", "1e-3",
                                             "--out", str(tmp_path)])
    (tmp_path / "runs").mkdir()
    assert "--overwrite" in user_error(capsys, ["compare", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["compare", "--preset", "huge", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["compare", "--optimizers", "sgd", "--out", str(tmp_path)])


def test_unreadable_data_is_one_line_before_any_run(tmp_path, capsys):
    """The parent loads the data first: a missing, empty or binary file is one line, exit 2,
    and nothing is written."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    for data, expected in ((empty, "empty.txt is empty"), (binary, "weights.bin is not UTF-8"),
                           (tmp_path / "missing.txt", "missing.txt")):
        out = tmp_path / "o"
        argv = ["compare", "--steps", "2", "--seeds", "0", "--optimizers", "adamw",
                "--data", str(data), "--out", str(out)]
        assert expected in user_error(capsys, argv)
        assert not out.exists()


def test_a_child_runs_user_error_is_one_line(tmp_path):
    """A run that fails in its own process with a user error (here: its data file is gone)
    raises a one-line ValueError naming the run and the cause, not the child's traceback."""
    from muonlab.experiments.runs import RunSpec, run_isolated
    from muonlab.train.loop import TrainConfig

    cfg = TrainConfig(steps=2, out_dir=str(tmp_path / "r"), trackers=(), progress=False)
    spec = RunSpec(dict(optimizer="adamw", data=str(tmp_path / "gone.txt"), train_config=cfg),
                   "r", threads=1)
    with pytest.raises(ValueError) as info:
        run_isolated(spec, lambda _: None, poll_s=0.2)
    message = str(info.value)
    assert "gone.txt" in message and "Traceback" not in message and "\n" not in message

def test_edge_pick_is_extended_and_aux_lr_reaches_the_hybrids_adamw_groups(tmp_path, monkeypatch):
    """The runner is replaced by one that builds the real optimizer from what compare passes
    and scores it by its groups' LRs: the AdamW (aux) groups must carry --aux-lrs' values."""
    from types import SimpleNamespace

    from muonlab.cli import build_parser
    from muonlab.experiments import compare
    from muonlab.models.gpt import GPT, preset_config

    model = GPT(preset_config("tiny", vocab_size=65))

    def fake_train_gpt(**kwargs):
        opt = gpt_optimizer(model, kwargs["optimizer"], **kwargs["optimizer_options"])
        adamw = {g["lr"] for g in opt.param_groups if not g.get("use_muon", False)}
        muon = {g["lr"] for g in opt.param_groups if g.get("use_muon", False)}
        assert len(adamw) == 1 and len(muon) == 1
        aux, mlr = adamw.pop(), muon.pop()
        return SimpleNamespace(final_val_loss=np.log2(aux / 8e-3) ** 2 + np.log2(mlr / 0.02) ** 2)

    monkeypatch.setattr(compare, "run_in_process",
                        lambda spec, log: fake_train_gpt(**spec.kwargs).final_val_loss)
    args = build_parser().parse_args([
        "compare", "--optimizers", "muon", "--lr", "0.5", "--aux-lr", "1e-3", "--aux-lrs",
        "1e-3", "2e-3", "--muon-lrs", "0.01", "0.02", "0.04", "--lr-sweep", "--no-isolate",
        "--steps", "1000", "--out", str(tmp_path),
    ])
    exp = compare.Experiment(config_from_args(args), log=lambda _: None)
    chosen, record = compare.tune(exp)
    assert chosen["muon"]["muon_lr"] == 0.02 and chosen["muon"]["aux_lr"] == 8e-3
    muon_stage, aux_stage = record["muon"]
    assert muon_stage["added"] == [] and muon_stage["losses"][0.01] == 9 + 1  # at aux 1e-3
    assert aux_stage["added"] == [4e-3, 8e-3]  # ... 2e-3 was best at the edge: extended twice
    assert "extended by 0.004, 0.008" in aux_stage["note"]
    from muonlab.report.compare import sweep_notes

    assert any("extended by 0.004, 0.008" in line for line in sweep_notes({"sweeps": record}))


def test_isolated_run_progress_skip_and_resume(tmp_path):
    """A run in its own process prints a line per evaluation; a finished run is skipped; a
    run with a checkpoint resumes and ends where an uninterrupted one does."""
    import dataclasses

    from muonlab.experiments.runs import RunSpec, run_isolated, run_status
    from muonlab.train.gpt import train_gpt
    from muonlab.train.loop import TrainConfig

    def spec(out, trackers=(), **changes):
        cfg = TrainConfig(steps=4, eval_every=2, out_dir=str(out), trackers=trackers,
                          progress=False, checkpoint_every=2, warmup_steps=1, **changes)
        kwargs = dict(optimizer="muon", batch_size=2, block_size=8, eval_batches=1,
                      model_overrides={"n_layer": 1}, train_config=cfg)
        return RunSpec(kwargs, out.name, threads=1, log_rms=True)

    lines = []
    full = run_isolated(spec(tmp_path / "a", ["tensorboard"]), lines.append, poll_s=0.2)
    assert list((tmp_path / "a" / "tb").glob("events.out.tfevents.*"))  # the child's tracker
    assert [ln.split(":")[0] for ln in lines] == [f"[a] step {s}/4" for s in (0, 2, 4)]
    assert run_status(tmp_path / "a", 4) == "finished"
    lines.clear()
    assert run_isolated(spec(tmp_path / "a"), lines.append) == full and lines == []
    part = spec(tmp_path / "b", stop_at=2)
    train_gpt(**part.kwargs)
    assert run_status(tmp_path / "b", 4) == "resumable"
    assert run_isolated(spec(tmp_path / "b"), lines.append, poll_s=0.2) == full
    assert lines[0].startswith("[b] resuming")
    rms = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rms = [r for r in rms if r["kind"] == "rms"]
    assert [r["step"] for r in rms] == [0, 2, 4] and rms[-1]["update_rms"] > 0
    assert dataclasses.asdict(part.kwargs["train_config"])["steps"] == 4


def test_sweep_full_topk_reruns_the_best_at_full_length_and_chooses_among_them(
    tmp_path, monkeypatch
):
    """Short runs favour lr 0.04, full-length runs 0.02: with --sweep-full-topk 2 the choice
    is made at full length, and that run becomes seed 0's compared run."""
    from types import SimpleNamespace

    from muonlab.cli import build_parser
    from muonlab.experiments import compare

    def fake_train_gpt(**kwargs):
        cfg = kwargs["train_config"]
        best = 0.04 if cfg.steps < 800 else 0.02
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out_dir) / "marker").write_text(str(cfg.steps))
        lr = kwargs["optimizer_options"]["muon_lr"]
        return SimpleNamespace(final_val_loss=float(np.log2(lr / best) ** 2))

    monkeypatch.setattr(compare, "run_in_process",
                        lambda spec, log: fake_train_gpt(**spec.kwargs).final_val_loss)
    args = build_parser().parse_args([
        "compare", "--optimizers", "muon", "--muon-lrs", "0.01", "0.02", "0.04", "0.08",
        "--lr-sweep", "--sweep-full-topk", "2", "--no-isolate", "--steps", "800",
        "--out", str(tmp_path),
    ])
    exp = compare.Experiment(config_from_args(args), log=lambda _: None)
    chosen, record = compare.tune(exp)
    assert chosen["muon"]["muon_lr"] == 0.02
    assert [r["name"] for r in record["muon_full"]] == ["muon-lr0.04-aux0.0006",
                                                        "muon-lr0.02-aux0.0006"]
    assert (tmp_path / "runs" / "muon-s0" / "marker").read_text() == "800"
