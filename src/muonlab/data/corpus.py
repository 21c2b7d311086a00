"""`muonkit data build-corpus`: a byte-level token corpus built offline from local text files.

The horizon study needs far more tokens than the bundled tinyshakespeare (1.1 MB); every
machine with Python has tens of MB of text in the standard library's sources, and a user may
name any directories of their own. :func:`build_corpus`:

* walks each source directory (default: the standard library, ``sysconfig.get_paths()
  ["stdlib"]``, its ``*.py`` files, without ``site-packages``/``dist-packages``, whose contents
  differ between machines), files matching ``pattern`` in sorted order of their path
  relative to the directory (symlinks are not followed; hidden directories and the output
  directory are left out): the same files give the same bits;
* skips, and counts, files that are not UTF-8 text (undecodable, or holding a NUL byte) and
  empty ones;
* stops before the first file that would take the total past ``max_bytes``;
* splits by file: every ``val_every``-th file in that order goes to the validation split, the
  others to training (no file is cut in two, and the validation files are spread over all
  sources);
* writes the UTF-8 bytes of each file followed by a newline as byte tokens (ids 0..255, the
  ``byte`` tokenizer of :mod:`muonlab.data.text`) into ``train.bin``/``val.bin`` (flat
  uint16, little-endian), a ``meta.json`` (vocabulary 256, tokenizer ``byte``) and
  ``manifest.json``: every source file's path, size and split, the skipped files with their
  reason, the totals, the SHA-256 of each token file and of both (``sha256``: that of
  ``train.bin`` followed by ``val.bin``, i.e. ``cat train.bin val.bin | sha256sum``), the
  tokenizer and the command.

A directory holding a corpus (any of those four files) is replaced only with
``overwrite=True``; each file is written to a temporary name and renamed, so a failed build
leaves the old files whole. The reader checks a corpus's token files against its
manifest when the training loop reads it (:func:`muonlab.data.text.read_manifest`), so a run
records the SHA-256 of the tokens it really read.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .text import BYTE_VOCAB, MANIFEST, TOKEN_SPLITS, sha256_of_files

CORPUS_FILES = ("train.bin", "val.bin", "meta.json", MANIFEST)
MACHINE_DEPENDENT = ("site-packages", "dist-packages")  # left out of the default source


def default_sources() -> list[Path]:
    """The standard library's source directory of this Python."""
    return [Path(sysconfig.get_paths()["stdlib"])]


@dataclass
class CorpusSpec:
    """What to build: ``sources`` (directories; None: :func:`default_sources`), ``pattern``
    (file names to take, fnmatch; None: ``*.py`` for the default source, else every file),
    ``max_bytes`` (None: no limit), ``val_every`` (every n-th file is validation)."""

    out: str
    sources: list[str] | None = None
    pattern: str | None = None
    max_bytes: int | None = None
    val_every: int = 10
    overwrite: bool = False
    command: str = ""
    excluded_dirs: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        default = self.sources is None
        if default:
            self.sources = [str(p) for p in default_sources()]
            self.excluded_dirs = MACHINE_DEPENDENT
        if self.pattern is None:
            self.pattern = "*.py" if default else "*"
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"--max-bytes must be >= 1, got {self.max_bytes}")
        if self.val_every < 2:
            raise ValueError(f"--val-every must be >= 2, got {self.val_every}")
        for source in self.sources:
            if not Path(source).is_dir():
                raise ValueError(f"--from {source}: not a directory")
            if Path(source).resolve() == Path(self.out).resolve():
                raise ValueError(f"--out {self.out} is a --from directory; write the corpus "
                                 "elsewhere (a folder inside it is fine: it is left out)")


def walk(root: Path, pattern: str, excluded_dirs: Sequence[str] = (),
         skip: Path | None = None) -> Iterator[Path]:
    """Regular files under ``root`` whose name matches ``pattern``, in sorted order of their
    path relative to ``root`` (compared as path parts); symlinks are neither followed nor
    taken; hidden directories (``.git``, ``.venv``), those named in ``excluded_dirs`` and the
    directory ``skip`` (the corpus being written) are left out."""
    skip = None if skip is None else skip.resolve()
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in excluded_dirs
                   and Path(folder, d).resolve() != skip]
        if Path(folder).resolve() == skip:
            continue
        for name in files:
            path = Path(folder, name)
            if fnmatch.fnmatchcase(name, pattern) and not path.is_symlink() and path.is_file():
                found.append(path)
    return iter(sorted(found, key=lambda p: p.relative_to(root).parts))


