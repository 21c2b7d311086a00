"""The tuned variant study (`muonkit variants tuned`) end to end on tiny generated MNIST.

The runs go through runs.run_in_process (the same spec, resume and skip rules as the
process-per-run path, which one test exercises with a real child). Report numbers are
recomputed here from the metrics files with the standard library and a printed t table.
"""

import json
import statistics

import pytest
from fake_datasets import write_mnist

from muonlab.cli import main
from muonlab.experiments import variant_tuned
from muonlab.experiments.runs import run_in_process, run_isolated
from muonlab.experiments.sweep import lr_key
from muonlab.experiments.variants import StudyConfig

# lr 1e-4 is far too small for 4 steps: the Muon family's best LR sits at the grid's high
# edge, so the sweep must extend (once: sweep_extend=1) and report that it is still there.
TINY = dict(study="tuned", hidden=(8,), epochs=1, batch_size=50, lr=1e-4, adamw_lr=1e-2,
            rank=4, ranks=(2,), seeds=(0, 1), val_size=100, grid_points=2, sweep_extend=1,
            threads=1, jobs=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=300, n_test=60)
    return root


@pytest.fixture(scope="module")
def study(data_dir, tmp_path_factory):
    """The tiny study run once (in-process runs); its directory and the runs that trained."""
    out = tmp_path_factory.mktemp("tuned") / "study"
    cfg = StudyConfig(**TINY, data_dir=str(data_dir), out=str(out))
    trained = []

    def runner(spec, log):
        trained.append(spec.out_dir)
        return run_in_process(spec, log)

    variant_tuned.run_tuned(cfg, "test", log=lambda _: None, runner=runner)
    return cfg, out, trained


def final(out, slug, lr, seed, key):
    path = out / "runs" / slug / f"lr{lr:g}-s{seed}" / "metrics.jsonl"
    vals = [json.loads(x) for x in path.read_text().splitlines() if '"kind": "val"' in x]
    return vals[-1][key]


def test_arms_cover_every_study_and_the_mixing_ablation(study):
    _, out, _ = study
    arms = json.loads((out / "arms.json").read_text())
    slugs = [a["slug"] for a in arms["arms"]]
    # hidden (8,): matrices 8x784 and 10x8, so full rank is 8; ranks 2, 4 (--rank) and the
    # equal-memory rank; gradient-heavy dense Muon and LoRA-Pre at full rank and --rank
    for slug in ("adamw", "muon", "muon-gh", "kronecker", "kronecker-hybrid", "lorapre-r2",
                 "lorapre-r4", "lorapre-r8", "lorapre-r8-gh", "lorapre-r4-gh"):
        assert slug in slugs
    assert len(slugs) == len(set(slugs))
    assert arms["groups"]["mixing ablation"] == [
        "muon", "muon-gh", "lorapre-r8", "lorapre-r8-gh", "lorapre-r4", "lorapre-r4-gh"]
    assert set(arms["groups"]) == {"large", "equal-memory", "rank-sweep", "hybrid",
                                   "mixing ablation"}


def test_each_sweep_picks_the_lowest_held_out_loss_and_extends_at_an_edge(study):
    cfg, out, _ = study
    sweeps = json.loads((out / "sweeps.json").read_text())
    assert set(sweeps) == {a["slug"] for a in json.loads((out / "arms.json").read_text())["arms"]}
    for slug, sweep in sweeps.items():
        losses = {float(k): v for k, v in sweep["losses"].items()}
        for lr, loss in losses.items():  # each loss is that run's final held-out loss
            assert loss == pytest.approx(final(out, slug, lr, 0, "val_loss"))
        assert sweep["best"] == min(losses, key=lambda lr: (losses[lr], lr))
        centre = cfg.adamw_lr if slug == "adamw" else cfg.lr
        assert sweep["initial"] == [lr_key(centre / 2**0.5), lr_key(centre * 2**0.5)]
        assert len(sweep["added"]) <= 1
        edge = ("low" if sweep["best"] == min(losses) else
                "high" if sweep["best"] == max(losses) else None)
        assert sweep["edge"] == edge
    muon = sweeps["muon"]  # lr 1e-4: too small, extended once upwards and still at the edge
    assert muon["added"] == [lr_key(muon["initial"][-1] * 2)] and muon["edge"] == "high"
    assert "still the highest of the grid" in (out / "report.md").read_text()


