"""muonkit's Muon + AdamW hybrid in Lightning: a LightningModule around muonkit's tiny GPT.

``configure_optimizers`` returns ``MuonWithAuxAdam`` over ``hybrid_param_groups`` and a
``LambdaLR`` of ``muonkit.schedules.lr_multiplier`` (linear warmup, cosine decay), stepped
every optimizer step. Muon's momentum warmup (``muonkit.schedules.muon_momentum``, 0.85 ->
0.95) is a pure function of the step, set before each step in ``on_train_batch_start`` by
``apply_schedules(..., lr_mult=None)`` (which leaves the LR to the LambdaLR), so a resumed run
needs nothing saved for it. The training loss goes to ``OUT/logs/version_N/metrics.csv``
(Lightning's CSVLogger, every ``--log-every`` steps). Lightning checkpoints hold the optimizer
and scheduler state; ``--resume`` continues from one (``Trainer.fit(..., ckpt_path=...)``).

More than one process (``--devices N``, CPU processes talking gloo), muonkit's distributed path:

* ``--strategy ddp``: the optimizer is ``muonkit.distributed.DistributedMuonWithAuxAdam``: DDP
  all-reduces the gradients, then each matrix is orthogonalized on one rank, sent to all.
* ``--strategy fsdp2``: Lightning's ``ModelParallelStrategy``; ``configure_model`` applies
  FSDP2's ``fully_shard`` (each block, then the root), so the parameters are DTensors and
  ``MuonWithAuxAdam`` takes muonkit's sharded step by itself (each matrix gathered whole on
  one rank, orthogonalized, its shards sent back).

Lightning's ``strategy="fsdp"`` is FSDP1: it flattens parameters into 1-D shards that carry no
record of their matrix, so Muon cannot orthogonalize whole matrices there; use ``fsdp2``.

Needs ``pip install "muonkit[lightning]"``. On CPU, 2 processes (gloo):

    python examples/lightning_gpt.py --out runs/lightning-gpt --steps 200
    python examples/lightning_gpt.py --out runs/lightning-gpt --devices 2 --strategy ddp
    python examples/lightning_gpt.py --out runs/lightning-fsdp2 --devices 2 --strategy fsdp2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch.distributed.fsdp import fully_shard

from muonkit import MuonWithAuxAdam, hybrid_param_groups
from muonkit.distributed import DistributedMuonWithAuxAdam
from muonkit.schedules import apply_schedules, lr_multiplier, muon_momentum
from muonlab.data.text import load_text
from muonlab.models.gpt import GPT, preset_config

STRATEGIES = ("auto", "ddp", "fsdp2")


class TokenWindows(torch.utils.data.Dataset):
    """Non-overlapping (input, next-token target) windows of ``block_size`` tokens."""

    def __init__(self, tokens, block_size: int):
        self.tokens = torch.as_tensor(tokens.astype("int64"))
        self.block_size = block_size

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int):
        start = i * self.block_size
        chunk = self.tokens[start : start + self.block_size + 1]
        return chunk[:-1], chunk[1:]


class OrderedWindows(L.LightningDataModule):
    """The windows in order; each of W processes reads every W-th one (its rank's), so W
    processes with batch B see, step by step, the windows one process with batch W * B sees
    (Lightning's own distributed sampler would shuffle them)."""

    def __init__(self, windows: TokenWindows, batch_size: int):
        super().__init__()
        self.windows, self.batch_size = windows, batch_size

    def train_dataloader(self):
        sampler = torch.utils.data.DistributedSampler(
            self.windows, self.trainer.world_size, self.trainer.global_rank, shuffle=False
        )
        return torch.utils.data.DataLoader(self.windows, self.batch_size, sampler=sampler)


class GPTModule(L.LightningModule):
    """muonkit's GPT (``preset_config("tiny")`` made smaller) trained with the Muon hybrid."""

    def __init__(self, vocab_size: int, *, block_size: int = 32, n_layer: int = 2,
                 n_embd: int = 64, n_head: int = 4, muon_lr: float = 0.02,
                 adamw_lr: float = 3e-3, warmup: int = 20, total_steps: int = 200,
                 momentum_warmup: int = 100):  # fmt: skip
        super().__init__()
        self.save_hyperparameters()
        self.model = GPT(preset_config("tiny", vocab_size=vocab_size, block_size=block_size,
                                       n_layer=n_layer, n_embd=n_embd, n_head=n_head))  # fmt: skip

    def configure_model(self):
        """Under ``--strategy fsdp2`` (a device mesh exists): FSDP2 on each block, then the root
        (as ``muonkit.distributed.parallel.parallelize``); the optimizer is built after."""
        if self.device_mesh is None:
            return
        mesh = self.device_mesh["data_parallel"]
        for block in self.model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        h = self.hparams
        groups = hybrid_param_groups(self.model, muon_lr=h.muon_lr, adamw_lr=h.adamw_lr)
        replicated = isinstance(self.trainer.strategy, DDPStrategy) and self.trainer.world_size > 1
        optimizer = (DistributedMuonWithAuxAdam if replicated else MuonWithAuxAdam)(groups)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_multiplier(step, total_steps=h.total_steps, warmup_steps=h.warmup),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_batch_start(self, batch, batch_idx):
        momentum = muon_momentum(self.global_step, warmup_steps=self.hparams.momentum_warmup)
        # lr_mult=None: the LambdaLR sets the LR; this sets only the Muon groups' momentum
        apply_schedules(self.trainer.optimizers[0], self.global_step, lr_mult=None,
                        muon_momentum=momentum)

    def on_train_end(self):
        """Record which optimizer ran and how many matrices this rank orthogonalized."""
        optimizer = self.trainer.optimizers[0]
        info = dict(optimizer=type(optimizer).__name__, world_size=self.trainer.world_size,
                    ns_count=sum(optimizer.ns_counts.values()), steps=self.global_step)  # fmt: skip
        out = Path(self.trainer.default_root_dir) / f"run_rank{self.global_rank}.json"
        out.write_text(json.dumps(info))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="run directory (checkpoints, final.ckpt)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batches-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--devices", type=int, default=1, help="CPU processes")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto")
    p.add_argument("--muon-lr", type=float, default=0.02)
    p.add_argument("--adamw-lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--momentum-warmup", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10,
                   help="steps between train_loss lines of OUT/logs/version_N/metrics.csv")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, help="a checkpoint (.ckpt) to continue from")
    return p.parse_args(argv)


