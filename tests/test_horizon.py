"""A tiny `muonkit horizon` study, in process (the study itself is never a test)."""

import json
import shutil

import numpy as np
import pytest

from muonlab.cli import main
from muonlab.experiments import horizon
from muonlab.experiments.horizon import HorizonConfig, Study, prepare_out
from muonlab.experiments.runs import run_in_process
from muonlab.experiments.sweep import factor_grid
from muonlab.report.horizon import build_horizon_report
from muonlab.report.metrics import load_run, read_jsonl
from muonlab.report.stats import report_runs


def sessions(out):
    return sum(len(read_jsonl(p)) for p in out.rglob("sessions.jsonl"))


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("horizon")
    cfg = HorizonConfig(out=str(out), horizons=[4, 8], tune_seed=0, seeds=[1, 2],
                        contenders=["adamw", "normuon", "muon-seed"], batch_size=2, block_size=8,
                        eval_batches=1, evals_per_run=2, model_overrides={"n_layer": 1},
                        grid_points=2, sweep_extend=0)
    mp = pytest.MonkeyPatch()
    mp.setattr(horizon, "run_isolated", run_in_process)
    prepare_out(cfg, "muonkit horizon (test)")
    Study(cfg, log=lambda _: None).run_all()
    yield out, cfg
    mp.undo()


def test_each_horizon_is_tuned_around_the_last_and_has_its_own_schedule(study_dir):
    out, cfg = study_dir
    sweeps = json.loads((out / "sweeps.json").read_text())
    for name in ("adamw", "normuon"):
        assert sweeps["8"][name]["initial"] == factor_grid(sweeps["4"][name]["best"], 2)
    for h in (4, 8):
        best = sweeps[str(h)]["adamw"]["best"]
        assert sweeps[str(h)]["normuon"]["aux_lr"] == best
        muon = load_run(out / f"h{h}" / "normuon"
                        / f"lr{sweeps[str(h)]['normuon']['best']:g}-s1" / "metrics.jsonl")
        assert muon.optimizer == "normuon" and muon.val[-1]["val_loss"] < muon.val[0]["val_loss"]
        assert muon.config["config"]["optimizer_options"]["lr"] == best  # aux = AdamW's LR
        assert muon.config["config"]["steps"] == h
        adamw = load_run(out / f"h{h}" / "adamw" / f"lr{best:g}-s0" / "metrics.jsonl")
        assert adamw.train[-1]["lr"] == pytest.approx(best * (0.1 + 0.9 * 0.5 * (
            1 + np.cos(np.pi * (h - 1 - 0) / (h - 0)))), rel=0.05)  # cosine ends near 0.1x
    # the tuning seed 0 runs the grid, the report seeds 1 and 2 the chosen LR
    assert len(list((out / "h8" / "adamw").iterdir())) == 2 + 2
    assert [p.name for p in (out / "h8" / "muon-seed").iterdir()] != []
    rms = [r for r in read_jsonl(out / "h8" / "muon-seed" / "lr0.02-s1" / "metrics.jsonl")
           if r["kind"] == "rms"]
    assert [r["step"] for r in rms] == [0, 4, 8] and rms[-1]["weight_rms"] > 0


def test_rerun_skips_finished_runs_and_refuses_other_settings(study_dir, monkeypatch):
    out, cfg = study_dir
    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    before = sessions(out)
    Study(cfg, log=lambda _: None).run_all()
    assert sessions(out) == before
    other = HorizonConfig(**{**cfg.__dict__, "horizons": [4, 16]})
    with pytest.raises(ValueError, match="horizons"):
        prepare_out(other, "x")


def test_a_longer_horizon_continues_the_study_without_rerunning_it(study_dir, tmp_path,
                                                                   monkeypatch):
    """Horizons added after the study's last run as its own did (tuned around the last
    horizon's best); the finished horizons' runs are not run again."""
    out, cfg = study_dir
    copy = tmp_path / "longer"
    shutil.copytree(out, copy)
    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    longer = HorizonConfig(**{**cfg.__dict__, "out": str(copy), "horizons": [4, 8, 12]})
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("metrics.jsonl")}
    prepare_out(longer, "muonkit horizon (test, longer)")
    Study(longer, log=lambda _: None).run_all()
    assert json.loads((copy / "study.json").read_text())["horizons"] == [4, 8, 12]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # untouched
    sweeps = json.loads((copy / "sweeps.json").read_text())
    for name in ("adamw", "normuon"):
        assert sweeps["12"][name]["initial"] == factor_grid(sweeps["8"][name]["best"], 2)
        assert {int(p.name.rsplit("-s", 1)[1]) for p in (copy / "h12" / name).iterdir()} \
            == {0, 1, 2}
    assert (copy / "commands.txt").read_text().splitlines()[-1] == \
        "muonkit horizon (test, longer)"


