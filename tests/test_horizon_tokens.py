"""`muonkit horizon` at token budgets: horizons in tokens per parameter, held-out report seeds,
the machine class pinned, and the plan printed before anything runs."""

import json

import pytest

from muonkit import hardware
from muonlab.cli import main
from muonlab.experiments import horizon
from muonlab.experiments.horizon import (
    HorizonConfig,
    PlannedCell,
    Study,
    plan_text,
    planned_cells,
    prepare_out,
)
from muonlab.experiments.runs import run_in_process
from muonlab.report.horizon import build_horizon_report
from muonlab.report.metrics import load_run

# a GPT of about 4,300 parameters: a token per parameter is a few steps of 2 x 8 tokens
SMALL = dict(batch_size=2, block_size=8, eval_batches=1, evals_per_run=1,
             model_overrides={"n_layer": 1, "n_embd": 16, "n_head": 2})


def test_tokens_per_param_set_the_steps_of_each_run_on_a_built_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(4):
        (texts / f"{i}.txt").write_text(f"text number {i}, " * 20)
    corpus = tmp_path / "corpus"
    assert main(["data", "build-corpus", "--from", str(texts), "--out", str(corpus),
                 "--val-every", "2"]) == 0
    sha = json.loads((corpus / "manifest.json").read_text())["sha256"]
    cfg = HorizonConfig(out=str(tmp_path / "h"), tokens_per_param=[0.01, 0.03], seeds=[1],
                        contenders=["muon-seed"], data=str(corpus), **SMALL)
    out = prepare_out(cfg, "muonkit horizon (test)")
    Study(cfg, log=lambda _: None).run_all()
    study = json.loads((out / "study.json").read_text())
    assert study["tokens_per_param"] == [0.01, 0.03] and study["horizons"] == cfg.horizons
    for tpp, h in zip([0.01, 0.03], cfg.horizons, strict=True):
        config = load_run(out / f"h{h}" / "muon-seed" / "lr0.02-s1" / "metrics.jsonl").config
        run = config["config"]
        tokens_per_step = run["batch_size"] * run["model"]["block_size"]
        assert run["steps"] == h == round(tpp * run["params"] / tokens_per_step)
        assert study["params"] == run["params"] and study["tokens_per_step"] == 16
        assert run["role"] == "report"
    assert study["horizon_tokens_per_param"] == [
        round(h * 16 / study["params"], 4) for h in cfg.horizons]
    train_tokens = config["config"]["data"]["train_tokens"]  # as the runs recorded it
    assert study["horizon_epochs"] == [round(h * 16 / train_tokens, 4) for h in cfg.horizons]
    build_horizon_report(out)
    text = (out / "report.md").read_text()
    assert f"(corpus sha256 {sha}, as the runs recorded)" in text
    assert f"{cfg.horizons[1]} steps ({study['horizon_tokens_per_param'][1]:.3g} tokens/param)" \
        in text


def test_the_machine_class_is_pinned(tmp_path):
    cfg = HorizonConfig(out=str(tmp_path / "h"), horizons=[2], contenders=["muon-seed"],
                        threads=1, **SMALL)
    prepare_out(cfg, "x")
    study = json.loads((tmp_path / "h" / "study.json").read_text())
    assert study["machine_class"] == hardware.machine_class("cpu", 1)
    other = HorizonConfig(**{**cfg.__dict__, "threads": 2})
    with pytest.raises(ValueError, match="the machine class"):
        prepare_out(other, "x")


def test_the_tuning_seed_is_not_a_report_seed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["horizon", "--tune-seed", "1", "--seeds", "1", "2", "--plan"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--tune-seed 1 is also in --seeds" in err


def test_horizons_and_tokens_per_param_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["horizon", "--horizons", "10", "--tokens-per-param", "2,20", "--plan"])
    assert exit_info.value.code == 2


def test_the_plan_counts_every_run():
    cfg = HorizonConfig(horizons=[10, 20], contenders=["muon", "muon-seed"], seeds=[1, 2, 3],
                        grid_points=3, sweep_extend=2)
    # muon takes AdamW's LR: AdamW is tuned too; muon-seed is not tuned (report seeds only)
    assert planned_cells(cfg) == [
        PlannedCell(h, name, tune, extension, 3) for h in (10, 20)
        for name, tune, extension in (("adamw", 3, 2), ("muon", 3, 2), ("muon-seed", 0, 0))]


def test_the_plan_estimates_hours_from_the_measured_step_times():
    cfg = HorizonConfig(horizons=[100, 1000], contenders=["adamw"], seeds=[1, 2],
                        grid_points=3, sweep_extend=1, evals_per_run=10, eval_batches=3,
                        threads=2, jobs=2)
    budget = {"params": 1000, "tokens_per_step": 50, "horizon_tokens_per_param": [5, 50],
              "horizon_epochs": [0.5, 5]}
    text = plan_text(cfg, budget, {"adamw": 0.36})
    # a run: (steps + 11 evaluations x 3 batches / 3) x 0.36 s; 5 runs per horizon (+1)
    wall = 5 * (100 + 11) * 0.36 + 5 * (1000 + 11) * 0.36
    more = (100 + 11) * 0.36 + (1000 + 11) * 0.36
    assert "runs: 10 (up to 12 with every sweep extension)" in text
    cpu, cpu_max = 2 * wall / 3600, 2 * (wall + more) / 3600  # x 2 threads
    assert f"estimated CPU time {cpu:.1f} h (up to {cpu_max:.1f} h)" in text
    assert f"wall time {wall / 3600 / 2:.1f} h at --jobs 2" in text


def test_plan_prints_the_runs_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "h"
    assert main(["horizon", "--out", str(out), "--tokens-per-param", "0.01,0.03", "--seeds",
                 "1", "--contenders", "muon-seed", "--batch-size", "2", "--block-size", "8",
                 "--evals-per-run", "1", "--eval-batches", "1", "--plan"]) == 0
    text = capsys.readouterr().out
    assert "report seeds [1]" in text and "estimated CPU time" in text and "muon-seed" in text
    assert not out.exists()


def test_longer_token_budgets_extend_a_study_and_other_budgets_do_not(tmp_path):
    """A study in tokens per parameter continues with budgets added after its own (and the
    steps they set); a budget changed or inserted is another study."""
    saved = tmp_path / "study.json"
    saved.write_text(json.dumps({"seeds": [1, 2], "tokens_per_param": [2.0, 6.0],
                                 "horizons": [20, 60]}))
    longer = HorizonConfig(seeds=[1, 2], tokens_per_param=[2, 6, 20])
    assert horizon.extended(saved, longer) == ["seeds", "tokens_per_param", "horizons"]
    assert "tokens_per_param" not in horizon.extended(
        saved, HorizonConfig(seeds=[1, 2, 3], tokens_per_param=[2, 20]))
    assert horizon.extended(saved, HorizonConfig(seeds=[2, 3], tokens_per_param=[6, 20])) == []
