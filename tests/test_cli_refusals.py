"""The command line as users expect it (issue 26.3): a flag that the chosen optimizer or mode
would ignore is refused in one line naming both flags, before anything is written; the
commands that train say which flags of `muonkit train` they do not take."""

import re
from pathlib import Path

import pytest
from test_cli import FAST, user_error

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, named", [
    (["--optimizer", "adamw", "--rank", "8"], ["--rank 8", "--optimizer adamw", "lorapre"]),
    (["--optimizer", "muon", "--rank", "8"], ["--rank 8", "--optimizer muon"]),
    (["--optimizer", "adamw", "--muon-lr", "0.05"], ["--muon-lr 0.05", "--optimizer adamw"]),
    (["--optimizer", "adamw", "--qkv-split"], ["--qkv-split", "--optimizer adamw"]),
    (["--optimizer", "adamw", "--ns-steps", "3"], ["--ns-steps 3", "--optimizer adamw"]),
    (["--optimizer", "adamw", "--momentum-warmup", "10"],
     ["--momentum-warmup 10", "--optimizer adamw"]),
    (["--warmup", "20", "--steps", "20"], ["--warmup 20", "--steps 20"]),
    (["--warmup", "30", "--steps", "20"], ["--warmup 30", "--steps 20"]),
    (["--decay", "constant", "--min-lr-ratio", "0.5"], ["--min-lr-ratio 0.5", "--decay constant"]),
    (["--lora-alpha", "4"], ["--lora-alpha 4", "--lora-rank"]),
    (["--head-lr", "0.01"], ["--head-lr 0.01", "tied", "--untied"]),
])
def test_train_refuses_a_flag_that_would_do_nothing_naming_both(flags, named, tmp_path, capsys):
    out = tmp_path / "run"
    err = user_error(capsys, ["train", "--out", str(out), *FAST, "--steps", "3", *flags])
    assert all(n in err for n in named), err
    assert not out.exists()


def test_what_the_optimizer_reads_is_accepted(tmp_path):
    from muonlab.cli import main

    assert main(["train", "--optimizer", "lorapre", "--rank", "2", "--out", str(tmp_path / "r"),
                 *FAST, "--steps", "2", "--warmup", "1"]) == 0


def test_compare_refuses_a_flag_none_of_its_optimizers_reads(tmp_path, capsys):
    out = tmp_path / "study"
    err = user_error(capsys, ["compare", "--optimizers", "adamw", "--muon-lr", "0.05",
                              "--preset", "tiny", "--batch-size", "2", "--block-size", "8",
                              "--steps", "3", "--seeds", "0", "--out", str(out)])
    assert "--muon-lr 0.05" in err and "--optimizers adamw" in err and not out.exists()


def test_compare_docs_name_every_train_flag_it_does_not_take():
    """docs/studies/compare.md says every flag of `muonkit train` applies except those it
    names: exactly the ones compare's parser lacks."""
    from muonlab.cli.reference import all_sections

    parsers = dict(all_sections())

    def flags(command):
        return {s for a in parsers[f"muonkit {command}"]._actions for s in a.option_strings}

    text = " ".join((ROOT / "docs" / "studies" / "compare.md").read_text().split())
    sentence = text[text.index("Every flag of `muonkit train` applies"):]
    sentence = sentence[:sentence.index(").", sentence.index("except")) + 2]
    named = set(re.findall(r"`(--[a-z-]+)`", sentence.split("except", 1)[1]))
    assert named - {"--optimizers", "--seeds"} == flags("train") - flags("compare")


@pytest.mark.parametrize("command,page", [("horizon", "horizon"), ("variants", "variants"),
                                          ("finetune-study", "finetune")])
def test_each_study_page_names_the_train_flags_its_command_takes(command, page):
    """A study that sets most train flags itself says on its page which it takes: exactly
    the flags of `muonkit train` its parser has (the README points there)."""
    from muonlab.cli.reference import all_sections

    parsers = dict(all_sections())

    def flags(name):
        return {s for a in parsers[f"muonkit {name}"]._actions for s in a.option_strings}

    text = " ".join((ROOT / "docs" / "studies" / f"{page}.md").read_text().split())
    sentence = text[text.index(f"Of the flags of `muonkit train`, `muonkit {command}` takes"):]
    sentence = sentence[:sentence.index(";")]
    named = set(re.findall(r"`(--[a-z-]+)`", sentence))
    assert named == (flags("train") & flags(command)) - {"-h", "--help", "--debug"}
    assert "docs/studies" in (ROOT / "README.md").read_text()


def test_a_default_warmup_as_long_as_the_run_is_said_once(tmp_path, capsys):
    # --warmup given >= --steps is refused (above); the default (100) on a short run is not,
    # so short runs keep working, but the user hears that the LR never reaches its peak
    from muonlab.cli import main

    at = FAST.index("--warmup")
    default_warmup = FAST[:at] + FAST[at + 2:]
    assert main(["train", "--out", str(tmp_path / "run"), *default_warmup, "--steps", "2"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "--warmup 100" in line]
    assert len(warned) == 1 and "--steps 2" in warned[0] and "never reaches its peak" in warned[0]
    assert main(["train", "--out", str(tmp_path / "short"), *FAST, "--steps", "2"]) == 0
    assert "--warmup" not in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--sweep-refine", "1"), ("--sweep-extend", "3"),
                                        ("--sweep-steps", "10"), ("--adamw-lrs", "1e-3"),
                                        ("--sweep-full-topk", "2")])
def test_compare_refuses_a_sweep_setting_without_the_sweep(flag, value, tmp_path, capsys):
    """A setting only the LR sweep reads does nothing without --lr-sweep: refused, naming both
    flags, before anything is written."""
    from muonlab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--out", str(tmp_path / "c"), flag, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert flag in err and "--lr-sweep" in err
    assert not (tmp_path / "c").exists()


def test_an_untuned_variant_study_refuses_the_sweep_settings(tmp_path, capsys):
    from muonlab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["variants", "large", "--out", str(tmp_path / "v"), "--sweep-refine", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--sweep-refine" in err and "variants tuned" in err
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_train_gives_each_adamw_group_its_own_lr(optimizer, tmp_path):
    """--embedding-lr / --head-lr / --vector-lr set those AdamW groups' LRs (the hidden
    matrices keep --lr on AdamW, --muon-lr on the hybrid), recorded in the run's config."""
    from muonlab.cli import build_parser
    from muonlab.cli.train import config_from_args
    from muonlab.models.gpt import GPT
    from muonlab.train.gpt import gpt_optimizer

    args = build_parser().parse_args([
        "train", "--optimizer", optimizer, "--lr", "0.001", "--embedding-lr", "0.004",
        "--head-lr", "0.002", "--vector-lr", "0.0005", "--untied", "--out", str(tmp_path)])
    cfg = config_from_args(args)
    options = cfg.optimizer_options(optimizer)
    _, model_cfg = cfg.load_data()
    opt = gpt_optimizer(GPT(model_cfg), optimizer, **options)
    lrs = {g["role"]: g["lr"] for g in opt.param_groups if g["params"] and "role" in g}
    assert (lrs["embedding"], lrs["head"], lrs["vector"]) == (0.004, 0.002, 0.0005)
    assert lrs["muon"] == (0.001 if optimizer == "adamw" else cfg.muon_lr)
