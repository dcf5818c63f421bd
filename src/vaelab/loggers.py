"""Experiment loggers: W&B (default), CSV or none, built from the ``logger`` config group.

W&B never prompts or hangs here: with no credentials and no ``WANDB_MODE`` set, runs are
logged offline (sync them later with ``wandb sync <run folder>``).
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"


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


def build_loggers(cfg: DictConfig, resuming: bool = False) -> list:
    """Instantiate every logger under ``cfg.logger`` and give them the resolved run config.

    When ``resuming``, a W&B logger continues the run already in the run folder (same id).
    """
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        extra = {}
        if logger_cfg.get("_target_") == WANDB_TARGET:
            choose_wandb_mode()
            Path(logger_cfg.save_dir).mkdir(parents=True, exist_ok=True)
            run_id = existing_wandb_run_id(logger_cfg.save_dir) if resuming else None
            if run_id:
                extra = {"id": run_id, "resume": "allow"}
                log.info("W&B: resuming run %s", run_id)
        loggers.append(instantiate(logger_cfg, **extra))
        log.info("logger %s: %s", name, logger_cfg.get("_target_"))
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers


def finish_wandb() -> None:
    """Close the active W&B run, so that the next multirun job starts a run of its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
