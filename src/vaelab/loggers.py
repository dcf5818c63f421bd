"""Experiment loggers: W&B (default), CSV or none, built from the ``logger`` config group.

W&B never prompts or hangs here: with no credentials and no ``WANDB_MODE`` set, runs are
logged offline (sync them later with ``wandb sync <run folder>``); see ``vaelab.wandb_run``.
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vaelab.instantiate import instantiate_setting
from vaelab.metrics import FINAL_METRICS, IWAE_METRICS
from vaelab.wandb_run import WANDB_TARGET, define_best_metrics, prepare_wandb, run_id_in
from vaelab.workarounds import quiet_wandb_logger

log = logging.getLogger(__name__)
CSV_TARGET = "lightning.pytorch.loggers.CSVLogger"


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
            prepare_wandb()
            Path(logger_cfg.save_dir).mkdir(parents=True, exist_ok=True)
            run_id = run_id_in(logger_cfg.save_dir) if resume_step is not None else None
            if run_id:
                extra = {"id": run_id, "resume": "allow"}
                log.info("W&B: resuming run %s", run_id)
        logger = instantiate_setting(logger_cfg, f"logger.{name}", **extra)
        quiet_wandb_logger(logger)
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
    define_best_metrics(loggers)
    for index, (header, rows) in kept_csv.items():
        if header:
            restore_csv_rows(loggers[index].experiment, header, rows)
    return loggers


def restore_csv_rows(writer, header: list[str], rows: list[dict]) -> None:
    """Write rows back into a CSVLogger's metrics.csv, and tell its writer the columns it holds.
    The writer keeps them in a private list (``_ExperimentWriter.metrics_keys``); an upgrade that
    drops it stops here with a message saying so."""
    if not hasattr(writer, "metrics_file_path"):  # not rank 0: no file
        return
    if not isinstance(getattr(writer, "metrics_keys", None), list):
        raise RuntimeError(
            f"Lightning's CSV writer {type(writer).__name__} has no metrics_keys list, which vaelab "
            "sets when it keeps a resumed run's metrics.csv (vaelab/loggers.py)"
        )
    with open(writer.metrics_file_path, "w", newline="") as file:
        table = csv.DictWriter(file, fieldnames=header)
        table.writeheader()
        table.writerows(rows)
    writer.metrics_keys = sorted(header)


# the settings a sweep varies, as TensorBoard's HPARAMS tab shows them beside the final metrics
HPARAM_KEYS = (
    "model.name",
    "model.latent_dim",
    "model.beta",
    "model.conditional",
    "model.free_bits",
    "model.importance_samples",
    "data.name",
    "data.binarize",
    "likelihood._target_",
    "annealing._target_",
    "seed",
)


def log_final_hparams(loggers, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Give every TensorBoard logger the run's settings with its final metrics, once, when the run
    ends: TensorBoard's HPARAMS tab then compares a sweep's runs as a table, parallel coordinates
    and a scatter matrix. The metrics are logged as ``final/<name>`` at step 0, beside the curves."""
    from lightning.pytorch.loggers import TensorBoardLogger

    params = {}
    for key in HPARAM_KEYS:
        value = OmegaConf.select(cfg, key)
        params[key] = value.rsplit(".", 1)[-1] if key.endswith("_target_") and isinstance(value, str) else value
    final = {f"final/{name}": metrics[name] for name in (*FINAL_METRICS, *IWAE_METRICS) if name in metrics}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and final:
            logger.log_hyperparams(params, metrics=final)
            logger.experiment.flush()
