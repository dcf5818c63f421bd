"""``vaelab-train`` (also ``python train.py`` and ``python -m vaelab.train``): Hydra parses, then
``vaelab.training`` runs and this reports; ``vaelab.train([...])`` from Python is the API
(``vaelab.api.train``).

Only hydra and omegaconf are imported at module level, so ``--help`` and ``--cfg job``
stay fast; torch and Lightning are imported when a run starts.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vaelab.cli import CONFIG_DIR, VERSION_BASE, run_hydra_app
from vaelab.errors import TrialPruned, exit_with_error, find_user_error
from vaelab.optuna_search import objective_names
from vaelab.runs import (
    FolderInUseError,
    config_from_folder,
    finished_job,
    holds_run,
    is_global_zero,
    save_run_config,
    write_status,
)
from vaelab.sweep import in_multirun
from vaelab.training import run_in_folder, train

log = logging.getLogger(__name__)


@hydra.main(**VERSION_BASE, config_path=str(CONFIG_DIR), config_name="train")
def app(cfg: DictConfig) -> float | None:
    """One run, or one job of a multirun. A failed job is recorded in its status.json and the
    sweep goes on; a job that already finished (a re-run sweep) is skipped; a single run that
    fails on a bad input prints one ``error:`` line, exits 1 and leaves no new folder behind."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    had_run = holds_run(run_dir)
    try:
        if not is_global_zero():  # a DDP rank re-launched by Lightning: rank 0 saved the config it trains with
            train(config_from_folder(cfg, run_dir, [], key="run folder")[0] if had_run else cfg)
            return None
        done = finished_job(run_dir, overrides) if in_multirun() else None
        if done is not None:  # read without touching the job's folder
            print(f"sweep: job {run_dir.name} finished before (status.json ok): skipped")
            return objective(cfg, done)
        metrics = run_in_folder(cfg, run_dir, overrides, multirun=in_multirun()).metrics
    except Exception as error:
        user_error = find_user_error(error)
        if isinstance(error, TrialPruned):  # status.json says pruned; the sweeper tells Optuna
            log.info("%s", error)
            return None
        if in_multirun():
            message = str(user_error) if user_error else f"{type(error).__name__}: {error}"
            log.error("job failed: %s", message, exc_info=user_error is None)
            if not isinstance(user_error, FolderInUseError):  # the folder is another process's
                if not had_run:
                    save_run_config(run_dir, cfg, overrides)  # so that the sweep summary lists the job
                write_status(run_dir, "failed", error=message.splitlines()[0] if message else type(error).__name__)
            return float("nan")  # Optuna records a NaN as a failed trial and goes on
        if user_error is None:
            raise
        exit_with_error(user_error)
    shown = {k: float(f"{v:.6g}") for k, v in sorted(metrics.items()) if "/kl_dim/" not in k}
    log.info("final metrics (nats per image): %s", shown)
    return objective(cfg, metrics)


def objective(cfg: DictConfig, metrics: dict) -> float | list | None:
    """What a sweeper optimizes: the value of ``optimized_metric``, or a list of values when it
    names several (None for a metric that was not logged; the sweeper says so)."""
    values = [metrics.get(name) for name in objective_names(cfg.get("optimized_metric"))]
    if not isinstance(cfg.get("optimized_metric"), str):
        return values or None
    return values[0]


def with_multirun(arguments: list[str]) -> list[str]:
    """``arguments`` with ``--multirun`` added when they choose an ``hparams_search`` (a search
    is always a sweep; the search configs do not set ``hydra.mode``, which Hydra 1.4 refuses)."""
    chooses_search = any(a.split("=", 1)[0].lstrip("+~") == "hparams_search" and "=" in a for a in arguments)
    if chooses_search and not {"-m", "--multirun", "--cfg", "-c", "--help", "-h", "--hydra-help"} & set(arguments):
        return ["--multirun", *arguments]
    return arguments


def main() -> None:
    """``vaelab-train`` / ``python train.py``: Hydra's command line, its errors as one line."""
    sys.argv[1:] = with_multirun(sys.argv[1:])
    run_hydra_app(app)


if __name__ == "__main__":
    main()
