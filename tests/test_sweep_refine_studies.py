"""`--sweep-refine N` in every study that sweeps LRs besides `muonkit horizon`
(tests/test_horizon_sweep2d.py): `compare`, `finetune-study`, `variants tuned` and
`variants gpt`. Each run is replaced by a loss with a known shape, |log2(lr / optimum)|^2
with the optimum 2^0.3 above the grid's centre, so the factor-2 sweep picks the centre and
one refinement round picks centre * sqrt(2) (0.2 octaves from the optimum, the centre 0.3).
The setting is recorded only when given, so every study begun before it continues."""

import json
import math

import pytest

from muonlab.cli import build_parser
from muonlab.cli.compare import config_from_args as compare_config
from muonlab.cli.finetune_study import config_from_args as finetune_config
from muonlab.cli.variants import config_from_args as variants_config
from muonlab.cli.variants_gpt import config_from_args as variants_gpt_config
from muonlab.experiments import compare, variant_tuned
from muonlab.experiments import finetune_study as fs
from muonlab.experiments.sweep import lr_key
from muonlab.experiments.variant_optimizers import arm_lr
from muonlab.report.compare import sweep_notes

ROOT2 = math.sqrt(2)


def loss_around(center: float, lr: float) -> float:
    """The known loss shape: its optimum at ``center * 2^0.3``."""
    return math.log2(lr / (center * 2 ** 0.3)) ** 2


def refined_once(entry: dict, center: float) -> None:
    """``entry`` (a sweep's record) refined once around ``center``, choosing centre * sqrt(2),
    and its note saying so and giving the quadratic fit."""
    assert entry["refined"] == [[lr_key(center / ROOT2), lr_key(center * ROOT2)]]
    assert entry["best"] == lr_key(center * ROOT2) and entry["edge"] is None
    assert "after 1 refinement round(s)" in entry["note"] and "quadratic fit" in entry["note"]
    assert entry["fitted"] == pytest.approx(center * 2 ** 0.3, rel=1e-3)


def test_compare_refines_each_sweep_and_records_the_setting_only_when_given(tmp_path,
                                                                           monkeypatch):
    argv = ["compare", "--optimizers", "adamw", "muon", "--adamw-lrs", "5e-3", "1e-2", "2e-2",
            "--muon-lrs", "0.01", "0.02", "0.04", "--lr-sweep", "--no-isolate", "--steps",
            "1000", "--out", str(tmp_path)]
    cfg = compare_config(build_parser().parse_args([*argv, "--sweep-refine", "1"]))
    assert compare.study_identity(cfg)["sweep_refine"] == 1
    plain = compare_config(build_parser().parse_args(argv))
    assert "sweep_refine" not in compare.study_identity(plain)
    assert "sweep_refine" not in compare.all_settings(plain)  # settings.json's "args"

    def fake_run(spec, log):
        opts = spec.kwargs["optimizer_options"]
        if spec.kwargs["optimizer"] == "adamw":
            return loss_around(1e-2, opts["lr"])
        return loss_around(0.02, opts["muon_lr"])

    monkeypatch.setattr(compare, "run_in_process", fake_run)
    chosen, record = compare.tune(compare.Experiment(cfg, log=lambda _: None))
    refined_once(record["adamw"][0], 1e-2)
    refined_once(record["muon"][0], 0.02)
    assert chosen["adamw"]["lr"] == lr_key(1e-2 * ROOT2)
    assert chosen["muon"]["muon_lr"] == lr_key(0.02 * ROOT2)
    assert any("after 1 refinement round(s)" in line for line in sweep_notes({"sweeps": record}))


def test_finetune_study_refines_the_bases_and_every_arms_sweep(tmp_path, monkeypatch):
    argv = ["finetune-study", "--quick", "--out", str(tmp_path / "s"), "--grid-points", "3",
            "--arms", "adamw", "muon-kj"]
    cfg = finetune_config(build_parser().parse_args([*argv, "--sweep-refine", "1"]))
    assert json.loads(cfg.study_json())["sweep_refine"] == 1
    plain = finetune_config(build_parser().parse_args(argv))
    assert "sweep_refine" not in json.loads(plain.study_json())
    centers = {fs.ADAMW: cfg.base_adamw_lr, fs.MUON: cfg.base_muon_lr}

    def fake_base(self, base, lr, aux, out_dir=None):
        return loss_around(centers[base], lr)

    def fake_ft(self, base, name, lr, seed, aux):
        return loss_around(fs.ARMS[name].center, lr)

    monkeypatch.setattr(fs.FinetuneStudy, "run_base", fake_base)
    monkeypatch.setattr(fs.FinetuneStudy, "run_ft", fake_ft)
    monkeypatch.setattr(fs.FinetuneStudy, "regenerate_checkpoint", lambda *a: None)
    (tmp_path / "s").mkdir()
    fs.FinetuneStudy(cfg, log=lambda _: None).run_all()
    sweeps = json.loads((tmp_path / "s" / "sweeps.json").read_text())
    refined_once(sweeps["base/adamw"], cfg.base_adamw_lr)
    refined_once(sweeps["base/muon"], cfg.base_muon_lr)
    for base in fs.BASES:
        for name in ("adamw", "muon-kj"):
            refined_once(sweeps[f"{base}/{name}"], fs.ARMS[name].center)


def test_variants_tuned_refines_every_arms_sweep(tmp_path):
    argv = ["variants", "tuned", "--out", str(tmp_path / "v"), "--hidden", "8",
            "--grid-points", "3"]
    cfg = variants_config(build_parser().parse_args([*argv, "--sweep-refine", "1"]))
    assert variant_tuned.settings(cfg)["sweep_refine"] == 1
    plain = variants_config(build_parser().parse_args(argv))
    assert "sweep_refine" not in variant_tuned.settings(plain)
    arms, groups = variant_tuned.tuned_arms(cfg)

    def fake_run(spec, log):
        arm = spec.kwargs["arm"]
        return loss_around(arm_lr(arm, cfg), spec.kwargs["lr"])

    out = variant_tuned.prepare_out(cfg, arms, groups, "muonkit variants tuned (test)")
    variant_tuned.TunedStudy(cfg, arms, 4, log=lambda _: None, runner=fake_run).run_all()
    assert json.loads((out / "study.json").read_text())["sweep_refine"] == 1
    sweeps = json.loads((out / "sweeps.json").read_text())
    assert set(sweeps) == {a.slug for a in arms}
    for arm in arms:
        refined_once(sweeps[arm.slug], arm_lr(arm, cfg))


def test_variants_gpt_takes_the_setting_into_its_horizon_config(tmp_path):
    """The gpt study sweeps through `muonkit horizon`'s Study (whose refinement
    tests/test_horizon_sweep2d.py checks): the flag reaches its config and study.json."""
    argv = ["variants", "gpt", "--out", str(tmp_path)]
    cfg = variants_gpt_config(build_parser().parse_args([*argv, "--sweep-refine", "2"]))
    assert cfg.sweep_refine == 2 and cfg.study()["sweep_refine"] == 2
    plain = variants_gpt_config(build_parser().parse_args(argv))
    assert plain.sweep_refine == 0 and "sweep_refine" not in plain.study()
