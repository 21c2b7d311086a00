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
