"""Training-step time of the tiny GPT with AdamW and with the Muon hybrid, interleaved.

Usage: ``python benchmarks/gpt_step.py [--rounds N] [--threads T] [--preset tiny] [--device cuda]``;
writes its section of docs/results/benchmarks.md (fragment ``docs/results/bench/gpt_step-<machine
kind>.md`` + json, one per machine kind as step_time's: ``no-native-bf16``, ``native-bf16``,
``cuda``; on a GPU the forward runs under bf16 autocast as in training and
every timed call ends with a device synchronize).

Both optimizers get their own copy of the same model (same initial weights) and the same
batch; each round runs one full step of each (forward, backward, optimizer step, zero_grad)
in a fresh random order, so load from other processes falls on both alike. Also timed alone,
interleaved the same way: forward+backward, each optimizer's step, and the hybrid's
Newton-Schulz calls by themselves (the Muon matrices' gradients, batched by shape as the
optimizer batches them). Reported: medians and minima, the hybrid/AdamW step ratio, and the
Newton-Schulz FLOPs per step as a fraction of the model's forward+backward FLOPs
(:func:`muonlab.report.ns_cost.gpt_step_flops`, the figure compare's cost table shows).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import time

import torch
from common import (
    MACHINE_NAMES,
    hardware,
    machine_label,
    markdown_table,
    provenance,
    sync,
    write_fragment,
)

from muonkit.functional import orthogonalize_updates
from muonkit.options import MuonOptions
from muonlab.data.text import TokenBatches, load_text
from muonlab.models.gpt import GPT, preset_config
from muonlab.report.ns_cost import gpt_step_flops
from muonlab.train.config import resolve_dtype
from muonlab.train.gpt import gpt_optimizer, lm_loss
from muonlab.train.step import autocast_context

NS_DTYPES = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "mixed": "mixed"}


def build(kind: str, preset: str, vocab: int, seed: int, device: torch.device, ns_dtype="auto"):
    torch.manual_seed(seed)
    model = GPT(preset_config(preset, vocab_size=vocab)).to(device)
    options = {} if kind == "adamw" else {"ns_dtype": ns_dtype}
    return model, gpt_optimizer(model, kind, lr=1e-3, **options)


def loss_of(model, batch):
    device = batch[0].device
    with autocast_context(device, resolve_dtype("auto", device)):  # as the training loop
        return lm_loss(model, batch)


def full_step(model, opt, batch) -> None:
    loss_of(model, batch).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fns: dict, rounds: int, rng: random.Random, device: torch.device) -> dict[str, list]:
    """ms per call of each function, interleaved in a fresh random order every round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        order = list(fns)
        rng.shuffle(order)
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(1e3 * (time.perf_counter() - t0))
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--ns-dtype", default="auto", choices=list(NS_DTYPES),
                    help="the hybrid's Newton-Schulz precision (auto: as the optimizer picks)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = random.Random(0)
    data = load_text()
    adamw, muon = (
        build(k, args.preset, data.vocab_size, 0, device, NS_DTYPES[args.ns_dtype])
        for k in ("adamw", "muon")
    )
    block = adamw[0].config.block_size
    batch = TokenBatches(data.train, args.batch_size, block, seed=0, split="train").next_batch()
    batch = tuple(t.to(device) for t in batch)
    for _ in range(args.warmup):
        full_step(*adamw, batch)
        full_step(*muon, batch)
    loss_of(muon[0], batch).backward()
    muon_group = next(g for g in muon[1].param_groups if g["use_muon"])
    muon_grads = [p.grad.clone() for p in muon_group["params"]]
    options = MuonOptions.from_group(muon_group)
    muon[1].zero_grad(set_to_none=True)

    def forward_backward():
        muon[0].zero_grad(set_to_none=True)
        loss_of(muon[0], batch).backward()

    load0 = os.getloadavg()[0]
    steps = timed(
        {"adamw": lambda: full_step(*adamw, batch), "muon": lambda: full_step(*muon, batch)},
        args.rounds,
        rng,
        device,
    )
    parts = timed(
        {
            "forward+backward": forward_backward,
            "Newton-Schulz alone": lambda: orthogonalize_updates(muon_grads, options),
        },
        args.rounds,
        rng,
        device,
    )
    load1 = os.getloadavg()[0]
    run = {
        "optimizer": "muon",
        "config": {
            "model": dataclasses.asdict(muon[0].config),
            "batch_size": args.batch_size,
            "optimizer_options": {"ns_dtype": NS_DTYPES[args.ns_dtype]},  # the FLOPs it ran
        },
    }
    data_out = {
        "hardware": hardware(device),
        "provenance": provenance(device),
        "args": vars(args),
        "loadavg_1min": [load0, load1],
        "ns_precision": "; ".join(muon[1].ns_precision().values()),
        "flops": gpt_step_flops(run),
        "ms": {
            k: {"median": statistics.median(v), "min": min(v)}
            for k, v in {**steps, **parts}.items()
        },
    }
    ms = data_out["ms"]
    data_out["ratio_median"] = ms["muon"]["median"] / ms["adamw"]["median"]
    data_out["ratio_min"] = ms["muon"]["min"] / ms["adamw"]["min"]
    md = render(data_out)
    print(md)
    if not args.no_write:
        name = f"gpt_step-{machine_label(data_out['hardware'])}"
        if args.ns_dtype != "auto":
            name += f"-ns_{args.ns_dtype}"
        print(f"wrote {write_fragment(name, md, data_out)}")
    return 0


def render(d: dict) -> str:
    hw, ms, f = d["hardware"], d["ms"], d["flops"]
    rows = [[name, f"{v['median']:.2f}", f"{v['min']:.2f}"] for name, v in ms.items()]
    return "\n".join([
        f"## GPT training step ({d['args']['preset']}, {MACHINE_NAMES[machine_label(hw)]}, "
        f"Newton-Schulz {d['ns_precision']}): AdamW vs the Muon hybrid "
        "(`benchmarks/gpt_step.py`)\n",
        f"Measured {hw['date_utc']} on {hw.get('gpu') or hw['cpu']} (device {hw['device']}; "
        f"PyTorch CPU capability "
        f"{hw['cpu_capability']}, native bf16: {'yes' if hw['cpu_native_bf16'] else 'no'}; "
        f"{d['args']['threads']} torch thread(s); 1-min load {d['loadavg_1min'][0]:.1f} -> "
        f"{d['loadavg_1min'][1]:.1f}). Preset `{d['args']['preset']}`, batch "
        f"{d['args']['batch_size']}, {d['args']['rounds']} interleaved rounds. Newton-Schulz: "
        f"{d['ns_precision']}.\n",
        markdown_table(["ms", "median", "min"], rows),
        f"Hybrid step / AdamW step: **{d['ratio_median']:.3f}** (medians), "
        f"{d['ratio_min']:.3f} (minima). Newton-Schulz FLOPs per step: {f['ns'] / 1e9:.2f} "
        f"GFLOP, {f['fraction']:.0%} of the model's forward+backward "
        f"({f['model'] / 1e9:.2f} GFLOP).\n",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
