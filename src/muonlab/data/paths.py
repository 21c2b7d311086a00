"""Where datasets live on disk, and the error a missing file raises.

The data directory is ``--data-dir`` when given, else the ``MUONKIT_DATA`` environment
variable, else ``./data``. Under it each dataset has its usual folder (``mnist/``,
``cifar-10-batches-py/``); the readers also accept torchvision's layouts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

ENV_VAR = "MUONKIT_DATA"
DEFAULT_DIR = "data"


class DataNotFoundError(FileNotFoundError):
    """A dataset file is missing; the message names it and the command that fetches it."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$MUONKIT_DATA``, else ``./data``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def find_file(root: Path, folders: Sequence[str], names: Sequence[str], dataset: str) -> Path:
    """The first ``root/folder/name`` that exists, trying folders then names in order.

    Raises :class:`DataNotFoundError` naming the first expected path and the fetch command.
    """
    for folder in folders:
        for name in names:
            path = root / folder / name
            if path.is_file():
                return path
    expected = root / folders[0] / names[0]
    raise DataNotFoundError(
        f"{dataset} file not found: {expected} (also looked for {', '.join(names)} under "
        f"{', '.join(str(root / f) for f in folders)}). Fetch it with "
        f"`muonkit data fetch {dataset} --data-dir {root}`, or pass --data-dir / set "
        f"{ENV_VAR} to the directory that holds it."
    )