def test_seeds_run_at_the_chosen_lr_and_the_interval_is_the_paired_t_interval(study):
    _, out, _ = study
    sweeps = json.loads((out / "sweeps.json").read_text())
    best = {slug: s["best"] for slug, s in sweeps.items()}
    for slug, lr in best.items():  # seed 1 ran only at the chosen LR
        assert [p.name for p in (out / "runs" / slug).glob("*-s1")] == [f"lr{lr:g}-s1"]
    acc = {slug: [final(out, slug, best[slug], s, "test_acc") for s in (0, 1)]
           for slug in ("muon", "muon-gh")}
    d = 100 * (acc["muon-gh"][1] - acc["muon"][1])  # seed 0 tuned: seed 1 alone reports
    text = (out / "report.md").read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| Muon (gradient-heavy) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[7] == f"{d:+.2f}, paired t, n=1: not resolved (one seed: no interval)"
    accs = [100 * a for a in acc["muon-gh"]]
    assert cells[5] == f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"


def test_report_has_every_section_and_the_ablation(study):
    _, out, _ = study
    text = (out / "report.md").read_text()
    for heading in ("## All arms", "## large", "## equal-memory", "## rank-sweep", "## hybrid",
                    "## mixing ablation", "## Mixing vs compression", "## LR sweeps"):
        assert heading in text
    assert "mixing, LoRA-Pre full rank" in text and "held-out cross-entropy" in text
    assert (out / "tradeoff.png").stat().st_size > 10_000


def test_a_rerun_skips_finished_runs_and_redoes_a_lost_one(study, tmp_path):
    cfg, out, trained = study
    again = []

    def runner(spec, log):
        again.append(spec.out_dir)
        return run_in_process(spec, log)

    finished = {p: p.read_text() for p in out.glob("runs/*/*/metrics.jsonl")}
    lost = sorted(finished)[0]
    lost.unlink()
    variant_tuned.run_tuned(cfg, "test", log=lambda _: None, runner=runner)
    assert len(again) == len(trained)  # every run is asked for again ...
    rewritten = [p for p in finished if p.read_text() != finished[p]]
    assert rewritten == [lost]  # ... but only the lost one trained; the others were kept
    other = StudyConfig(**{**TINY, "epochs": 2}, data_dir=cfg.data_dir, out=cfg.out)
    with pytest.raises(ValueError, match="other settings"):
        variant_tuned.run_tuned(other, "test", runner=runner)
    again.clear()  # a larger extension cap continues the sweeps that ended at the old cap
    wider = StudyConfig(**{**TINY, "sweep_extend": 2}, data_dir=cfg.data_dir, out=cfg.out)
    variant_tuned.run_tuned(wider, "test", log=lambda _: None, runner=runner)
    muon = json.loads((out / "sweeps.json").read_text())["muon"]
    assert len(muon["added"]) == 2 and muon["added"][1] == lr_key(muon["added"][0] * 2)
    assert len(again) > len(trained)


def test_a_run_in_its_own_process_and_the_cli_errors(study, data_dir, tmp_path, capsys):
    cfg, _, _ = study
    cfg = StudyConfig(**TINY, data_dir=str(data_dir), out=str(tmp_path / "one"))
    arms, _ = variant_tuned.tuned_arms(cfg)
    runner = variant_tuned.TunedStudy(cfg, arms, 4, log=lambda _: None, runner=run_isolated)
    loss = runner.run(arms[1], 0.02, 0, 0)  # dense Muon in a spawned child
    assert loss == pytest.approx(final(tmp_path / "one", "muon", 0.02, 0, "val_loss"))
    base = ["variants", "tuned", "--data-dir", str(data_dir), "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as e:
        main([*base, "--overwrite"])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*base, "--val-size", "300"])
    assert e.value.code == 2 and "--val-size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*base, "--report-only"])
    assert e.value.code == 2 and "no tuned study" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    report = study[1] / "report.md"
    report.unlink()
    assert main(["variants", "tuned", "--report-only", "--out", str(study[1])]) == 0
    assert "## Mixing vs compression" in report.read_text()