def file_text_bytes(path: Path) -> tuple[bytes | None, str]:
    """The bytes of ``path`` if it is UTF-8 text, else None and why not."""
    data = path.read_bytes()
    if not data:
        return None, "empty"
    if b"\x00" in data:
        return None, "binary (NUL byte)"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    return data, ""


def existing_corpus_files(out: Path) -> list[str]:
    return [name for name in CORPUS_FILES if (out / name).exists()]


def build_corpus(spec: CorpusSpec, log=print) -> dict:
    """Build the corpus of ``spec`` (see the module's text); returns its manifest."""
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    present = existing_corpus_files(out) if out.is_dir() else []
    if present and not spec.overwrite:
        raise FileExistsError(f"--out {out} already holds a corpus ({', '.join(present)}); "
                              "pass --overwrite to replace it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = {split: out / f"{split}.bin.tmp" for split in TOKEN_SPLITS}
    try:
        manifest = _write_tokens(spec, tmp, log)
        for split in TOKEN_SPLITS:
            os.replace(tmp[split], out / f"{split}.bin")
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    meta = {"vocab_size": BYTE_VOCAB, "tokenizer": "byte", "source": f"corpus {out}"}
    _write_text(out / "meta.json", json.dumps(meta))
    _write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def _write_tokens(spec: CorpusSpec, tmp: dict[str, Path], log) -> dict:
    """Write the token files to ``tmp``; the manifest of what they hold."""
    files, skipped = [], []
    tokens = dict.fromkeys(TOKEN_SPLITS, 0)
    total, full = 0, False
    digests = {split: hashlib.sha256() for split in TOKEN_SPLITS}
    handles = {split: open(tmp[split], "wb") for split in TOKEN_SPLITS}  # noqa: SIM115
    try:
        for source in spec.sources:
            root = Path(source)
            for path in walk(root, spec.pattern, spec.excluded_dirs, Path(spec.out)):
                data, why = file_text_bytes(path)
                if data is None:
                    skipped.append({"path": str(path), "reason": why})
                    continue
                size = len(data)
                data = data if data.endswith(b"\n") else data + b"\n"
                if spec.max_bytes is not None and total + len(data) > spec.max_bytes:
                    full = True
                    break
                split = "val" if len(files) % spec.val_every == spec.val_every - 1 else "train"
                ids = np.frombuffer(data, dtype=np.uint8).astype("<u2").tobytes()
                handles[split].write(ids)
                digests[split].update(ids)
                tokens[split] += len(data)
                total += len(data)
                files.append({"path": str(path), "bytes": size, "split": split})
            if full:
                break
        for handle in handles.values():
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        for handle in handles.values():
            handle.close()
    if not files:
        raise ValueError(f"no UTF-8 text files matching {spec.pattern!r} under "
                         f"{', '.join(spec.sources)} ({len(skipped)} skipped)")
    if tokens["val"] == 0 or tokens["train"] == 0:
        raise ValueError(f"{len(files)} file(s) leave the train or val split empty (every "
                         f"--val-every {spec.val_every}th file is validation); add files or "
                         "lower --val-every")
    log(f"{len(files)} files, {total:,} bytes ({tokens['train']:,} train / {tokens['val']:,} "
        f"val tokens); {len(skipped)} skipped (not UTF-8 text or empty)"
        + ("; stopped at --max-bytes" if full else ""))
    return {
        "tokenizer": "byte",
        "vocab_size": BYTE_VOCAB,
        "sources": list(spec.sources),
        "pattern": spec.pattern,
        "excluded_dirs": list(spec.excluded_dirs),
        "max_bytes": spec.max_bytes,
        "stopped_at_max_bytes": full,
        "val_every": spec.val_every,
        "total_bytes": total,
        "train_tokens": tokens["train"],
        "val_tokens": tokens["val"],
        "sha256": sha256_of_files([tmp[split] for split in TOKEN_SPLITS]),
        "file_sha256": {f"{split}.bin": digests[split].hexdigest() for split in TOKEN_SPLITS},
        "command": spec.command,
        "files": files,
        "skipped_count": len(skipped),
        "skipped": skipped,
    }


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` whole (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
