"""Everything vaelab does with W&B, in one place:

- the mode: online with credentials, else offline (never a prompt), ``choose_wandb_mode``;
- which run a run folder holds (``run_id_in``), so that a resumed run continues it;
- the final metrics in the run summary (``write_summaries``, called by the ``FinalSummary``
  callback, and ``update_summary`` after vaelab-eval), the best val/elbo (``define_best_metrics``);
- the final KL of each latent dimension as a W&B Table (``log_kl_table``);
- checkpoints as versions of the run's model artifact (``log_checkpoints``), uploaded online and
  staged offline for ``wandb sync``;
- finishing the run, so that the next job of a multirun starts its own (``finish_wandb``);
- reading offline runs back with no network (``read_offline_run``, ``read_history``).

An offline run file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0),
then 32 KiB blocks of records, each ``crc32 (4) | length (2) | type (1) | data``, where a
protobuf ``wandb_internal_pb2.Record`` may span several records (FIRST, MIDDLE, LAST).
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import struct
import sys
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)
WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"
# the run summary keeps the best value of these (W&B define_metric), not the last one
BEST_SUMMARIES = {"val/elbo": "max"}


def has_wandb_credentials() -> bool:
    """True when WANDB_API_KEY is set or ~/.netrc (or $NETRC) holds a key for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what wandb.Settings accepts


def check_wandb_mode() -> str | None:
    """WANDB_MODE from the environment (None when unset); a value W&B would refuse is a UserError."""
    from vaelab.errors import UserError

    mode = os.environ.get("WANDB_MODE")
    if mode and mode not in WANDB_MODES:
        raise UserError(f"WANDB_MODE={mode!r} (environment) is not a W&B mode: use {', '.join(WANDB_MODES)}")
    return mode or None


def choose_wandb_mode() -> str:
    """Respect WANDB_MODE; without it and without credentials, switch to offline and say so once."""
    mode = check_wandb_mode()
    if mode:
        return mode
    if has_wandb_credentials():
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    log.warning(
        "W&B: no credentials found (WANDB_API_KEY or ~/.netrc), logging offline; "
        "sync later with `wandb sync <run>/wandb/offline-run-*`."
    )
    return "offline"


def run_files(run_dir: str | Path) -> list[Path]:
    """The ``run-<id>.wandb`` files logged under ``<run_dir>/wandb`` (online or offline), oldest first."""
    return sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"), key=lambda p: (p.stat().st_mtime, p.parent.name))


def run_id_in(run_dir: str | Path) -> str | None:
    """The id of the newest W&B run logged in a run folder, or None."""
    files = run_files(run_dir)
    return files[-1].stem.removeprefix("run-") if files else None


def logged_run_ids(loggers) -> list[str]:
    """The W&B run ids of these Lightning loggers (the WandbLoggers among them)."""
    return [logger.version for logger in wandb_loggers(loggers)]


def finish_wandb() -> None:
    """Close the active W&B run, so that the next multirun job starts a run of its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def update_summary(run_dir: Path, results: dict) -> str | None:
    """Write results into the summary of the W&B run logged in run_dir (resumed by id). Returns its id,
    or None when the run folder has no W&B run."""
    from omegaconf import OmegaConf

    from vaelab.safe_load import read_run_config

    run_id = run_id_in(run_dir)
    if run_id is None or not (run_dir / ".hydra" / "config.yaml").is_file():
        return None
    saved = OmegaConf.to_container(read_run_config(run_dir), resolve=False)  # data: nothing resolved
    wandb_cfg = (saved.get("logger") or {}).get("wandb")
    if not isinstance(wandb_cfg, dict):
        return None
    project = wandb_cfg.get("project")
    project = project if isinstance(project, str) and "${" not in project else None
    import wandb

    choose_wandb_mode()
    run = wandb.init(id=run_id, resume="allow", project=project, dir=str(run_dir), job_type="eval")
    run.summary.update(results)
    wandb.finish()
    return run_id


def wandb_loggers(loggers) -> list:
    """The WandbLoggers among these Lightning loggers."""
    from lightning.pytorch.loggers import WandbLogger

    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def define_best_metrics(loggers) -> None:
    """Let W&B keep the best value of these metrics as their summary (e.g. the highest val/elbo)."""
    for logger in wandb_loggers(loggers):
        for key, best in BEST_SUMMARIES.items():
            logger.experiment.define_metric(key, summary=best)


def write_summaries(loggers, values: dict) -> None:
    """Update the summary of every W&B run among these Lightning loggers; the metrics whose summary
    is their best value (BEST_SUMMARIES) keep it."""
    values = {key: value for key, value in values.items() if key not in BEST_SUMMARIES}
    for logger in wandb_loggers(loggers):
        logger.experiment.summary.update(values)


KL_TABLE_COLUMNS = ["dim", "kl_nats", "mean_variance", "active"]


def log_kl_table(loggers, kl_per_dim: list[float], mean_variance: list[float], threshold: float) -> None:
    """Log ``final/kl_per_dim``, a W&B Table with one row per latent dimension: its KL(q(z_d|x) ||
    N(0, 1)) in nats averaged over the validation images, the variance of its posterior mean over
    those images, and whether that variance is above ``threshold`` (an active unit)."""
    rows = [[d, kl, var, var > threshold] for d, (kl, var) in enumerate(zip(kl_per_dim, mean_variance, strict=True))]
    for logger in wandb_loggers(loggers):
        logger.log_table(key="final/kl_per_dim", columns=KL_TABLE_COLUMNS, data=rows)


def log_checkpoints(loggers, checkpoints: list[tuple[Path, list[str], dict]]) -> None:
    """Each (file, aliases, metadata) as a version of the W&B artifact ``model-<run id>`` of type
    ``model``, the file named ``model.ckpt`` in it (as Lightning's ``log_model`` names it). The file
    is copied when logged, so that an offline run keeps what ``wandb sync`` uploads later."""
    import wandb

    for logger in wandb_loggers(loggers):
        for path, aliases, metadata in checkpoints:
            artifact = wandb.Artifact(name=f"model-{logger.experiment.id}", type="model", metadata=metadata)
            artifact.add_file(str(path), name="model.ckpt")
            logger.experiment.log_artifact(artifact, aliases=aliases)


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
