"""examples/hf_trainer.py: MuonWithAuxAdam in the Hugging Face Trainer, checkpoint and resume.

The reference for resume is the checkpoint's own optimizer.pt (the state loaded must be it,
tensor for tensor) and the uninterrupted run (a resumed run ends with the same weights and
optimizer state, to fp32 tolerance)."""

import copy

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from example_scripts import load_example  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

ARGS = ["--steps", "6", "--save-steps", "3", "--log-every", "3", "--batch-size", "4",
        "--block-size", "32", "--max-tokens", "4000", "--warmup", "2"]  # fmt: skip


class OptimizerProbe(TrainerCallback):
    """The optimizer's state dict when training begins (after a resume has loaded it)."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.state_dict = copy.deepcopy(optimizer.state_dict())


def assert_same_state(got: dict, want: dict, exact: bool) -> None:
    assert got["param_groups"] == want["param_groups"]
    assert got["state"].keys() == want["state"].keys()
    for k, state in want["state"].items():
        assert state.keys() == got["state"][k].keys()
        for name, t in state.items():
            if exact:
                assert torch.equal(got["state"][k][name], t), (k, name)
            else:
                torch.testing.assert_close(got["state"][k][name], t, rtol=1e-5, atol=1e-6)


def test_trainer_resume_restores_optimizer_state_and_equals_an_uninterrupted_run(tmp_path):
    hf = load_example("hf_trainer")
    straight = hf.main(["--out", str(tmp_path / "a"), *ARGS])
    roles = {g["role"]: g for g in straight.optimizer.param_groups}
    assert roles["muon_transposed"]["transposed"] is True  # GPT-2's Conv1D weights
    assert "muon" not in roles and {"embedding", "vector"} <= roles.keys()

    checkpoint = tmp_path / "a" / "checkpoint-3"
    resumed = hf.build_trainer(hf.parse_args(["--out", str(tmp_path / "b"), *ARGS]))
    probe = OptimizerProbe()
    resumed.add_callback(probe)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert any("momentum_buffer" in s for s in saved["state"].values())
    assert any("exp_avg_sq" in s for s in saved["state"].values())
    assert_same_state(probe.state_dict, saved, exact=True)

    for (name, p), (_, q) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters()
    ):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    final = [torch.load(tmp_path / run / "checkpoint-6" / "optimizer.pt", weights_only=True)
             for run in ("a", "b")]  # fmt: skip
    assert_same_state(final[1], final[0], exact=False)


def test_the_example_prints_which_parameter_trains_how(capsys):
    hf = load_example("hf_trainer")
    args = hf.parse_args(["--out", "unused", "--block-size", "32"])
    hf.build_optimizer(hf.build_model(65, args.block_size), args)
    table = capsys.readouterr().out
    assert table.startswith("parameter")
    assert "transformer.h.*.attn.c_attn.weight x2" in table and "stored (in, out)" in table
    assert "transformer.wte.weight" in table and "totals: Muon 8 tensors" in table
