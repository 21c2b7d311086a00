"""Resume refuses changed settings (issue 22, point 3): every flag that changes the result must
equal the checkpoint's run, else one line per differing flag; flags that cannot change it
(progress, trackers, --steps to train on, ...) may differ and the run continues bit for bit.
Which may differ is declared on the config fields (``may_differ_on_resume``): every other
field, one added later included, is compared."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil

import pytest

from muonlab.cli import build_parser, main
from muonlab.cli.reference import subcommands
from muonlab.cli.train import config_from_args
from muonlab.train.config import TrainConfig, resume_may_differ
from muonlab.train.files import RESUME_MAY_DIFFER, resume_differences, setting_name
from muonlab.train.gpt import FLAG_NAMES, GPTRunConfig, train_gpt

BASE = ["--preset", "tiny", "--batch-size", "2", "--block-size", "8", "--eval-batches", "1",
        "--eval-every", "0", "--warmup", "1", "--steps", "4", "--checkpoint-every", "2",
        "--threads", "1"]
# LoRA-Pre and LoRA adapters, so that --rank, --lora-rank and --lora-alpha count too
RUN = [*BASE, "--optimizer", "lorapre", "--rank", "2", "--lora-rank", "2"]
QUIET = ["--no-progress", "--tracker", "none"]


def train(out, *flags):
    return main(["train", "--out", str(out), *flags])


def records(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def snapshot(out) -> dict:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def stopped_run(out, flags):
    """A 4-step run of ``flags`` whose session stopped at its step-2 checkpoint."""
    args = build_parser().parse_args(["train", "--out", str(out), *flags, *QUIET])
    gpt = config_from_args(args)
    cfg = gpt.train_config(args.optimizer, str(out), 0, checkpoint_every=2, stop_at=2)
    train_gpt(**gpt.train_gpt_kwargs(args.optimizer, cfg))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One stopped run of RUN's flags, shared: every refused resume leaves it as it was."""
    return stopped_run(tmp_path_factory.mktemp("resume") / "run", RUN)


@pytest.fixture(scope="module")
def other_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "other.txt"
    path.write_text("abcdefgh " * 400)
    return str(path)


# A changed value of each GPTRunConfig field that a resume compares, and the one line that
# refuses it (several rows for a field: each must be refused). A field added without a row
# here fails test_every_field_is_compared_or_may_differ: add one, or mark the field
# may_differ_on_resume with the reason it cannot change the result.
REFUSED = [
    ("preset", ["--preset", "small"], "--preset: checkpoint 'tiny', given 'small'"),
    ("data", ["--data", "OTHER"], "--data: checkpoint 'tinyshakespeare', given 'OTHER'"),
    ("tokenizer", ["--tokenizer", "byte"], "--tokenizer: checkpoint 'char', given 'byte'"),
    ("batch_size", ["--batch-size", "3"], "--batch-size: checkpoint 2, given 3"),
    ("grad_accum", ["--grad-accum", "2"], "--grad-accum: checkpoint 1, given 2"),
    ("block_size", ["--block-size", "16"], "--block-size: checkpoint 8, given 16"),
    ("dropout", ["--dropout", "0.1"], "--dropout: checkpoint None, given 0.1"),
    ("rope", ["--rope"], "--rope: checkpoint False, given True"),
    ("untied", ["--untied"], "--untied (weights tied): checkpoint True, given False"),
    ("warmup", ["--warmup", "3"], "--warmup: checkpoint 1, given 3"),
    ("decay", ["--decay", "linear"], "--decay: checkpoint 'cosine', given 'linear'"),
    ("min_lr_ratio", ["--min-lr-ratio", "0.2"], "--min-lr-ratio: checkpoint 0.1, given 0.2"),
    ("grad_clip", ["--grad-clip", "0.5"], "--grad-clip: checkpoint 1.0, given 0.5"),
    ("eval_every", ["--eval-every", "2"], "--eval-every: checkpoint 0, given 2"),
    ("eval_batches", ["--eval-batches", "2"], "--eval-batches: checkpoint 1, given 2"),
    ("dtype", ["--dtype", "bfloat16"], "--dtype: checkpoint 'auto', given 'bfloat16'"),
    ("compile", ["--compile"], "--compile: checkpoint False, given True"),
    ("lr", ["--lr", "0.001"], "--lr: checkpoint 0.0006, given 0.001"),
    ("beta2", ["--beta2", "0.9"], "--beta2: checkpoint [0.9, 0.95], given [0.9, 0.9]"),
    ("weight_decay", ["--weight-decay", "0.2"], "--weight-decay: checkpoint 0.1, given 0.2"),
    ("muon_lr", ["--muon-lr", "0.05"], "--muon-lr: checkpoint 0.02, given 0.05"),
    ("embedding_lr", ["--embedding-lr", "0.05"], "--embedding-lr: checkpoint None, given 0.05"),
    ("vector_lr", ["--vector-lr", "0.05"], "--vector-lr: checkpoint None, given 0.05"),
    # a tied head has no LR of its own: --head-lr is refused before the resume is checked
    ("head_lr", ["--head-lr", "0.05"], None),
    ("muon_momentum", ["--muon-momentum", "0.9"], "--muon-momentum: checkpoint 0.95, given 0.9"),
    ("momentum_warmup", ["--momentum-warmup", "10"],
     "--momentum-warmup: checkpoint 300, given 10"),
    ("muon_weight_decay", ["--muon-weight-decay", "0.1"],
     "--muon-weight-decay: checkpoint 0.0, given 0.1"),
    ("qkv_split", ["--qkv-split"], "--qkv-split: checkpoint False, given True"),
    ("rank", ["--rank", "1"], "--rank: checkpoint 2, given 1"),
    ("lora_rank", ["--lora-rank", "3"], "--lora-rank: checkpoint 2, given 3"),
    ("lora_rank", ["--lora-rank", "0"], "--lora-rank: checkpoint 2, given 0"),
    ("lora_alpha", ["--lora-alpha", "4"], "--lora-alpha: checkpoint 2.0, given 4.0"),
    ("qk_clip", ["--qk-clip", "3"], "--qk-clip: checkpoint None, given 3.0"),
    ("muon_options", ["--ns-steps", "3"], "--ns-steps: checkpoint 5, given 3"),
    # the run's own flags beside GPTRunConfig
    ("optimizer", ["--optimizer", "muon", "--rank", "16"],  # --rank 2: not muon's
     "--optimizer: checkpoint 'lorapre', given 'muon'"),
    ("seed", ["--seed", "1"], "--seed: checkpoint 0, given 1"),
]  # fmt: skip


