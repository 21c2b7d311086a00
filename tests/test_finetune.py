"""`muonkit finetune --init-from`: a fine-tuning run starts from the base run's final weights
(its source_val_loss at step 0 is the base's final val_loss), keeps the base's architecture and
vocabulary (a differing flag is refused in one line), and starts its optimizer fresh or with the
base's state carried over (with its own LRs)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from muonkit.schedules import apply_schedules
from muonlab.cli import main
from muonlab.models.gpt import GPT, GPTConfig
from muonlab.models.lora import LoRALinear, add_lora
from muonlab.train.finetune import BaseRun, load_base_state, load_base_weights
from muonlab.train.gpt import gpt_optimizer

SMALL = ["--preset", "tiny", "--batch-size", "2", "--block-size", "16", "--eval-batches", "2",
         "--warmup", "1", "--no-progress", "--tracker", "none", "--threads", "1"]


def records(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def base_run(out, optimizer="adamw", *extra):
    assert main(["train", "--out", str(out), "--optimizer", optimizer, "--steps", "4",
                 "--eval-every", "2", "--checkpoint-every", "2", *SMALL, *extra]) == 0
    return out


def finetune(out, base, *flags):
    return main(["finetune", "--init-from", str(base), "--out", str(out), "--steps", "2",
                 "--eval-every", "1", "--batch-size", "2", "--eval-batches", "2", "--warmup",
                 "1", "--no-progress", "--tracker", "none", "--threads", "1", *flags])


def one_line_error(capsys, argv_call) -> str:
    with pytest.raises(SystemExit) as exit_info:
        argv_call()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_finetune_starts_where_the_base_ended(tmp_path):
    base = base_run(tmp_path / "base")
    assert finetune(tmp_path / "ft", base, "--optimizer", "muon", "--muon-lr", "0.01") == 0
    ft = records(tmp_path / "ft")
    source = [r for r in ft if r["kind"] == "source_val"]
    assert [r["step"] for r in source] == [0, 1, 2]
    assert source[0]["source_val_loss"] == pytest.approx(records(base)[-1]["final_val_loss"],
                                                         abs=1e-5)
    config = ft[0]["config"]
    assert config["model"] == records(base)[0]["config"]["model"]
    assert config["init_from"]["run"] == str(base) and config["init_from"]["state"] == "fresh"


@pytest.mark.parametrize("flags, says", [
    (["--preset", "small"], "--preset: the base run"),
    (["--rope"], "--rope: the base run"),
    (["--block-size", "32"], "--block-size: the base run"),
    (["--optimizer", "muon", "--state", "carry"], "--state carry: the base run was trained "
                                                   "with adamw"),
])  # fmt: skip
def test_flags_that_would_change_the_base_are_refused(tmp_path, capsys, flags, says):
    base = base_run(tmp_path / "base")
    err = one_line_error(capsys, lambda: finetune(tmp_path / "ft", base, *flags))
    assert says in err
    assert not (tmp_path / "ft" / "metrics.jsonl").exists()


def test_data_with_another_vocabulary_and_unfinished_bases_are_refused(tmp_path, capsys):
    base = base_run(tmp_path / "base")
    other = tmp_path / "other.txt"
    other.write_text("0123456789 + = " * 300)
    err = one_line_error(capsys, lambda: finetune(tmp_path / "ft", base, "--data", str(other)))
    assert "vocabulary" in err and "--tokenizer byte" in err
    no_ckpt = tmp_path / "no-ckpt"
    assert main(["train", "--out", str(no_ckpt), "--steps", "2", "--eval-every", "0",
                 *SMALL]) == 0
    err = one_line_error(capsys, lambda: finetune(tmp_path / "ft", no_ckpt))
    assert "no checkpoint" in err and "--checkpoint-every" in err
    early = tmp_path / "early"  # checkpoint at step 2 of 3
    assert main(["train", "--out", str(early), "--steps", "3", "--eval-every", "0",
                 "--checkpoint-every", "2", *SMALL]) == 0
    err = one_line_error(capsys, lambda: finetune(tmp_path / "ft", early))
    assert "checkpoint is at step 2, not its last step (3)" in err


def test_carry_loads_the_base_state_with_the_new_learning_rates(tmp_path):
    base = BaseRun.load(base_run(tmp_path / "base", "muon"))
    model = GPT(GPTConfig(**base.settings["model"]))
    load_base_weights(base, model)
    opt = gpt_optimizer(model, "muon", lr=1e-4, muon_lr=0.001)
    load_base_state(base, model, opt, "muon", "carry")
    saved = base.checkpoint["optimizers"][0]
    # the training loop's schedule sets lr = initial_lr * multiplier: the base's schedule
    # recorded its own initial_lr in the saved groups, and that must not come back with them
    apply_schedules(opt, 0, lr_mult=0.5)
    assert {g["lr"] for g in opt.param_groups if g["use_muon"]} == {0.0005}
    assert {g["lr"] for g in opt.param_groups if not g["use_muon"]} == {5e-5}
    mine = opt.state_dict()["state"]
    assert mine.keys() == saved["state"].keys() and mine
    for index, state in saved["state"].items():
        for key, value in state.items():
            assert torch.equal(mine[index][key], value), (index, key)
    for name, value in base.checkpoint["model"].items():
        assert torch.equal(model.state_dict()[name], value), name
    fresh = GPT(GPTConfig(**base.settings["model"]))
    opt = gpt_optimizer(fresh, "muon")
    load_base_state(base, fresh, opt, "muon", "fresh")
    assert not opt.state_dict()["state"]


def test_lora_starts_at_the_base_function_and_trains_only_the_adapters(tmp_path):
    base = base_run(tmp_path / "base")
    model = GPT(GPTConfig(**BaseRun.load(base).settings["model"]))
    load_base_weights(BaseRun.load(base), model)
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    before = model(x)
    wrapped = add_lora(model, rank=2, alpha=4.0)
    assert len(wrapped) == 4 * model.config.n_layer  # c_attn, attn c_proj, c_fc, mlp c_proj
    assert torch.equal(model(x), before)  # B = 0: the pretrained function exactly
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    opt = gpt_optimizer(model, "muon")
    muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert muon == {id(p) for p in model.parameters() if p.requires_grad}  # LoRA-Muon
    layer = model.blocks[0].attn.c_attn
    assert isinstance(layer, LoRALinear) and not layer.weight.requires_grad

    for optimizer in ("adamw", "muon"):
        out = tmp_path / f"lora-{optimizer}"
        assert finetune(out, base, "--optimizer", optimizer, "--lora-rank", "2",
                        "--checkpoint-every", "2") == 0
        weights = torch.load(out / "ckpt.pt", weights_only=False)["model"]
        for name, value in BaseRun.load(base).checkpoint["model"].items():
            assert torch.equal(weights[name], value), (optimizer, name)  # frozen
        assert any(weights[n].abs().sum() > 0 for n in weights if n.endswith("lora_B"))
        assert records(out)[0]["config"]["lora"]["rank"] == 2


def test_task_finetuning_scores_exact_match_before_and_after(tmp_path):
    base = tmp_path / "base"
    assert main(["train", "--out", str(base), "--tokenizer", "byte", "--steps", "2",
                 "--eval-every", "0", "--checkpoint-every", "2", "--batch-size", "2",
                 "--block-size", "64", "--eval-batches", "2", "--no-progress", "--tracker",
                 "none", "--threads", "1", "--optimizer", "adamw"]) == 0
    out = tmp_path / "ft"
    assert finetune(out, base, "--task", "arithmetic", "--task-train", "12", "--task-test", "3",
                    "--task-max-tokens", "4", "--optimizer", "muon", "--task-max-steps", "2",
                    "--task-max-number", "6") == 0
    evals = [r for r in records(out) if r["kind"] == "task_eval"]
    assert [(r["step"], r["n"], r["task"]) for r in evals] == [(0, 3, "arithmetic"),
                                                                (2, 3, "arithmetic")]
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and (out / "predictions-step0.jsonl").exists()
    assert list(lines[0]) == ["id", "question", "output", "pred", "gold", "correct"]
    task = records(out)[0]["config"]["task"]
    assert task["n_train"] == 12 and task["seed"] == 0
    assert (task["difficulty"]["max_steps"], task["difficulty"]["max_number"]) == (2, 6)
    text = next((out / "task_data").iterdir()).read_text()  # the problems it trained on
    questions = [x for x in text.splitlines() if x.startswith("Question:")]
    assert len(questions) == 12
    assert max(int(n) for q in questions for n in re.findall(r"\d+", q)) <= 6
    assert records(out)[0]["config"]["data"]["tokenizer"] == "byte"


def test_from_adamw_builds_muon_momentum_from_the_base_moments(tmp_path):
    """The hybrid's Muon matrices get exp_avg / (1 - beta1) (standard form), its AdamW groups
    keep the base's moments; the CLI path runs."""
    base = BaseRun.load(base_run(tmp_path / "base"))
    model = GPT(GPTConfig(**base.settings["model"]))
    load_base_weights(base, model)
    opt = gpt_optimizer(model, "muon")
    load_base_state(base, model, opt, "muon", "from-adamw")
    adamw = gpt_optimizer(model, "adamw")
    adamw.load_state_dict(base.checkpoint["optimizers"][0])
    beta1 = adamw.param_groups[0]["betas"][0]
    for group in opt.param_groups:
        for p in group["params"]:
            moments = adamw.state[p]
            if group["use_muon"]:
                expected = moments["exp_avg"] / (1 - beta1)
                assert torch.equal(opt.state[p]["momentum_buffer"], expected)
            else:
                assert torch.equal(opt.state[p]["exp_avg_sq"], moments["exp_avg_sq"])
    assert finetune(tmp_path / "ft", base.run_dir, "--optimizer", "muon", "--state",
                    "from-adamw") == 0
