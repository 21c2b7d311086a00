"""Image-classification datasets as flat float tensors for MLPs."""

from __future__ import annotations

import os

import torch

from .cifar import load_cifar10
from .mnist import load_mnist

LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}


def load_flat(
    name: str, data_dir: str | os.PathLike | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (x, y), "test": (x, y)} with x float32 (N, features), y int64 (N,).

    Pixels are scaled to [0, 1], then standardized by the training set's mean and standard
    deviation (one scalar each), so train and test share one transform.
    """
    if name not in LOADERS:
        raise ValueError(f"dataset must be one of {sorted(LOADERS)}, got {name!r}")
    splits = {s: LOADERS[name](data_dir, s) for s in ("train", "test")}
    train_x = splits["train"][0].flatten(1).float().div_(255)
    mean, std = train_x.mean(), train_x.std().clamp_min(1e-8)
    out = {}
    for split, (images, labels) in splits.items():
        x = train_x if split == "train" else images.flatten(1).float().div_(255)
        out[split] = ((x - mean) / std, labels)
    return out


class ShuffledBatches:
    """Minibatches of (x, y) in a fresh seeded permutation each epoch; the batch source of
    :func:`muonlab.train.train` (``next_batch``, ``state_dict``/``load_state_dict``).

    An epoch is ``ceil(N / batch_size)`` batches (the last one may be smaller), so
    ``steps = epochs * batches_per_epoch`` sees every example exactly ``epochs`` times.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0):
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y need the same nonzero length, got {len(x)} and {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.batches_per_epoch = -(-len(x) // batch_size)
        self.position = 0  # batches served so far

    def _order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.x), generator=generator)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(self.position, self.batches_per_epoch)
        if i == 0 or not hasattr(self, "_cached") or self._cached[0] != epoch:
            self._cached = (epoch, self._order(epoch))
        idx = self._cached[1][i * self.batch_size : (i + 1) * self.batch_size]
        self.position += 1
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.position, self.seed = state["position"], state["seed"]
