"""`muonkit finetune` under torchrun (gloo, CPU, 2 ranks, tiny sizes).

The fine-tuning data of the weight comparisons is one repeated byte: every window of it is
the same tokens, so each rank's batch is the single process's batch and the ranks' averaged
gradient is its gradient. A DDP or FSDP2 fine-tuning run must then end with the single
process's weights; one whose base optimizer state were lost or mis-sharded would not. The
task run is scored by rank 0 alone: its predictions must be what one process decodes from the
same weights (read back from its DCP checkpoint).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp

from muonlab.cli import main
from muonlab.data.text import load_text
from muonlab.models.gpt import GPT, GPTConfig
from muonlab.models.lora import add_lora
from muonlab.train.finetune import Task
from muonlab.train.task_eval import evaluate_task

SMALL = ["--batch-size", "2", "--eval-batches", "2", "--warmup", "1", "--eval-every", "1",
         "--no-progress", "--tracker", "none", "--threads", "1", "--checkpoint-every", "2"]
TASK = ["--task", "arithmetic", "--task-train", "40", "--task-test", "3",
        "--task-max-tokens", "4"]


def records(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def finetune_args(out, base, *flags) -> list[str]:
    return ["finetune", "--init-from", str(base), "--out", str(out), "--steps", "2", *SMALL,
            *flags]


def torchrun_finetune(parallel: str, out, base, *flags) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "muonkit", *finetune_args(out, base, *flags), "--parallel", parallel]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final val loss") == 1, "only rank 0 reports"


def dcp_weights(out, model: torch.nn.Module) -> dict:
    """The model weights of a multi-rank run's checkpoint, read by one process."""
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(out / "ckpt_dcp"))
    return state["model"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An AdamW base with a byte vocabulary (any text fits it) and room for the task's
    prompts in its context (so the task decodes through the key/value cache)."""
    out = tmp_path_factory.mktemp("base") / "base"
    assert main(["train", "--out", str(out), "--optimizer", "adamw", "--tokenizer", "byte",
                 "--preset", "tiny", "--block-size", "512", "--steps", "2", *SMALL]) == 0
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("parallel,flags", [
    ("ddp", ["--optimizer", "muon", "--state", "from-adamw"]),
    ("fsdp2", ["--optimizer", "adamw", "--state", "carry"]),
])
def test_finetune_under_torchrun_ends_where_one_process_ends(tmp_path, base, parallel, flags):
    data = tmp_path / "a.txt"
    data.write_text("a" * 12000)
    torchrun_finetune(parallel, tmp_path / parallel, base, "--data", str(data), *flags)
    assert main(finetune_args(tmp_path / "one", base, "--data", str(data), *flags)) == 0
    one = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=False)["model"]
    config = GPTConfig(**records(base)[0]["config"]["model"])
    many = dcp_weights(tmp_path / parallel, GPT(config))
    assert one.keys() == many.keys()
    for name in one:
        torch.testing.assert_close(many[name], one[name], atol=1e-5, rtol=0, msg=name)
    (ran, single) = (records(tmp_path / p) for p in (parallel, "one"))
    assert ran[0]["config"]["parallel"] == parallel
    assert ran[0]["config"]["init_from"]["state"] == flags[-1]
    source = [[r["source_val_loss"] for r in run if r["kind"] == "source_val"]
              for run in (ran, single)]
    assert len(source[0]) == 3 and source[0] == pytest.approx(source[1], abs=1e-5)
    assert source[0][0] == pytest.approx(records(base)[-1]["final_val_loss"], abs=1e-5)


@pytest.mark.timeout(300)
def test_fsdp2_lora_task_is_scored_once_as_one_process_scores_it(tmp_path, base):
    torchrun_finetune("fsdp2", tmp_path / "fsdp2", base, *TASK, "--lora-rank", "2",
                      "--optimizer", "muon")
    assert main(finetune_args(tmp_path / "one", base, *TASK, "--lora-rank", "2",
                              "--optimizer", "muon")) == 0
    ran = tmp_path / "fsdp2"
    start = (ran / "predictions-step0.jsonl").read_text()
    assert start == (tmp_path / "one" / "predictions-step0.jsonl").read_text()  # the base's
    model = GPT(GPTConfig(**records(base)[0]["config"]["model"]))
    add_lora(model, 2, 2.0)
    model.load_state_dict(dcp_weights(ran, model))
    task = Task.make("arithmetic", None, 0, 40, 3, 4)
    tokens = load_text(str(next((ran / "task_data").iterdir())), "byte")
    evals = [r for r in records(ran) if r["kind"] == "task_eval"]
    result = evaluate_task(model, tokens.encode, tokens.decode, task.test, tmp_path / "p.jsonl",
                           max_new_tokens=4)
    assert (ran / "predictions.jsonl").read_text() == (tmp_path / "p.jsonl").read_text()
    assert [r["step"] for r in evals] == [0, 2] and evals[-1]["correct"] == result["correct"]
    assert sorted(p.name for p in ran.glob("predictions*")) == ["predictions-step0.jsonl",
                                                                 "predictions.jsonl"]