def test_every_field_is_compared_or_may_differ():
    fields = {f.name for f in dataclasses.fields(GPTRunConfig)}
    assert fields - set(resume_may_differ(GPTRunConfig)) == {f for f, _, _ in REFUSED} & fields
    assert set(resume_may_differ(GPTRunConfig)) == {  # what cannot change the result
        "steps", "device", "peak_flops", "progress", "trackers", "wandb_project",
        "wandb_run_name", "threads"}



def test_every_loop_setting_is_compared_unless_marked():
    """The loop's own settings: each TrainConfig field refuses a resume with another value,
    except those marked may_differ_on_resume."""
    for f in dataclasses.fields(TrainConfig):
        lines = resume_differences({"config": {f.name: 1}}, {f.name: 2})
        assert (lines == []) == (f.name in RESUME_MAY_DIFFER), f.name
    assert RESUME_MAY_DIFFER == set(resume_may_differ(TrainConfig))
    assert {"progress", "trackers", "out_dir", "steps"} <= RESUME_MAY_DIFFER


@pytest.mark.parametrize("field, flags, line", REFUSED, ids=[" ".join(r[1]) for r in REFUSED])
def test_a_changed_flag_is_refused_in_one_line(run, other_text, capsys, field, flags, line):
    flags = [other_text if f == "OTHER" else f for f in flags]
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        train(run, *RUN, *QUIET, "--resume", *flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    head, *lines = err.splitlines()
    if line is None:
        assert not lines and "does nothing" in head, err
    else:
        assert head.startswith(f"muonkit train: error: cannot resume the run in {run}: "
                               "1 setting")
        assert lines == ["  " + line.replace("OTHER", other_text)]
    assert snapshot(run) == before


def test_several_changed_flags_give_a_line_each(run, capsys):
    with pytest.raises(SystemExit):
        train(run, *RUN, *QUIET, "--resume", "--muon-lr", "0.05", "--seed", "3", "--rope")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("muonkit train: error: cannot resume the run in")
    assert sorted(x.strip() for x in err[1:]) == [
        "--muon-lr: checkpoint 0.02, given 0.05", "--rope: checkpoint False, given True",
        "--seed: checkpoint 0, given 3"]


def test_flags_that_cannot_change_the_result_may_differ(run, tmp_path):
    """Progress bar, trackers and how often checkpoints are written differ on resume; the
    run ends bit for bit where one uninterrupted run with the first flags ends."""
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    assert train(resumed, *RUN, "--resume", "--tracker", "tensorboard", "--checkpoint-every",
                 "1", "--wandb-project", "other") == 0
    whole = tmp_path / "whole"
    assert train(whole, *RUN, *QUIET) == 0
    final = [records(d)[-1]["final_val_loss"] for d in (resumed, whole)]
    assert final[0] == final[1]
    losses = [[r["loss"] for r in records(d) if r["kind"] == "train"] for d in (resumed, whole)]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_a_larger_steps_trains_on_and_the_session_records_it(run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    assert train(resumed, *RUN, *QUIET, "--resume", "--steps", "6") == 0
    recs = records(resumed)
    (session,) = [r for r in recs if r["kind"] == "session"]
    assert recs[0]["config"]["steps"] == 4  # the first session's plan, as it was
    assert session["start_step"] == 2 and session["steps"] == 6
    assert recs[-1]["steps"] == 6


def test_data_with_other_contents_at_the_same_path_is_refused(tmp_path, capsys):
    """Same file, same size and vocabulary, other text: its token hash tells them apart."""
    text = tmp_path / "text.txt"
    words = ["to be", "or not", "that is", "the question"] * 60
    text.write_text(" ".join(words))
    out = stopped_run(tmp_path / "run", [*BASE, "--data", str(text)])
    random.Random(0).shuffle(words)
    text.write_text(" ".join(words))
    with pytest.raises(SystemExit) as exit_info:
        train(out, *BASE, *QUIET, "--data", str(text), "--resume")
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()[1:]
    recorded = records(out)[0]["config"]["data"]["token_hash"]
    assert line.startswith(f"  --data (its contents): checkpoint {recorded!r}, given '")


def test_the_resume_help_names_the_flags_that_may_differ():
    """Each field marked may_differ_on_resume is named by a flag `muonkit train` has, in the
    help of --resume."""
    command = subcommands(build_parser())["train"]
    options = {o for action in command._actions for o in action.option_strings}
    (resume,) = [a for a in command._actions if "--resume" in a.option_strings]
    may_differ = resume.help.split("These may differ:")[1]
    for name in resume_may_differ(GPTRunConfig):
        flag = setting_name(name, FLAG_NAMES)
        assert flag in options and f" {flag}," in may_differ, flag


def test_resume_differences_skips_what_may_differ_and_what_the_record_lacks():
    recorded = {"optimizer": "muon", "config": {"steps": 4, "progress": False, "seed": 0,
                                                "optimizer_options": {"muon_lr": 0.02}}}
    given = {"optimizer": "muon", "steps": 8, "progress": True, "seed": 0, "new_field": 1,
             "optimizer_options": {"muon_lr": 0.02, "betas": (0.9, 0.95)}}
    assert resume_differences(recorded, given) == []
    given["optimizer_options"]["muon_lr"] = 0.03
    assert resume_differences(recorded, given) == ["--muon-lr: checkpoint 0.02, given 0.03"]


def test_derived_facts_are_named_only_when_no_setting_differs():
    recorded = {"optimizer": "muon", "config": {"preset": "tiny", "model": {"n_layer": 4},
                                                "data": {"source": "a", "token_hash": "1"}}}
    given = {"optimizer": "muon", "preset": "small", "model": {"n_layer": 6},
             "data": {"source": "a", "token_hash": "1"}}
    names = {"model.n_layer": "--preset", "data.token_hash": "--data (its contents)"}
    derived = ("model", "data.token_hash")
    assert resume_differences(recorded, given, names, derived) == [
        "--preset: checkpoint 'tiny', given 'small'"]
    given.update(preset="tiny", model={"n_layer": 4}, data={"source": "a", "token_hash": "2"})
    assert resume_differences(recorded, given, names, derived) == [
        "--data (its contents): checkpoint '1', given '2'"]


def test_an_untied_run_refuses_a_changed_head_lr(tmp_path, capsys):
    """The head's own LR (``--head-lr``, an untied head only) is compared like every other."""
    out = stopped_run(tmp_path / "untied", [*RUN, "--untied"])
    with pytest.raises(SystemExit) as exit_info:
        train(out, *RUN, "--untied", *QUIET, "--resume", "--head-lr", "0.05")
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2
    assert err[1:] == ["  --head-lr: checkpoint None, given 0.05"]
