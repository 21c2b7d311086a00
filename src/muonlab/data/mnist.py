"""MNIST from its original IDX files (LeCun, Cortes & Burges, "The MNIST database").

IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero bytes, a
type code (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions, then one big-endian uint32 size per dimension,
followed by the data in C order. Files may be gzip-compressed (``.gz``, as distributed) or
plain. Layouts accepted under the data directory: ``mnist/<file>``, ``<file>`` and
torchvision's ``MNIST/raw/<file>``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .paths import find_file, resolve_data_dir

FOLDERS = ("mnist", ".", "MNIST/raw")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, name: str = "idx data") -> np.ndarray:
    """The array held by the bytes of an (uncompressed) IDX file."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(f"{name}: not an IDX file (bad magic {data[:4].hex()})")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{name}: IDX header says shape {shape} ({expected} bytes) but the file has "
            f"{len(data)} bytes; the file is truncated or corrupt, fetch it again"
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed (by its magic bytes) or not."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return parse_idx(raw, str(path))


def mnist_file(root: Path, stem: str) -> Path:
    return find_file(root, FOLDERS, (stem + ".gz", stem), "mnist")


def load_mnist(
    data_dir: str | os.PathLike | None = None, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the ``"train"`` or ``"test"`` split."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    root = resolve_data_dir(data_dir)
    image_path, label_path = (mnist_file(root, stem) for stem in FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST {split}: images {image_path} have shape {images.shape} and labels "
            f"{label_path} shape {labels.shape}; expected (N, H, W) and (N,)"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
