"""The GPT training loop under torchrun: gloo, CPU, tiny preset, a few steps.

DDP (DistributedMuonWithAuxAdam: replicated matrices) and FSDP2 (MuonWithAuxAdam on
DTensors: sharded) on 2 processes see the same per-rank batches and average the same
gradients, through different collectives and layouts, so they must reach the same validation
loss. The FSDP2 run checkpoints (DCP) at step 2; resuming from there must end exactly where it
ended. HSDP on 4 processes launched as two simulated nodes must end where one node ends.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from muonkit.distributed import free_port
from muonlab.train.gpt import train_gpt
from muonlab.train.loop import TrainConfig

STEPS = 3
QK_CLIP = ("--qk-clip", "0.2")


def train_command(parallel: str, out, *extra: str, launch=("--standalone",), nproc=2):
    return [
        sys.executable, "-m", "torch.distributed.run", *launch, f"--nproc_per_node={nproc}",
        "-m", "muonkit", "train", "--parallel", parallel, "--preset", "tiny",
        "--steps", str(STEPS), "--batch-size", "4", "--warmup", "0", "--eval-every", "0",
        "--eval-batches", "2", "--device", "cpu", "--no-progress", "--tracker", "none",
        "--out", str(out), *extra,
    ]  # fmt: skip


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def first_val_loss(records: list[dict]) -> float:
    return next(r["val_loss"] for r in records if r["kind"] == "val")


def torchrun_train(parallel: str, out, *extra: str, nproc: int = 2) -> list[dict]:
    cmd = train_command(parallel, out, *extra, nproc=nproc)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final val loss") == 1, "only rank 0 reports"
    return records(out)


@pytest.mark.timeout(300)
def test_torchrun_gpt_ddp_and_fsdp2_agree_and_resume(tmp_path):
    """With QK-clip on too (tau below the first logits: every step clips; issue 26)."""
    runs = {
        "ddp": torchrun_train("ddp", tmp_path / "ddp", *QK_CLIP),
        "fsdp2": torchrun_train("fsdp2", tmp_path / "fsdp2", "--checkpoint-every", "2", *QK_CLIP),
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
        assert records[-1]["final_val_loss"] < first_val_loss(records), "it learns"
    assert abs(finals["ddp"] - finals["fsdp2"]) < 1e-4, finals
    # the health of the last step: the same under both layouts (FSDP2's from DTensor shards)
    (ddp, fsdp2) = ([r for r in runs[p] if r["kind"] == "health"] for p in ("ddp", "fsdp2"))
    assert [r["step"] for r in ddp] == [r["step"] for r in fsdp2] == [STEPS]
    assert ddp[0]["muon_stepped"] == fsdp2[0]["muon_stepped"] == {"muon": 1.0}
    assert ddp[0]["ns_error"]["param"] == fsdp2[0]["ns_error"]["param"]
    assert fsdp2[0]["ns_error"]["value"] == pytest.approx(ddp[0]["ns_error"]["value"], rel=1e-3)
    assert fsdp2[0]["update_rms"] == pytest.approx(ddp[0]["update_rms"], rel=1e-3)
    clipped = [[r for r in runs[p] if r["kind"] == "max_logits"][-1] for p in runs]
    assert all(max(r["step_layers"]) > r["tau"] == 0.2 for r in clipped), clipped
    assert clipped[0]["layers"] == pytest.approx(clipped[1]["layers"], abs=1e-4)
    metrics = tmp_path / "fsdp2" / "metrics.jsonl"  # as if killed before the summary line:
    metrics.write_text("".join(metrics.read_text().splitlines(True)[:-1]))  # not finished
    resumed = torchrun_train("fsdp2", tmp_path / "fsdp2", "--checkpoint-every", "2", "--resume",
                             *QK_CLIP)
    assert [r["step"] for r in resumed if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert resumed[-1]["final_val_loss"] == finals["fsdp2"]


def test_parallel_without_process_group_is_a_clear_error():
    with pytest.raises(ValueError, match="initialized torch.distributed process group"):
        train_gpt(
            "muon", train_config=TrainConfig(steps=1, progress=False), parallel="fsdp2"
        )


@pytest.mark.timeout(400)
def test_hsdp_on_two_simulated_nodes_matches_one_node(tmp_path):
    """The README's multi-node recipe on one machine: two torchrun launches (--nnodes 2,
    --node_rank 0/1, rendezvous on 127.0.0.1), 2 processes each, HSDP with the two replicas on
    the two "nodes"; it must end exactly where the single-node 4-process HSDP run ends."""
    one = torchrun_train("hsdp", tmp_path / "one", "--replicate", "2", nproc=4)
    port = str(free_port())
    launch = ["--nnodes=2", "--master_addr=127.0.0.1", f"--master_port={port}"]
    nodes = [
        subprocess.Popen(
            train_command("hsdp", tmp_path / "two", "--replicate", "2",
                          launch=(*launch, f"--node_rank={r}")),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=200) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:]
    assert outputs[0][0].count("final val loss") == 1 and "final val loss" not in outputs[1][0]
    two = records(tmp_path / "two")
    for run in (one, two):
        assert run[0]["config"]["parallel"] == "hsdp" and run[0]["config"]["world_size"] == 4
        assert run[0]["config"]["replicate"] == 2 and run[0]["provenance"]["world_size"] == 4
    assert two[-1]["final_val_loss"] == one[-1]["final_val_loss"]
    assert one[-1]["final_val_loss"] < first_val_loss(one), "it learns"
