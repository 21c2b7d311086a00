"""The ``--ns-*`` flags (generated from MuonOptions) on every command that trains a Muon: they
reach each run's optimizer and its config record; bad values are one line and exit code 2."""

import json

import pytest
import torch
from torch import nn

from muonkit import MuonOptions
from muonkit.hybrid import MuonWithAuxAdam
from muonlab.cli import build_parser, main
from muonlab.cli import compare as compare_cli
from muonlab.cli import horizon as horizon_cli
from muonlab.cli import variants as variants_cli
from muonlab.cli import variants_gpt as variants_gpt_cli
from muonlab.cli.train import config_from_args
from muonlab.experiments import demo, horizon
from muonlab.experiments.horizon import HorizonConfig, Study, prepare_out
from muonlab.experiments.runs import run_in_process
from muonlab.experiments.variant_config import Arm
from muonlab.experiments.variant_optimizers import build_model, build_optimizer
from muonlab.models.gpt import GPT, preset_config
from muonlab.report.metrics import load_run
from muonlab.train.gpt import gpt_optimizer

NS = ["--ns-steps", "3", "--ns-coefficients", "polar_express", "--ns-dtype", "float32",
      "--ns-gram", "false", "--ns-precondition", "aol"]
GIVEN = dict(ns_steps=3, ns_coefficients="polar_express", ns_dtype=torch.float32, ns_gram=False,
             ns_precondition="aol")
FAST = ["--preset", "tiny", "--batch-size", "2", "--block-size", "8", "--eval-batches", "1",
        "--eval-every", "0", "--warmup", "1", "--no-progress", "--tracker", "none"]


def muon_groups(optimizer) -> list[MuonOptions]:
    groups = [g for g in optimizer.param_groups if g.get("use_muon", True)]
    assert groups
    return [MuonOptions.from_group(g) for g in groups]


def uses_the_flags(optimizer) -> bool:
    return all(o.replace(**GIVEN) == o for o in muon_groups(optimizer))


def tiny_gpt_optimizer(optimizer: str, options: dict):
    return gpt_optimizer(GPT(preset_config("tiny", vocab_size=65)), optimizer, **options)


def args(*argv):
    return build_parser().parse_args([*argv, *NS])


@pytest.mark.parametrize("optimizer", ["muon", "normuon", "lorapre", "kronecker-hybrid"])
def test_train_and_compare_give_the_flags_to_every_muon_optimizer(optimizer):
    run = config_from_args(args("train"))
    assert uses_the_flags(tiny_gpt_optimizer(optimizer, run.optimizer_options(optimizer)))
    gpt = compare_cli.config_from_args(args("compare")).gpt
    assert uses_the_flags(tiny_gpt_optimizer(optimizer, gpt.optimizer_options(optimizer)))
    assert "ns_steps" not in run.optimizer_options("adamw")


def test_horizon_and_variants_gpt_give_the_flags_to_each_runs_optimizer(monkeypatch):
    specs = []
    monkeypatch.setattr(horizon, "run_isolated", lambda spec, log: specs.append(spec) or 1.0)
    for cfg in (horizon_cli.config_from_args(args("horizon")),
                variants_gpt_cli.config_from_args(args("variants", "gpt"))):
        for name in ("adamw", "muon"):
            Study(cfg, log=lambda _: None).run(name, cfg.horizons[0], 0.02, 0, 3e-4, 0)
    muon = [s.kwargs for s in specs if s.kwargs["optimizer"] != "adamw"]
    assert len(muon) == 2
    for kwargs in muon:
        assert uses_the_flags(tiny_gpt_optimizer(kwargs["optimizer"], kwargs["optimizer_options"]))


@pytest.mark.parametrize("kind", ["muon", "lora_pre", "kronecker", "hybrid_kronecker"])
def test_variants_gives_the_flags_to_every_muon_arm(kind):
    cfg = variants_cli.config_from_args(args("variants", "large", "--hidden", "8"))
    model = build_model(cfg, 0)
    assert uses_the_flags(build_optimizer(Arm(kind, kind, 2), model, cfg))


def test_demo_gives_the_flags_to_its_optimizer(monkeypatch, capsys):
    made = []

    class Recorded(MuonWithAuxAdam):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(demo, "MuonWithAuxAdam", Recorded)
    assert main(["demo", "--steps", "1", *NS]) == 0
    assert len(made) == 1 and uses_the_flags(made[0])


