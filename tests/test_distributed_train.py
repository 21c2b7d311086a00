"""The GPT training loop under torchrun: 2 processes, gloo, CPU, tiny preset, a few steps.

DDP (DistributedMuonWithAuxAdam: owners + all-gather) and FSDP2 (MuonWithAuxAdam on DTensors:
all-to-all) see the same per-rank batches and average the same gradients, through different
collectives and code paths, so they must reach the same validation loss. The FSDP2 run
checkpoints (DCP) at step 2; resuming from there must end exactly where it ended.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from muonkit.train.gpt import train_gpt
from muonkit.train.loop import TrainConfig

STEPS = 3


def torchrun_train(parallel: str, out, *extra: str) -> list[dict]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "muonkit", "train", "--parallel", parallel, "--preset", "tiny",
        "--steps", str(STEPS), "--batch-size", "4", "--warmup", "0", "--eval-every", "0",
        "--eval-batches", "2", "--device", "cpu", "--no-progress", "--no-tensorboard",
        "--out", str(out), *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final val loss") == 1, "only rank 0 reports"
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(300)
def test_torchrun_gpt_ddp_and_fsdp2_agree_and_resume(tmp_path):
    runs = {
        "ddp": torchrun_train("ddp", tmp_path / "ddp"),
        "fsdp2": torchrun_train("fsdp2", tmp_path / "fsdp2", "--checkpoint-every", "2"),
    }
    assert (tmp_path / "fsdp2" / "ckpt_dcp" / "rank1.pt").exists()
    finals = {}
    for parallel, records in runs.items():
        assert records[0]["config"]["parallel"] == parallel
        assert records[0]["config"]["world_size"] == 2
        train = [r for r in records if r["kind"] == "train"]
        assert [r["step"] for r in train] == list(range(1, STEPS + 1))
        assert train[-1]["tokens"] == STEPS * 2 * 4 * 64  # steps x ranks x batch x block
        finals[parallel] = records[-1]["final_val_loss"]
        assert records[-1]["final_val_loss"] < records[1]["val_loss"], "it learns"
    assert abs(finals["ddp"] - finals["fsdp2"]) < 1e-4, finals
    metrics = tmp_path / "fsdp2" / "metrics.jsonl"  # as if killed before the summary line:
    metrics.write_text("".join(metrics.read_text().splitlines(True)[:-1]))  # not finished
    resumed = torchrun_train("fsdp2", tmp_path / "fsdp2", "--checkpoint-every", "2", "--resume")
    assert [r["step"] for r in resumed if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert resumed[-1]["final_val_loss"] == finals["fsdp2"]


def test_parallel_without_process_group_is_a_clear_error():
    with pytest.raises(ValueError, match="initialized torch.distributed process group"):
        train_gpt(
            "muon", train_config=TrainConfig(steps=1, progress=False), parallel="fsdp2"
        )
