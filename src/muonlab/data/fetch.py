"""`muonkit data fetch mnist|cifar10 --data-dir D`: download the official files, check their
md5 against the canonical values, unpack.

For users with internet; nothing in the library or its tests downloads by itself. MNIST's
four ``.gz`` files go to ``D/mnist/`` (the reader reads them compressed); CIFAR-10's
``cifar-10-python.tar.gz`` is kept in ``D`` and unpacked into ``D/cifar-10-batches-py/``.
Files already present with the right md5 are not downloaded again. A download whose md5
differs is deleted; the next URL, if any, is tried, else it raises ChecksumError.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .paths import resolve_data_dir


@dataclass(frozen=True)
class Remote:
    """One file to download: its name, canonical md5, and the URLs that serve it, in order."""

    filename: str
    md5: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class Dataset:
    folder: str  # where under the data dir the files go (archives: where they unpack)
    files: tuple[Remote, ...]
    archive: bool  # each file is a tar to unpack into the data dir (it is kept there)


# LeCun's page is the original; it often refuses downloads now, so torchvision's mirror is
# tried first.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_MNIST_MD5 = {  # canonical (LeCun et al.; the values torchvision lists)
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
DATASETS = {
    "mnist": Dataset(
        "mnist",
        tuple(Remote(f, m, tuple(u + f for u in MNIST_MIRRORS)) for f, m in _MNIST_MD5.items()),
        archive=False,
    ),
    "cifar10": Dataset(
        "cifar-10-batches-py",
        (
            Remote(
                "cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
            ),
        ),
        archive=True,
    ),
}


class ChecksumError(OSError):
    """A downloaded file's md5 is not the canonical one."""


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(remote: Remote, dest: Path) -> Path:
    """Download ``remote`` to ``dest`` (atomically), trying its URLs in order; check the md5."""
    errors = []
    for url in remote.urls:
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        os.close(fd)
        tmp = Path(name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)
            digest = md5sum(tmp)
            if digest != remote.md5:
                raise ChecksumError(f"{url}: md5 {digest}, expected {remote.md5}")
            tmp.replace(dest)
            return dest
        except (OSError, ValueError) as e:  # URLError and ChecksumError are OSErrors
            errors.append(f"{url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise ChecksumError(f"could not fetch {remote.filename}: " + "; ".join(errors))


def unpack(archive: Path, into: Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``into``."""
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")


def fetch(name: str, data_dir=None, datasets: dict[str, Dataset] | None = None) -> Path:
    """Fetch dataset ``name`` into the data directory; returns the dataset's folder."""
    datasets = DATASETS if datasets is None else datasets
    if name not in datasets:
        raise ValueError(f"dataset must be one of {sorted(datasets)}, got {name!r}")
    spec = datasets[name]
    root = resolve_data_dir(data_dir)
    folder = root / spec.folder
    download_dir = root if spec.archive else folder
    download_dir.mkdir(parents=True, exist_ok=True)
    for remote in spec.files:
        target = download_dir / remote.filename
        if target.is_file() and md5sum(target) == remote.md5:
            print(f"{target}: present, md5 ok")
        else:
            print(f"fetching {remote.filename} ...", flush=True)
            download(remote, target)
            print(f"{target}: md5 ok")
        if spec.archive:
            unpack(target, root)
            print(f"unpacked into {folder}")
    return folder
