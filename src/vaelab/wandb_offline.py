"""Read an offline W&B run back from its ``run-<id>.wandb`` file, with no network.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
32 KiB blocks of records, each ``crc32 (4) | length (2) | type (1) | data``, where a
protobuf ``wandb_internal_pb2.Record`` may span several records (FIRST, MIDDLE, LAST).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK_SIZE = 32 * 1024
HEADER = b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00"
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: str | Path):
    """Yield each protobuf payload (bytes) stored in a ``.wandb`` file."""
    data = Path(path).read_bytes()
    if not data.startswith(HEADER):
        raise ValueError(f"{path} is not a W&B run file (bad header)")
    offset, pending = len(HEADER), b""
    while offset + 7 <= len(data):
        room = BLOCK_SIZE - offset % BLOCK_SIZE
        if room < 7:  # block trailer: padding
            offset += room
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, offset)
        if offset + 7 + length > len(data):  # a run killed mid-write: the last record is cut short
            break
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


@dataclass
class OfflineRun:
    """What an offline run logged: its id, name, group and tags, config, history rows and summary."""

    run_id: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def history_keys(self) -> set[str]:
        return {key for row in self.history for key in row}

    def media_files(self) -> list[Path]:
        return sorted((self.folder / "files" / "media").rglob("*.png")) if self.folder else []


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(folder: str | Path) -> OfflineRun:
    """Parse ``<folder>/run-*.wandb`` (``folder`` is an ``offline-run-*`` directory)."""
    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(folder)
    files = sorted(folder.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {folder}")
    run = OfflineRun(folder=folder)
    for payload in iter_payloads(files[0]):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name, run.group = record.run.run_id, record.run.display_name, record.run.run_group
            run.tags = list(record.run.tags)
            for item in record.run.config.update:
                run.config[_item_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_item_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_item_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_item_key(item)] = json.loads(item.value_json)
    return run


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every ``offline-run-*`` folder below root."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir())
