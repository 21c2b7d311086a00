"""Newton-Schulz FLOPs per GPT step in compare's cost table, against the products counted."""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from muonlab.models.gpt import GPT, GPTConfig
from muonlab.report.ns_cost import gpt_step_flops
from muonlab.train.gpt import gpt_optimizer

SMALL = dict(vocab_size=65, n_layer=2, n_head=2, n_embd=32, block_size=16)


def run_record(config, optimizer="muon", **options):
    return {
        "optimizer": optimizer,
        "config": {
            "model": dataclasses.asdict(config),
            "batch_size": 4,
            "grad_accum": 3,
            "world_size": 1,
            "optimizer_options": options,
        },
    }


@pytest.mark.parametrize("options", [{}, {"qkv_split": True}])
def test_ns_flops_equal_the_products_one_muon_step_runs(options):
    config = GPTConfig(**SMALL)
    model = GPT(config)
    opt = gpt_optimizer(model, "muon", **options)
    x = torch.randint(0, 65, (2, 16))
    model(x).square().mean().backward()
    with FlopCounterMode(display=False) as counter:
        opt.step()  # the only matrix products of a step are Newton-Schulz's
    cost = gpt_step_flops(run_record(config, **options))
    assert cost["ns"] == counter.get_total_flops()
    tokens = 4 * 16 * 3
    assert cost["model"] == model.estimate_flops_per_token() * tokens
    assert cost["fraction"] == pytest.approx(cost["ns"] / cost["model"])


def test_no_figure_for_adamw_or_non_gpt_runs():
    config = GPTConfig(**SMALL)
    assert gpt_step_flops(run_record(config, optimizer="adamw")) is None
    assert gpt_step_flops({"optimizer": "muon", "config": {}}) is None  # not a GPT run
    assert gpt_step_flops(run_record(config, ns_coefficients="svd")) is None
