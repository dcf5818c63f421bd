"""Reading W&B run files back with no network: ``read_offline_run`` (config, history, summary,
artifacts of one run folder's runs, resumed segments merged), ``find_offline_runs``, and
``read_history`` for vaelab-compare.

An offline run file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0),
then 32 KiB blocks of records, each ``crc32 (4) | length (2) | type (1) | data``, where a
protobuf ``wandb_internal_pb2.Record`` may span several records (FIRST, MIDDLE, LAST).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

BLOCK_SIZE = 32 * 1024
MAX_RUN_FILE_BYTES = 4 << 30
HEADER = b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00"
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: str | Path):
    """Yield each protobuf payload (bytes) stored in a ``.wandb`` file (a regular file: a FIFO is refused unopened)."""
    from vaelab.safe_load import read_file

    data = read_file(path, max_bytes=MAX_RUN_FILE_BYTES)
    if not data.startswith(HEADER):
        raise ValueError(f"{path} is not a W&B run file (bad header)")
    yield from payloads_from(data, len(HEADER))


def payloads_from(data: bytes, offset: int):
    """The payloads of the records whose chunks start at ``offset`` or later in ``data``, a run
    file's bytes. ``offset`` is the end of the header or a block boundary, where a chunk starts;
    a record whose first chunk lies before it is skipped."""
    pending = None  # the chunks of a record begun (FIRST) and not yet ended (LAST)
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
        elif kind == MIDDLE and pending is not None:
            pending += chunk
        elif kind == LAST and pending is not None:
            yield pending + chunk
            pending = None


def ends_with_exit(path: str | Path) -> bool:
    """Whether the run file's last whole record is the run's exit record: W&B's service has
    written the whole run. It reads the last two blocks only (a record ending in the last block
    and at most a block long is whole there)."""
    Record = record_class()  # noqa: N806 - a class
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        start = max(0, (size - 1) // BLOCK_SIZE - 1) * BLOCK_SIZE
        handle.seek(start)
        data = handle.read()
    if start == 0 and not data.startswith(HEADER):
        return False
    last = None
    for payload in payloads_from(data, len(HEADER) if start == 0 else 0):
        last = payload
    if last is None:
        return False
    from google.protobuf.message import DecodeError

    record = Record()
    try:
        record.ParseFromString(last)
    except DecodeError:
        return False
    return record.WhichOneof("record_type") == "exit"


@dataclass
class OfflineRun:
    """What an offline run logged: its id, name, group and tags, config, history rows, summary,
    metric definitions (``define_metric``) and artifacts."""

    run_id: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)  # name or glob -> {"step_metric": ..., "summary": [...]}
    artifacts: list[dict] = field(default_factory=list)  # {"name", "type", "aliases", "metadata", "files"}
    folder: Path | None = None

    @property
    def history_keys(self) -> set[str]:
        return {key for row in self.history for key in row}

    def media_files(self) -> list[Path]:
        return sorted((self.folder / "files" / "media").rglob("*.png")) if self.folder else []


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def record_class():
    """W&B's protobuf ``Record`` message, which its run files hold. It is W&B's internal module:
    an upgrade that moves it stops here with a message that says so."""
    try:
        from wandb.proto.wandb_internal_pb2 import Record
    except ImportError as error:
        raise RuntimeError(
            f"this wandb ({version('wandb')}) has no wandb.proto.wandb_internal_pb2.Record, "
            f"which vaelab reads offline runs with: {error}"
        ) from None
    return Record


def read_offline_run(folder: str | Path) -> OfflineRun:
    """Parse ``<folder>/run-*.wandb`` (``folder`` is an ``offline-run-*`` directory)."""
    Record = record_class()  # noqa: N806 - a class
    folder = Path(folder)
    files = sorted(folder.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {folder}")
    run = OfflineRun(folder=folder)
    for payload in iter_payloads(files[0]):
        record = Record()
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
        elif kind == "metric":
            metric = record.metric
            summary = [field.name for field, on in metric.summary.ListFields() if on is True]
            definition = run.metrics.setdefault(metric.name or metric.glob_name, {})
            definition.update({"step_metric": metric.step_metric} if metric.step_metric else {})
            definition["summary"] = sorted(set(definition.get("summary", [])) | set(summary))
        elif kind == "artifact":
            artifact = record.artifact
            run.artifacts.append(
                {
                    "name": artifact.name,
                    "type": artifact.type,
                    "aliases": list(artifact.aliases),
                    "metadata": json.loads(artifact.metadata or "{}"),
                    "files": {entry.path: entry.local_path for entry in artifact.manifest.contents},
                }
            )
    return run


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every ``offline-run-*`` folder below root."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir())


def read_history(folder: Path) -> tuple[list[dict], dict]:
    """History rows (with "step" and "epoch") and summary of the W&B run logged in folder.

    A resumed run, or one evaluated after training, has several ``offline-run-*`` folders with
    one id: they are read in order and merged. Rows that a killed segment logged after its last
    checkpoint, and that the next segment logged again, are kept once (the later ones)."""
    from vaelab.allow_list import inside

    # in time order; never through a symlink out of the run folder (another run's history)
    segments = [read_offline_run(path) for path in find_offline_runs(folder / "wandb") if inside(path, folder)]
    if not segments:
        return [], {}
    run_id = segments[-1].run_id
    history, summary = [], {}
    for segment in (s for s in segments if s.run_id == run_id):
        rows = []
        for row in segment.history:
            numbers = {k: v for k, v in row.items() if isinstance(v, int | float) and not k.startswith("_")}
            if "trainer/global_step" in numbers:
                numbers["step"] = numbers["trainer/global_step"]
            rows.append(numbers)
        steps = [row["step"] for row in rows if "step" in row]
        if steps:  # this segment starts again from its checkpoint's step
            history = [row for row in history if row.get("step", -1) < min(steps)]
        history += rows
        summary.update(segment.summary)
    return history, summary
