"""Experiment loggers: W&B (default), CSV or none, built from the ``logger`` config group.

W&B never prompts or hangs here: with no credentials and no ``WANDB_MODE`` set, runs are
logged offline (sync them later with ``wandb sync <run folder>``).
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from vaelab.config import instantiate_setting

log = logging.getLogger(__name__)
WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"
CSV_TARGET = "lightning.pytorch.loggers.CSVLogger"


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


def choose_wandb_mode() -> str:
    """Respect WANDB_MODE; without it and without credentials, switch to offline and say so once."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if has_wandb_credentials():
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    log.warning("W&B: no credentials found (WANDB_API_KEY or ~/.netrc), logging offline; "
                "sync later with `wandb sync <run>/wandb/offline-run-*`.")
    return "offline"


def existing_wandb_run_id(save_dir: str | Path) -> str | None:
    """The id of the newest W&B run already logged under save_dir/wandb, if any."""
    runs = sorted(Path(save_dir).glob("wandb/*run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
    return runs[-1].stem.removeprefix("run-") if runs else None


def csv_rows_before(metrics_csv: Path, step: int) -> tuple[list[str], list[dict]]:
    """The header and the rows of a CSVLogger metrics.csv logged before global step ``step``."""
    if not metrics_csv.is_file():
        return [], []
    with metrics_csv.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = [row for row in reader if not row.get("step") or int(float(row["step"])) < step]
        return list(reader.fieldnames or []), rows


def build_loggers(cfg: DictConfig, resume_step: int | None = None) -> list:
    """Instantiate every logger under ``cfg.logger`` and give them the resolved run config.

    When resuming from a checkpoint taken at global step ``resume_step``, a W&B logger
    continues the run already in the run folder (same id), and a CSV logger keeps the rows of
    metrics.csv logged before that step (Lightning's CSVLogger would delete the file; rows the
    interrupted run logged after its last checkpoint are logged again by the resumed run).
    """
    loggers, kept_csv = [], {}
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        extra = {}
        if logger_cfg.get("_target_") == WANDB_TARGET:
            choose_wandb_mode()
            Path(logger_cfg.save_dir).mkdir(parents=True, exist_ok=True)
            run_id = existing_wandb_run_id(logger_cfg.save_dir) if resume_step is not None else None
            if run_id:
                extra = {"id": run_id, "resume": "allow"}
                log.info("W&B: resuming run %s", run_id)
        logger = instantiate_setting(logger_cfg, f"logger.{name}", **extra)
        if logger_cfg.get("_target_") == CSV_TARGET and resume_step is not None:
            kept_csv[len(loggers)] = csv_rows_before(Path(logger.log_dir) / "metrics.csv", resume_step)
        loggers.append(logger)
        log.info("logger %s: %s", name, logger_cfg.get("_target_"))
    config = OmegaConf.to_container(cfg, resolve=True)
    with warnings.catch_warnings():
        if kept_csv:  # Lightning warns that it deletes metrics.csv; the rows are written back below
            warnings.filterwarnings("ignore", message="Experiment logs directory")
        for logger in loggers:
            logger.log_hyperparams(config)  # a CSV logger's writer starts here (and deletes metrics.csv)
    for index, (header, rows) in kept_csv.items():
        writer = loggers[index].experiment
        if header and hasattr(writer, "metrics_file_path"):  # rank 0 only
            with open(writer.metrics_file_path, "w", newline="") as file:
                table = csv.DictWriter(file, fieldnames=header)
                table.writeheader()
                table.writerows(rows)
            writer.metrics_keys = sorted(header)
    return loggers


def finish_wandb() -> None:
    """Close the active W&B run, so that the next multirun job starts a run of its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
