"""The config tree (issue 23): every setting is declared once in ``muonlab.train.settings``;
the flags of every command, the configs' range checks and docs/options.md come from it, so
a value is refused the same way, naming the same flag, at the command line and in Python."""

import dataclasses

import pytest

from muonlab.cli import build_parser
from muonlab.cli.reference import all_sections
from muonlab.experiments.compare import CompareConfig
from muonlab.experiments.finetune_study import FinetuneStudyConfig
from muonlab.experiments.horizon import HorizonConfig
from muonlab.experiments.variant_config import StudyConfig
from muonlab.train.gpt import GPTRunConfig
from muonlab.train.settings import settings_of

# flags that are no setting of a config: how the command line itself behaves, the trackers
# (their own parser), the Muon options (generated from muonkit.MuonOptions)
NOT_SETTINGS = {"-h", "--help", "--debug", "--resume", "--no-tensorboard", "--tracker",
                "--wandb-project", "--wandb-run-name"}


TRAINING = ("train", "finetune", "compare", "horizon", "variants", "demo", "finetune-study")


def test_every_flag_of_every_command_is_a_setting_of_the_tree():
    loose = [(command, action.option_strings[0])
             for command, parser in all_sections() if command.split()[-1] in TRAINING
             for action in parser._actions
             if action.option_strings and not hasattr(action, "setting")
             and action.option_strings[0] not in NOT_SETTINGS
             and not action.option_strings[0].startswith("--ns-")]
    assert loose == []


def outside(bounds: dict, kind: type):
    """A value just outside ``bounds``."""
    if "ge" in bounds:
        return bounds["ge"] - 1
    if "gt" in bounds:
        return bounds["gt"]
    return bounds.get("le", bounds.get("lt")) + (1 if "le" in bounds else 0)


CONFIGS = {"train": (GPTRunConfig, {}), "compare": (CompareConfig, {}),
           "horizon": (HorizonConfig, {}), "variants": (StudyConfig, {"study": "large"}),
           "finetune-study": (FinetuneStudyConfig, {})}


@pytest.mark.parametrize("command", CONFIGS)
def test_a_config_and_its_flag_refuse_the_same_value_naming_the_flag(command, capsys):
    config_class, required = CONFIGS[command]
    flags = {a.dest: a for _, p in all_sections() if _ == f"muonkit {command}"
             for a in p._actions}
    checked = 0
    for name, s in settings_of(config_class).items():
        if s.kind not in (int, float) or not s.bounds or name not in flags:
            continue
        bad = outside(s.bounds, s.kind)
        with pytest.raises(ValueError, match=f"^{s.flag_of(name)} "):
            config_class(**required, **{name: [bad] if s.many else bad})
        argv = [command, *(["large"] if command == "variants" else []),
                flags[name].option_strings[0], str(bad)]
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 2
        assert f"argument {flags[name].option_strings[0]}: " in capsys.readouterr().err
        checked += 1
    assert checked >= 5


def test_the_loop_settings_of_a_gpt_run_come_from_the_tree():
    """GPTRunConfig hands each of its loop settings to TrainConfig by the tree's ``loop``
    name (no field copied by hand): a changed value arrives."""
    changed = GPTRunConfig(steps=7, warmup=3, grad_clip=0.5, eval_every=2, dtype="float32",
                           min_lr_ratio=0.2, decay="linear", progress=False)
    cfg = changed.train_config("muon", None, seed=1)
    assert (cfg.steps, cfg.warmup_steps, cfg.grad_clip, cfg.eval_every, cfg.dtype,
            cfg.min_lr_ratio, cfg.decay, cfg.progress) == (7, 3, 0.5, 2, "float32", 0.2,
                                                            "linear", False)
    assert cfg.momentum_end == changed.muon_momentum
    assert changed.train_config("adamw", None, seed=1).momentum_warmup_steps == 0


@pytest.mark.parametrize("command", TRAINING)
def test_help_states_each_default_once_and_rounded(command):
    """Each flag's help says its default at most once, in words where it is None (never
    "(None: ...) (default: None)"), numbers as %g."""
    parser = dict(all_sections())[f"muonkit {command}"]
    formatter = parser._get_formatter()
    texts = {a.option_strings[0] if a.option_strings else a.dest: formatter._expand_help(a)
             for a in parser._actions if a.help}
    assert [f for f, t in texts.items() if t.count("(default:") > 1 or "None" in t
            and "(None)" not in t] == []
    if command == "compare":
        assert texts["--adamw-lrs"].endswith("(default: [0.0025, 0.005, 0.01])")
        assert texts["--block-size"].endswith("(default: the preset's)")


def test_a_config_field_takes_its_default_from_the_tree():
    d = GPTRunConfig()
    for name, s in settings_of(GPTRunConfig).items():
        assert getattr(d, name) == s.default, name
    assert [f.name for f in dataclasses.fields(GPTRunConfig) if f.name not in
            settings_of(GPTRunConfig)] == ["trackers", "wandb_project", "wandb_run_name",
                                           "muon_options"]
