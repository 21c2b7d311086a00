"""muonkit's Muon + AdamW hybrid in the Hugging Face ``Trainer``: a small GPT-2, on CPU.

The recipe is four lines (``build_optimizer``): param groups from
``muonkit.hybrid_param_groups`` (hidden matrices on Muon; embeddings, the tied head, biases and
norm gains on AdamW; GPT-2's ``Conv1D`` weights, stored ``(in, out)``, get ``transposed=True``
so Muon's LR rule sees ``(out, in)``), ``muonkit.MuonWithAuxAdam``, the LR schedule from
``transformers.get_cosine_schedule_with_warmup``, and ``Trainer(..., optimizers=(opt, sched))``;
it prints ``muonkit.describe``'s table of which parameter trains how.
Checkpoints hold the optimizer's state (``optimizer.pt``); ``--resume`` continues from one.

The model is built from a config (no download): ``GPT2LMHeadModel(GPT2Config(n_layer=2,
n_embd=64, n_head=4, ...))`` on character tokens of the tinyshakespeare text bundled with
muonkit. Needs ``pip install "muonkit[hf]"`` (transformers, accelerate).

    python examples/hf_trainer.py --out runs/hf-gpt2 --steps 200
    python examples/hf_trainer.py --out runs/hf-gpt2 --steps 400 --resume latest
"""

from __future__ import annotations

import argparse

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    get_cosine_schedule_with_warmup,
)

from muonkit import MuonWithAuxAdam, describe, hybrid_param_groups
from muonlab.data.text import load_text


class CharWindows(torch.utils.data.Dataset):
    """Non-overlapping windows of ``block_size`` tokens; GPT-2 shifts the labels itself."""

    def __init__(self, tokens, block_size: int):
        self.tokens = torch.as_tensor(tokens.astype("int64"))
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.tokens) // self.block_size

    def __getitem__(self, i: int) -> dict:
        ids = self.tokens[i * self.block_size : (i + 1) * self.block_size]
        return {"input_ids": ids, "labels": ids}


def build_model(vocab_size: int, block_size: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=vocab_size, n_positions=block_size,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def build_optimizer(model, args) -> tuple[MuonWithAuxAdam, torch.optim.lr_scheduler.LambdaLR]:
    """MuonWithAuxAdam over ``hybrid_param_groups`` and the cosine schedule with warmup."""
    groups = hybrid_param_groups(model, muon_lr=args.muon_lr, adamw_lr=args.adamw_lr)
    optimizer = MuonWithAuxAdam(groups)
    print(describe(optimizer, model).table(max_rows=20))  # which parameter trains how
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup, args.steps)
    return optimizer, scheduler


def build_trainer(args) -> Trainer:
    data = load_text("tinyshakespeare", tokenizer="char")
    train = CharWindows(data.train[: args.max_tokens], args.block_size)
    torch.manual_seed(args.seed)
    model = build_model(data.vocab_size, args.block_size)
    training_args = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        save_steps=args.save_steps,
        logging_steps=args.log_every,
        seed=args.seed,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    return Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        optimizers=build_optimizer(model, args),
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Trainer output_dir (checkpoints)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--save-steps", type=int, default=100)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=200_000, help="training tokens used")
    p.add_argument("--muon-lr", type=float, default=0.02)
    p.add_argument("--adamw-lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None,
                   help="a checkpoint directory, or 'latest' (the newest in --out)")  # fmt: skip
    return p.parse_args(argv)


def main(argv=None) -> Trainer:
    args = parse_args(argv)
    trainer = build_trainer(args)
    resume = True if args.resume == "latest" else args.resume
    trainer.train(resume_from_checkpoint=resume)
    return trainer


if __name__ == "__main__":
    main()
