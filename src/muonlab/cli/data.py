"""`muonkit data fetch mnist|cifar10`: download, check md5, unpack (:mod:`muonlab.data.fetch`)."""

from __future__ import annotations

from ..data import fetch as fetch_module
from .common import add_command


def register(subparsers) -> None:
    p = add_command(subparsers, "data", help="dataset utilities (fetch)")
    sub = p.add_subparsers(dest="data_command", required=True)
    f = add_command(sub, "fetch", help="download MNIST or CIFAR-10, verify md5, unpack")
    f.add_argument("dataset", choices=sorted(fetch_module.DATASETS), help="dataset")
    f.add_argument(
        "--data-dir", default=None, help="target directory (None: $MUONKIT_DATA, else ./data)"
    )
    f.set_defaults(func=lambda a: print(fetch_module.fetch(a.dataset, a.data_dir)) or 0)
