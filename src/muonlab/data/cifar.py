"""CIFAR-10 from its python pickles (Krizhevsky, "Learning Multiple Layers of Features from
Tiny Images", 2009; https://www.cs.toronto.edu/~kriz/cifar.html).

``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` (train) and ``test_batch`` are
pickled dicts with ``b"data"``: a uint8 array (10000, 3072) (1024 red, then green, then blue
values of a 32x32 image, row-major) and ``b"labels"``: 10000 ints in 0..9. The folder is
looked up under the data directory, or the data directory may be that folder itself.

The pickles are read with an unpickler that only builds dicts, lists, bytes, numbers and
numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from .paths import find_file, resolve_data_dir

FOLDERS = ("cifar-10-batches-py", ".")
SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes under pickle protocol 2
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"CIFAR-10 batch refers to {module}.{name}; only numpy arrays are allowed"
            )
        if module.startswith("numpy.core."):  # pickles from numpy 1.x; numpy 2 moved it
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (N, 3, 32, 32), labels int64 (N,)) of one CIFAR-10 batch file."""
    with open(path, "rb") as f:
        batch = _ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 batch (expected a dict with data, labels)")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(
            f"{path}: data has shape {data.shape} and labels {labels.shape}; expected "
            "(N, 3072) uint8 and (N,)"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(
    data_dir: str | os.PathLike | None = None, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of the ``"train"`` or ``"test"`` split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    root = resolve_data_dir(data_dir)
    paths = [find_file(root, FOLDERS, (name,), "cifar10") for name in SPLITS[split]]
    batches = [read_batch(p) for p in paths]
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    return torch.from_numpy(data), torch.from_numpy(labels)