def test_a_train_run_records_and_uses_the_flags(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--optimizer", "muon", "--out", str(out), *FAST, "--steps", "1",
            "--warmup", "0", "--checkpoint-every", "1"]
    assert main([*argv, *NS]) == 0
    options = load_run(out / "metrics.jsonl").config["config"]["optimizer_options"]
    assert {k: options[k] for k in GIVEN} == {**GIVEN, "ns_dtype": "float32"}
    record = load_run(out / "metrics.jsonl").config["config"]
    assert all(v.startswith("fp32 (explicit)") for v in record["ns_precision"].values())
    (saved,) = torch.load(out / "ckpt.pt", weights_only=False)["optimizers"]
    assert uses_the_flags(type("Saved", (), {"param_groups": saved["param_groups"]}))
    # resuming with other Newton-Schulz settings is refused, naming the flag
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--resume", "--ns-steps", "5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--ns-steps: checkpoint 3, given 5" in err


def test_a_horizon_run_records_the_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    cfg = HorizonConfig(out=str(tmp_path / "h"), horizons=[2], seeds=[1],
                        contenders=["muon-seed"], batch_size=2, block_size=8, eval_batches=1,
                        evals_per_run=1, model_overrides={"n_layer": 1},
                        muon_options=dict(ns_steps=3, ns_dtype="float32"))
    out = prepare_out(cfg, "muonkit horizon (test)")
    Study(cfg, log=lambda _: None).run_all()
    (run,) = out.rglob("metrics.jsonl")
    options = load_run(run).config["config"]["optimizer_options"]
    assert options["ns_steps"] == 3 and options["ns_dtype"] == "float32"
    assert json.loads((out / "study.json").read_text())["muon_options"] == {
        "ns_steps": 3, "ns_dtype": "float32"}


def test_study_settings_hold_only_changed_options():
    """A study begun before the flags (no muon_options in study.json) continues with them at
    their defaults."""
    base = dict(out="unused", horizons=[2], evals_per_run=1)
    defaults = {n: MuonOptions.defaults()[n] for n in ("ns_steps", "ns_dtype", "ns_gram")}
    assert HorizonConfig(**base, muon_options=defaults).study() == HorizonConfig(**base).study()
    assert "muon_options" not in HorizonConfig(**base).study()


COMMANDS = [["train"], ["compare"], ["horizon"], ["variants", "large"], ["variants", "gpt"],
            ["demo"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("flag, value, says", [
    ("--ns-steps", "-1", "must be an int >= 0, got -1"),
    ("--ns-steps", "two", "expected an integer, got 'two'"),
    ("--ns-coefficients", "cubic", "invalid choice 'cubic'"),
    ("--ns-dtype", "fp32", "invalid choice 'fp32' (choose from auto, mixed, float32"),
    ("--ns-gram", "yes", "invalid choice 'yes' (choose from auto, true, false)"),
])
def test_a_bad_value_is_one_line_naming_the_flag(command, flag, value, says, tmp_path, capsys):
    out = tmp_path / "o"
    extra = [] if command == ["demo"] else ["--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main([*command, *extra, flag, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"argument {flag}: {says}" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_of_every_training_command_shows_the_flags(command, capsys):
    with pytest.raises(SystemExit):
        main([*command[:1], "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--ns-steps N Newton-Schulz iterations (default: 5)" in text
    assert "--ns-dtype {auto,mixed,float32,bfloat16,float16,float64}" in text
    assert "(default: auto)" in text and "--ns-coefficients {jordan,polar_express,svd}" in text


def test_configs_check_their_muon_options():
    from muonlab.experiments.variant_config import StudyConfig
    from muonlab.train.gpt import GPTRunConfig

    for make in (GPTRunConfig, HorizonConfig, lambda **kw: StudyConfig("large", **kw)):
        with pytest.raises(ValueError, match="ns_steps must be an int >= 0"):
            make(muon_options={"ns_steps": -1})
    with pytest.raises(ValueError, match="--muon-momentum"):
        GPTRunConfig(muon_options={"momentum": 0.9})


def test_readme_constructor_examples_run():
    """The README builds optimizers with keywords; those calls keep working."""
    from muonkit import Muon, hybrid_param_groups
    from muonkit.variants import HybridKroneckerMuon, KroneckerMuon, LoRAPreMuon

    matrices = [nn.Parameter(torch.randn(16, 16))]
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    no_bias = nn.Sequential(nn.Linear(8, 16, bias=False), nn.Linear(16, 4, bias=False))
    for opt in (
        Muon(matrices, lr=0.02, options=MuonOptions(momentum_form="ema")),
        MuonWithAuxAdam(hybrid_param_groups(model, muon_lr=0.02, adamw_lr=3e-4)),
        LoRAPreMuon(matrices, lr=0.02, momentum=0.9, rank=16),
        KroneckerMuon(matrices, lr=0.02, momentum=0.9),
        HybridKroneckerMuon(no_bias, lr=0.02),
        Muon(matrices, ns_dtype=torch.bfloat16),
        Muon(matrices, ns_dtype="mixed"),
    ):
        assert muon_groups(opt)