def test_report_numbers_come_from_the_runs(study_dir, tmp_path):
    out, _ = study_dir
    build_horizon_report(out)
    text = (out / "report.md").read_text()
    sweeps = json.loads((out / "sweeps.json").read_text())
    lr = sweeps["8"]["adamw"]["best"]
    finals = [load_run(out / "h8" / "adamw" / f"lr{lr:g}-s{s}" / "metrics.jsonl").val[-1][
        "val_loss"] for s in (1, 2)]  # the report seeds, not the tuning seed 0
    assert f"{np.mean(finals):.3f} ± {np.std(finals, ddof=1):.3f} (lr {lr:g})" in text
    muon = [load_run(out / "h8" / "muon-seed" / f"lr0.02-s{s}" / "metrics.jsonl").val[-1][
        "val_loss"] for s in (1, 2)]
    gaps = np.subtract(muon, finals)  # paired by seed; seed 0 tuned and is not compared
    half = 12.7062 * np.std(gaps, ddof=1) / np.sqrt(2)  # t_{0.975, 1}
    assert (f" | {gaps.mean():+.3f} [{gaps.mean() - half:+.3f}, {gaps.mean() + half:+.3f}], "
            "paired t, n=2: not resolved (n=2 < 5 report seeds); ") in text
    assert "(seed 0, which tuned the LRs, left out)" in text
    assert "## Final validation loss (mean ± std over the report seeds, chosen LR)" in text
    assert "Status: complete" in text and "muonkit horizon (test)" in text
    assert "report seeds [1, 2] (seed 0 tuned the LRs and is not reported)" in text
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    shutil.rmtree(partial / "h8" / "muon-seed" / "lr0.02-s1")
    with pytest.raises(SystemExit) as exit_info:  # other settings
        main(["horizon", "--out", str(partial), "--horizons", "4", "8"])
    assert exit_info.value.code == 2
    commands = (partial / "commands.txt").read_text()
    assert main(["horizon", "--out", str(partial), "--report-only"]) == 0
    assert (partial / "commands.txt").read_text() == commands
    text = (partial / "report.md").read_text()
    assert "**unfinished**: 5 of 6" in text and "| muon-seed | " in text
    assert "(1 of 2 seeds)" in text  # the seed that finished is shown, marked
    shutil.rmtree(partial / "h4" / "muon-seed")
    shutil.rmtree(partial / "h8" / "muon-seed")  # never started: still a row, unfinished
    build_horizon_report(partial)
    text = (partial / "report.md").read_text()
    assert "**unfinished**: 4 of 6" in text and "| muon-seed | unfinished | unfinished |" in text


def test_the_gaps_change_between_horizons_is_paired_by_report_seed(study_dir):
    out, _ = study_dir
    build_horizon_report(out)
    sweeps = json.loads((out / "sweeps.json").read_text())

    def gaps(h):
        lr = sweeps[str(h)]["adamw"]["best"]
        final = {name: [load_run(out / f"h{h}" / name / f"lr{x:g}-s{s}" / "metrics.jsonl"
                                 ).val[-1]["val_loss"] for s in (1, 2)]
                 for name, x in (("adamw", lr), ("muon-seed", 0.02))}
        return np.subtract(final["muon-seed"], final["adamw"])

    d = gaps(8) - gaps(4)  # seed by seed; seed 0 tuned and is left out
    half = 12.7062 * np.std(d, ddof=1) / np.sqrt(2)
    text = (out / "report.md").read_text()
    assert "## Change of the gap to AdamW from one horizon to the next" in text
    assert (f"| muon-seed | {d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}], "
            "paired t, n=2: not resolved (n=2 < 5 report seeds) |") in text


def test_the_rms_table_names_the_seed_it_shows(study_dir, tmp_path):
    """The table shows the study's first seed's runs and says which; with seed 0 listed first
    (a study before held-out seeds) it says that seed also tuned."""
    out, _ = study_dir
    build_horizon_report(out)
    rms = [r for r in read_jsonl(out / "h8" / "muon-seed" / "lr0.02-s1" / "metrics.jsonl")
           if r["kind"] == "rms"]
    text = (out / "report.md").read_text()
    assert "hidden matrices at the end (seed 1)" in text
    assert f"-> {rms[-1]['weight_rms']:.4f} / {rms[-1]['update_rms']:.2e} |" in text
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    settings = json.loads((legacy / "study.json").read_text())
    del settings["tune_seed"]
    settings["seeds"] = [0, 1, 2]
    (legacy / "study.json").write_text(json.dumps(settings))
    build_horizon_report(legacy)
    text = (legacy / "report.md").read_text()
    lr = json.loads((legacy / "sweeps.json").read_text())["8"]["adamw"]["best"]
    seed0 = [r for r in read_jsonl(legacy / "h8" / "adamw" / f"lr{lr:g}-s0" / "metrics.jsonl")
             if r["kind"] == "rms"]
    assert "hidden matrices at the end (seed 0, which also tuned)" in text
    assert f"-> {seed0[-1]['weight_rms']:.4f} / {seed0[-1]['update_rms']:.2e} |" in text


def test_tuning_and_report_runs_record_their_role(study_dir):
    out, _ = study_dir
    roles = {}
    for path in out.rglob("metrics.jsonl"):
        config = load_run(path).config["config"]
        roles.setdefault(config["role"], set()).add(config["seed"])
    assert roles == {"tune": {0}, "report": {1, 2}}
    runs = [load_run(p) for p in (out / "h8" / "adamw").rglob("metrics.jsonl")]
    split = report_runs(runs)  # the statistics layer reads the roles the runs recorded
    assert split.seeds == [1, 2] and {r.seed for r in split.tuning} == {0}


def test_the_wall_clock_table_says_what_each_time_was_measured_on(study_dir):
    """A GPU run's step time names its GPU (its host's CPU flags would mislead); a CPU run's
    names the CPU's arithmetic flags it recorded."""
    from pathlib import Path

    from muonlab.report.horizon import timed_on
    from muonlab.report.metrics import Run

    gpu = Run(path=Path("g"), config={"provenance": {"device": "cuda",
                                                     "device_name": "NVIDIA H200"}},
              summary={"cpu_flags": ["avx2", "amx_bf16"]})
    assert timed_on(gpu) == "NVIDIA H200"
    out, _ = study_dir
    run = load_run(next(out.rglob("metrics.jsonl")))
    flags = run.summary["cpu_flags"]
    assert timed_on(run) == " ".join(flags or ["-"])
    build_horizon_report(out)
    assert "| timed on (GPU, or CPU flags) |" in (out / "report.md").read_text()