def main(argv=None, callbacks=()) -> L.Trainer:
    """Train; a checkpoint after each epoch in OUT/checkpoints, and OUT/final.ckpt."""
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    data = load_text("tinyshakespeare", tokenizer="char")
    # an epoch: the first batches_per_epoch batches of each process, in order. Checkpoints are
    # saved after an epoch's last batch: Lightning resumes those at the next epoch's start, as
    # the uninterrupted run goes on (a plain DataLoader cannot resume in the middle of an epoch)
    n_tokens = args.batches_per_epoch * args.batch_size * args.devices * args.block_size + 1
    windows = OrderedWindows(TokenWindows(data.train[:n_tokens], args.block_size), args.batch_size)
    module = GPTModule(data.vocab_size, block_size=args.block_size, muon_lr=args.muon_lr,
                       adamw_lr=args.adamw_lr, warmup=args.warmup, total_steps=args.steps,
                       momentum_warmup=args.momentum_warmup)  # fmt: skip
    checkpoints = ModelCheckpoint(dirpath=Path(args.out) / "checkpoints", save_top_k=-1,
                                  every_n_train_steps=args.batches_per_epoch)  # fmt: skip
    strategy = args.strategy
    if strategy == "fsdp2":  # checkpoints as one file of full tensors, as the other strategies
        strategy = ModelParallelStrategy(data_parallel_size=args.devices, tensor_parallel_size=1,
                                         save_distributed_checkpoint=False)  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, strategy=strategy, max_steps=args.steps,
        default_root_dir=args.out, use_distributed_sampler=False,
        callbacks=[checkpoints, *callbacks], enable_progress_bar=False, enable_model_summary=False,
        logger=CSVLogger(args.out, name="logs"), log_every_n_steps=args.log_every,
    )  # fmt: skip
    trainer.fit(module, datamodule=windows, ckpt_path=args.resume)
    trainer.save_checkpoint(Path(args.out) / "final.ckpt")
    return trainer


if __name__ == "__main__":
    main()
