"""`muonkit horizon`'s opt-in sweeps: LR x weight decay for the Muon contenders and LR x beta2
for AdamW (--wd-grid, --beta2-grid), and refinement rounds (--sweep-refine); none changes a
study that does not ask for it."""

import json
import math

import pytest

from muonlab.cli import build_parser
from muonlab.cli.horizon import config_from_args
from muonlab.experiments import horizon
from muonlab.experiments.horizon import HorizonConfig, Study, planned_cells, prepare_out
from muonlab.experiments.runs import run_in_process
from muonlab.report.horizon import build_horizon_report
from muonlab.report.metrics import load_run

TINY = dict(batch_size=2, block_size=8, eval_batches=1, evals_per_run=2,
            model_overrides={"n_layer": 1}, grid_points=2, sweep_extend=0)


def test_lr_x_weight_decay_and_lr_x_beta2_sweeps_run_and_are_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    cfg = HorizonConfig(out=str(tmp_path / "h"), horizons=[4], tune_seed=0, seeds=[1],
                        contenders=["adamw", "normuon"], wd_grid=[0.0, 0.1],
                        beta2_grid=[0.9, 0.95], **TINY)
    out = prepare_out(cfg, "muonkit horizon (test)")
    study = json.loads((out / "study.json").read_text())
    assert study["wd_grid"] == [0.0, 0.1] and study["beta2_grid"] == [0.9, 0.95]
    assert "sweep_refine" not in study
    Study(cfg, log=lambda _: None).run_all()
    sweeps = json.loads((out / "sweeps.json").read_text())["4"]
    for name, label, knob in (("adamw", "b2", "beta2"), ("normuon", "wd", "muon weight decay")):
        entry = sweeps[name]
        assert entry["knob"] == knob and len(entry["losses"]) == 2 * 2
        lr, value = entry["best"], entry["best_knob"]
        losses = {(x, v): loss for x, v, loss in entry["losses"]}
        assert losses[(lr, value)] == min(losses.values())
        assert f"the best is LR {lr:g} with {knob} {value:g}" in entry["note"]
        report_run = load_run(out / "h4" / name / f"lr{lr:g}-{label}{value:g}-s1"
                              / "metrics.jsonl")
        options = report_run.config["config"]["optimizer_options"]
        assert (options["betas"][1] if name == "adamw" else options["muon_weight_decay"]) \
            == value
        tuned = load_run(out / "h4" / name / f"lr{lr:g}-{label}{value:g}-s0" / "metrics.jsonl")
        assert tuned.val[-1]["val_loss"] == pytest.approx(losses[(lr, value)])
    # the hybrid's AdamW groups take AdamW's LR (beta2 stays 0.95)
    normuon = load_run(next((out / "h4" / "normuon").glob("*-s1")) / "metrics.jsonl")
    assert normuon.config["config"]["optimizer_options"]["lr"] == sweeps["adamw"]["best"]
    build_horizon_report(out)
    text = (out / "report.md").read_text()
    wd = sweeps["normuon"]
    assert f"(lr {wd['best']:g}, muon weight decay {wd['best_knob']:g})" in text
    assert "Status: complete" in text and wd["note"] in text


def test_the_flags_parse_comma_lists_and_a_default_study_records_none_of_them(tmp_path):
    args = build_parser().parse_args([
        "horizon", "--out", str(tmp_path), "--wd-grid", "0,0.05", "0.1", "--beta2-grid",
        "0.95,0.99", "--sweep-refine", "2"])
    cfg = config_from_args(args)
    assert cfg.wd_grid == [0.0, 0.05, 0.1] and cfg.beta2_grid == [0.95, 0.99]
    assert cfg.sweep_refine == 2 and cfg.study()["sweep_refine"] == 2
    assert cfg.knob("muon-wd").values == (0.0, 0.05, 0.1) and cfg.knob("muon-seed") is None
    assert cfg.knob("adamw").limit == 1.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["horizon", "--beta2-grid", "0.9,1"])
    default = HorizonConfig(out=str(tmp_path)).study()
    assert not {"sweep_refine", "wd_grid", "beta2_grid"} & set(default)
    # the plan counts the 2-D grid and the refinement rounds
    cells = {c.name: c for c in planned_cells(cfg) if c.horizon == cfg.horizons[0]}
    assert cells["muon"].tune == cfg.grid_points * 3 and cells["adamw"].tune == cfg.grid_points * 2
    assert cells["muon"].extension == cfg.sweep_extend * 3 + 2 * 2  # + 2 rounds of 2 LRs
    plain = {c.name: c for c in planned_cells(HorizonConfig(sweep_refine=2))}
    assert plain["adamw"].extension == HorizonConfig().sweep_extend + 4


def test_sweep_refine_refines_each_lr_sweep(tmp_path, monkeypatch):
    optimum = {"adamw": 8e-3 * 2 ** 0.3}

    def fake_run(self, name, h, lr, seed, aux, phase, knob=None, groups=None):  # no training
        return math.log2(lr / optimum["adamw"]) ** 2

    monkeypatch.setattr(Study, "run", fake_run)
    cfg = HorizonConfig(out=str(tmp_path / "h"), horizons=[4], tune_seed=0, seeds=[1],
                        contenders=["adamw"], sweep_refine=1, **{**TINY, "grid_points": 3})
    prepare_out(cfg, "muonkit horizon (test)")
    Study(cfg, log=lambda _: None).run_all()
    entry = json.loads((tmp_path / "h" / "sweeps.json").read_text())["4"]["adamw"]
    assert entry["refined"] == [[pytest.approx(8e-3 / 2 ** 0.5), pytest.approx(8e-3 * 2 ** 0.5)]]
    assert entry["best"] == pytest.approx(8e-3 * 2 ** 0.5)
    assert "1 refinement round(s)" in entry["note"] and "quadratic fit" in entry["note"]
    assert json.loads((tmp_path / "h" / "study.json").read_text())["sweep_refine"] == 1
