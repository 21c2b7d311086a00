"""`muonkit horizon --group-lrs`: after each tuned contender's LR sweep, the LRs of its AdamW
groups (embedding, head, vectors) are swept one at a time as multipliers of the LR they take;
the report runs train at the chosen multipliers and the report says so."""

import json

import pytest

from muonlab.cli import build_parser
from muonlab.cli.horizon import config_from_args
from muonlab.experiments import horizon
from muonlab.experiments.horizon import HorizonConfig, Study, planned_cells, prepare_out
from muonlab.experiments.runs import run_in_process
from muonlab.report.horizon import build_horizon_report
from muonlab.report.metrics import load_run

TINY = dict(batch_size=2, block_size=8, eval_batches=1, evals_per_run=2, grid_points=3,
            sweep_extend=0)


def final_loss(path):
    return load_run(path / "metrics.jsonl").val[-1]["val_loss"]


def test_group_lr_sweeps_run_after_the_lr_sweep_and_set_the_report_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    cfg = HorizonConfig(out=str(tmp_path / "h"), horizons=[6], tune_seed=0, seeds=[1],
                        contenders=["adamw", "muon"], group_lrs=["vector", "head"],
                        model_overrides={"n_layer": 1, "tie_weights": False}, **TINY)
    out = prepare_out(cfg, "muonkit horizon (test)")
    assert json.loads((out / "study.json").read_text())["group_lrs"] == ["vector", "head"]
    Study(cfg, log=lambda _: None).run_all()
    sweeps = json.loads((out / "sweeps.json").read_text())["6"]
    build_horizon_report(out)
    text = (out / "report.md").read_text()
    for name in ("adamw", "muon"):
        entry, base = sweeps[name], out / "h6" / name
        lr = entry["best"]
        vector, head = entry["groups"]["vector"], entry["groups"]["head"]
        assert sorted(map(float, vector["losses"])) == [0.5, 1.0, 2.0]
        # x1 of the first group is the LR sweep's own best run, not a new one
        assert vector["losses"]["1.0"] == entry["losses"][str(lr)]
        assert vector["others"] == {"head": 1.0}
        assert head["others"] == {"vector": vector["best"]}
        for group in (vector, head):
            assert group["losses"][str(group["best"])] == min(group["losses"].values())
            assert group["note"] in text
        chosen = {"vector": vector["best"], "head": head["best"]}
        assert entry["best_groups"] == chosen
        suffix = "".join(f"-{label}{chosen[role]:g}" for role, label in
                         (("head", "head"), ("vector", "vec")) if chosen[role] != 1)
        report_run = load_run(base / f"lr{lr:g}{suffix}-s1" / "metrics.jsonl")
        options = report_run.config["config"]["optimizer_options"]
        adamw_lr = options["lr"]  # AdamW's own, or the hybrid's aux LR
        for role in ("vector", "head"):
            if chosen[role] == 1:
                assert f"{role}_lr" not in options
            else:
                assert options[f"{role}_lr"] == pytest.approx(adamw_lr * chosen[role])
                assert f"{role} LR x{chosen[role]:g}" in text
        # the tuning seed's run at the chosen point is the one the head sweep chose
        assert final_loss(base / f"lr{lr:g}{suffix}-s0") == pytest.approx(
            head["losses"][str(head["best"])])
    assert "Status: complete" in text


def test_a_group_the_model_lacks_is_refused_and_the_plan_counts_the_group_runs(tmp_path):
    args = build_parser().parse_args([
        "horizon", "--out", str(tmp_path), "--group-lrs", "embedding", "vector",
        "--horizons", "100", "200"])
    cfg = config_from_args(args)
    assert cfg.group_lrs == ["embedding", "vector"]
    plain = {(c.horizon, c.name): c for c in planned_cells(HorizonConfig(horizons=[100, 200]))}
    for c in planned_cells(cfg):
        if c.name == "muon-seed":  # not tuned: no sweeps
            assert (c.tune, c.extension) == (plain[c.horizon, c.name].tune, 0)
            continue
        p = plain[c.horizon, c.name]
        assert c.tune == p.tune + 2 * 2  # each group's 3-point grid but its centre
        assert c.extension == p.extension + 2 * cfg.sweep_extend + (c.horizon == 200)
    tied = HorizonConfig(out=str(tmp_path / "t"), horizons=[4], group_lrs=["head"], **TINY)
    with pytest.raises(ValueError, match="--group-lrs head: the model has no head parameters "
                       r"\(its head is tied to the embedding\)"):
        prepare_out(tied, "muonkit horizon (test)")
    assert not (tmp_path / "t").exists()
    with pytest.raises(ValueError, match="names a group twice"):
        HorizonConfig(group_lrs=["vector", "vector"])
    assert "group_lrs" not in HorizonConfig(out=str(tmp_path)).study()
