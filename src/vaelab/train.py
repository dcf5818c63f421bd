"""The Hydra entry point: ``python train.py ...`` or ``vaelab-train ...``.

Only hydra and omegaconf are imported at module level, so ``--help`` and ``--cfg job``
stay fast; torch and Lightning are imported when a run starts.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from vaelab.api import CallableTrainModule
from vaelab.cli import CONFIG_DIR, run_hydra_app
from vaelab.errors import (
    ConfigError,
    UserError,
    find_user_error,
    first_line,
)
from vaelab.runs import (
    FolderInUseError,
    FolderLock,
    finished_job,
    plan_start,
    remove_if_empty,
    save_run_config,
)
from vaelab.safe_load import read_run_config
from vaelab.sweep import in_multirun, is_global_zero, threads_per_job, write_status

log = logging.getLogger(__name__)


def checkpoint_to_resume(cfg: DictConfig) -> tuple[str, Path] | None:
    """(the setting that names it, the checkpoint file) to continue from, or None for a fresh start:
    ckpt_path as given ("last": this run folder's checkpoints/last.ckpt), or
    <resume>/checkpoints/last.ckpt with resume=RUN_DIR."""
    if cfg.get("ckpt_path") == "last":
        return "ckpt_path", Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if cfg.get("ckpt_path"):
        return "ckpt_path", Path(cfg.ckpt_path)
    if cfg.get("resume") and cfg.resume != "auto":  # main() has turned a resume=auto that continues into a path
        last = Path(cfg.resume) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise UserError(f"resume={cfg.resume}: there is no checkpoints/last.ckpt in that run folder")
        return "resume", last
    return None


@dataclass
class TrainResult:
    """What a run leaves: its final metrics (floats, nats per image), its folder and checkpoints."""

    metrics: dict[str, float]
    run_dir: Path
    best_checkpoint: Path | None  # the best on val/elbo, the one tested; None without validation
    last_checkpoint: Path | None


def train(cfg: DictConfig, overrides: list[str] | None = None) -> TrainResult:
    """Fit, then test on the best checkpoint.

    Once the config, the data, the checkpoint to continue from and the Trainer have passed their
    checks, the run's config (and ``overrides``, the command line's) is saved in
    ``<paths.output_dir>/.hydra/``; a start that fails before then writes nothing there."""
    import time
    import warnings

    from vaelab.config import validate

    validate(cfg)  # before the slow imports: a bad value fails in a second
    import lightning as L

    from vaelab.callbacks import FinalSummary
    from vaelab.checkpointing import RemoveStaleCheckpoints, check_fits, source_commit
    from vaelab.config import instantiate_setting
    from vaelab.loggers import build_loggers, finish_wandb
    from vaelab.module import VAELitModule
    from vaelab.safe_load import read_vaelab_checkpoint

    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # in-memory batches need none
    warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")  # Lightning vs. newer torch, harmless
    if logging.getLogger().hasHandlers():  # Hydra's handlers print Lightning's messages already
        logging.getLogger("lightning").handlers.clear()
    threads = threads_per_job()
    if threads:  # parallel jobs on one machine: do not oversubscribe the cores
        import torch

        torch.set_num_threads(threads)
        log.info("joblib launcher: %d torch threads per job", threads)
    L.seed_everything(cfg.seed, workers=True)
    try:
        datamodule = instantiate_setting(cfg.data, "data")
        try:
            module = VAELitModule(model=OmegaConf.to_container(cfg.model, resolve=True),
                                  loss=OmegaConf.to_container(cfg.loss, resolve=True),
                                  annealing=OmegaConf.to_container(cfg.annealing, resolve=True),
                                  image_shape=datamodule.image_shape, num_classes=datamodule.num_classes,
                                  data=OmegaConf.to_container(cfg.data, resolve=True))
        except Exception as error:  # noqa: BLE001 - a network, likelihood or schedule refused its settings
            raise find_user_error(error) or ConfigError(f"model: {first_line(error)}") from error
        module.run_record = {"commit": source_commit(), "seed": int(cfg.seed),
                             "config": OmegaConf.to_container(cfg, resolve=True)}
        if cfg.get("compile"):
            module.vae.compile()  # in place: the checkpoint's parameter names stay the same
        # a callback set to null (callbacks.nan_guard=null) is off
        callbacks = [instantiate_setting(c, f"callbacks.{name}") for name, c in (cfg.get("callbacks") or {}).items()
                     if c is not None]
        if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar callback then
            callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
        callbacks.append(FinalSummary())  # final metrics into the W&B run summary, from global rank 0
        callbacks.append(RemoveStaleCheckpoints())
        datamodule.setup()  # missing or damaged data fails here, before any logger writes a file
        resume_from = checkpoint_to_resume(cfg)
        ckpt_path, resume_step, metrics_before = None, None, {}
        if resume_from:  # read as data and checked against this model before Lightning loads it
            key, ckpt_path = resume_from
            checkpoint = read_vaelab_checkpoint(ckpt_path, key)
            check_fits(module, checkpoint, f"{key}={ckpt_path}")
            resume_step = int(checkpoint.get("global_step", 0))
            metrics_before = dict((checkpoint.get("vaelab") or {}).get("metrics") or {})
            del checkpoint
        # the Trainer checks its arguments before any logger starts a run or writes a file
        trainer = instantiate_setting(cfg.trainer, "trainer", logger=False, callbacks=callbacks)
        trainer.loggers = build_loggers(cfg, resume_step=resume_step)
        if is_global_zero():
            save_run_config(cfg.paths.output_dir, cfg, overrides)
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        # a resumed run that had finished its epochs (killed during the test) keeps its last train/ and val/ values
        metrics = {**metrics_before, **{k: float(v) for k, v in trainer.callback_metrics.items()}}
        metrics["time/fit_seconds"] = time.perf_counter() - started  # this process only, after a resume
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if cfg.get("test", True):
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        run_dir = Path(cfg.paths.output_dir)
        last = run_dir / "checkpoints" / "last.ckpt"
        return TrainResult(metrics, run_dir, Path(best) if best else None, last if last.is_file() else None)
    finally:
        finish_wandb()


def run_in_folder(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool = False) -> TrainResult:
    """Train in ``run_dir`` while holding its lock: a fresh start, or its run continued
    (``resume=``, ``resume=auto``, a sweep job that stopped), then ``status.json`` says ok.
    A single run that fails on a bad input leaves no new folder behind."""
    had_run = (run_dir / ".hydra" / "config.yaml").is_file()
    try:
        with FolderLock(run_dir, "run folder"):
            cfg = plan_start(cfg, run_dir, overrides, multirun=multirun)
            result = train(cfg, None if cfg.get("resume") else overrides)  # a resumed run keeps its overrides.yaml
    except Exception as error:
        user_error = find_user_error(error)
        if not multirun and user_error and not had_run and not isinstance(user_error, FolderInUseError):
            remove_if_empty(run_dir)  # never another process's folder
        raise
    write_status(run_dir, "ok", result.metrics)
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def app(cfg: DictConfig) -> float | None:
    """One run, or one job of a multirun. A failed job is recorded in its status.json and the
    sweep goes on; a job that already finished (a re-run sweep) is skipped; a single run that
    fails on a bad input prints one ``error:`` line, exits 1 and leaves no new folder behind."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    had_run = (run_dir / ".hydra" / "config.yaml").is_file()
    try:
        if not is_global_zero():  # a DDP rank re-launched by Lightning: rank 0 saved the config it trains with
            train(read_run_config(run_dir) if had_run else cfg)
            return None
        done = finished_job(run_dir, overrides) if in_multirun() else None
        if done is not None:  # read without touching the job's folder
            print(f"sweep: job {run_dir.name} finished before (status.json ok): skipped")
            return done.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None
        metrics = run_in_folder(cfg, run_dir, overrides, multirun=in_multirun()).metrics
    except Exception as error:
        user_error = find_user_error(error)
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
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(1) from None
    shown = {k: float(f"{v:.6g}") for k, v in sorted(metrics.items()) if "/kl_dim/" not in k}
    log.info("final metrics (nats per image): %s", shown)
    return metrics.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None


def main() -> None:
    """``vaelab-train`` / ``python train.py``: Hydra's command line, its errors as one line."""
    run_hydra_app(app)


# ``vaelab.train`` is both this module (``python -m vaelab.train``) and the Python API's
# ``vaelab.train([...])``: importing a submodule sets the package attribute to the module, so the
# module itself is made callable rather than shadowing the function.
sys.modules[__name__].__class__ = CallableTrainModule

if __name__ == "__main__":
    main()
