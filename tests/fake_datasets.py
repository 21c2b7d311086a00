"""Tiny datasets written in the real on-disk formats (MNIST IDX, CIFAR-10 python pickles).

Each class k has a fixed random prototype image; samples are that prototype plus noise, so a
small MLP learns them well above chance within a few steps.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes: 0, 0, type code, ndim, big-endian sizes, big-endian data."""
    codes = {
        np.dtype("u1"): 0x08,
        np.dtype("i1"): 0x09,
        np.dtype(">i2"): 0x0B,
        np.dtype(">i4"): 0x0C,
        np.dtype(">f4"): 0x0D,
        np.dtype(">f8"): 0x0E,
    }
    big = array.astype(array.dtype.newbyteorder(">"))
    code = codes[big.dtype] if big.dtype in codes else codes[big.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + big.tobytes()


def class_images(n: int, shape: tuple[int, ...], seed: int, classes: int = 10):
    """(uint8 images (n, *shape), int labels (n,)): class prototype + noise."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(1234).integers(0, 256, (classes, *shape))
    labels = rng.integers(0, classes, n)
    noise = rng.normal(0, 40, (n, *shape))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels


MNIST_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_mnist(
    root: Path, n_train: int = 64, n_test: int = 32, folder: str = "mnist", gz: bool = True
) -> dict:
    """Write the four MNIST files under ``root/folder``; returns the arrays written."""
    out = {}
    (root / folder).mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = class_images(n, (28, 28), seed)
        out[split] = (images, labels)
        for name, array in zip(MNIST_NAMES[split], (images, labels.astype(np.uint8))):
            data = idx_bytes(array)
            path = root / folder / (name + (".gz" if gz else ""))
            path.write_bytes(gzip.compress(data) if gz else data)
    return out


def cifar_batch(n: int, seed: int, name: str) -> dict:
    images, labels = class_images(n, (3, 32, 32), seed)
    return {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": images.reshape(n, 3072),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def write_cifar(root: Path, n_per_batch: int = 16, n_test: int = 32) -> dict:
    """Write data_batch_1..5 and test_batch (pickle protocol 2) under
    ``root/cifar-10-batches-py``; returns {file name: batch dict}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {
        f"data_batch_{i}": cifar_batch(n_per_batch, i, f"training batch {i} of 5")
        for i in range(1, 6)
    }
    batches["test_batch"] = cifar_batch(n_test, 99, "testing batch 1 of 1")
    for name, batch in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return batches
