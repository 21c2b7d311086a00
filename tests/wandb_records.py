"""Read back what an offline W&B run wrote: the records of its ``run-<id>.wandb`` file.

wandb (0.2x-0.3x) has no public reader of its transaction log, so this follows its on-disk
framing, the LevelDB log format: a 7-byte file header (``:W&B``, magic 0xBEE1, version), then
32 KiB blocks of records ``crc32 (4) | length (2) | type (1) | data``, a record split over
blocks as FIRST, MIDDLE..., LAST; a block tail under 7 bytes is padding. Each record's data is
a ``wandb.proto.wandb_internal_pb2.Record`` (wandb's own protobuf schema).
"""

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: Path):
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding to the end of the block (or of the file)
            pos += BLOCK - pos % BLOCK
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        parts.append(chunk)
        if kind in (FULL, LAST):
            yield b"".join(parts)
            parts = []


def offline_runs(run_dir: Path) -> list[Path]:
    """The ``.wandb`` files of the offline runs under ``run_dir/wandb``, oldest first."""
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)


def read_run(path: Path) -> dict:
    """{"run": the run record, "config": {key: value}, "history": [{key: value, "_step": n}],
    "summary": {key: value}} of the ``.wandb`` file ``path``."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = {"run": None, "config": {}, "history": [], "summary": {}}
    for payload in payloads(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = rec.run
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)
