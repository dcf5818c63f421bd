"""Training one run: build the data, the model, the callbacks, the loggers and the Trainer from
the composed config, fit, test, and say where everything went.

``train(cfg)`` is the whole run in the current folder settings; ``run_in_folder`` adds the run
folder's lock, resume planning and ``status.json``. The command line (``vaelab.train``) and the
Python API (``vaelab.api``) both call ``run_in_folder``. torch and Lightning are imported inside.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vaelab.errors import TrialPruned, UserError, find_user_error
from vaelab.runs import (
    DATA_SPLIT_FILE,
    FolderInUseError,
    FolderLock,
    checkpoint_dir,
    config_file,
    is_global_zero,
    last_checkpoint,
    last_checkpoint_file,
    plan_start,
    remove_if_empty,
    save_run_config,
    source_commit,
    write_file,
    write_status,
)
from vaelab.slurm import SchedulerStopped, stop_on_sigterm

log = logging.getLogger(__name__)


def switched_on(callbacks: DictConfig | None) -> list[tuple[str, DictConfig]]:
    """(name, settings) of the callbacks to build: not null, not ``enabled: false`` (the key is
    vaelab's switch, not the callback's argument); a switched-on Rich bar replaces tqdm's."""
    chosen = []
    for name, settings in (callbacks or {}).items():
        if settings is None or settings.get("enabled", True) is False:
            continue
        if "enabled" in settings:  # resolved first: the copy has no root to resolve ${...} against
            values = OmegaConf.to_container(settings, resolve=True)
            settings = OmegaConf.create({key: value for key, value in values.items() if key != "enabled"})
        chosen.append((name, settings))
    if any(name == "rich_progress_bar" for name, _ in chosen):
        chosen = [(name, settings) for name, settings in chosen if name != "progress_bar"]
    return chosen


def checkpoint_to_resume(cfg: DictConfig) -> tuple[str, Path] | None:
    """(the setting that names it, the checkpoint file) to continue from, or None for a fresh start:
    ckpt_path as given, or <resume>/checkpoints/last.ckpt with resume=RUN_DIR."""
    if cfg.get("ckpt_path"):
        return "ckpt_path", Path(cfg.ckpt_path)
    if cfg.get("resume") and cfg.resume != "auto":  # main() has turned a resume=auto that continues into a path
        return "resume", last_checkpoint(Path(cfg.resume), "resume")
    return None


def raised_while_restoring(error: BaseException) -> bool:
    """True when ``error`` was raised inside Lightning's checkpoint connector, i.e. while it
    restored a checkpoint's model, optimizer, scheduler, loop or callback state."""
    traceback = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename.endswith("checkpoint_connector.py"):
            return True
        traceback = traceback.tb_next
    return False


def fit(trainer, module, datamodule, ckpt_path, key: str | None) -> None:
    """``trainer.fit`` from ``ckpt_path``; a checkpoint whose optimizer, scheduler, loop or
    callback state Lightning cannot restore is a CheckpointError naming it, not a traceback."""
    from vaelab.errors import first_line
    from vaelab.safe_load import CheckpointError

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except Exception as error:
        if ckpt_path is None or not raised_while_restoring(error) or find_user_error(error) is not None:
            raise
        raise CheckpointError(f"{key}={ckpt_path} cannot be restored: {first_line(error)}") from error


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

    from vaelab.config import validate
    from vaelab.safe_load import read_vaelab_checkpoint

    validate(cfg)  # before the slow imports: a bad value fails in a second
    resume_from = checkpoint_to_resume(cfg)  # read as data, and checked against the model below
    checkpoint = read_vaelab_checkpoint(resume_from[1], resume_from[0]) if resume_from else None
    import lightning as L

    from vaelab.callbacks import FinalSummary, TimeLimitRequeue
    from vaelab.checkpointing import RemoveStaleCheckpoints, check_fits, in_folder
    from vaelab.inner_steps import plan
    from vaelab.instantiate import instantiate_setting
    from vaelab.loggers import build_loggers, log_final_hparams
    from vaelab.module import VAELitModule
    from vaelab.optuna_search import is_pruned, objective_names, pruning_callback
    from vaelab.profiling import NoProfiler
    from vaelab.wandb_run import finish_wandb, start_wandb_service
    from vaelab.workarounds import quiet_third_party

    quiet_third_party()
    start_wandb_service(cfg)  # in the background, while the data and the model are set up
    if logging.getLogger().hasHandlers():  # Hydra's handlers print Lightning's messages already
        logging.getLogger("lightning").handlers.clear()
    import torch

    # joblib's loky workers (hydra/launcher=local_parallel) set OMP_NUM_THREADS to cores // n_jobs;
    # a SLURM task has the CPUs it asked for (hydra.launcher.cpus_per_task), not the node's
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    log.info("torch threads: %d", torch.get_num_threads())
    L.seed_everything(cfg.seed, workers=True)
    try:
        datamodule = instantiate_setting(cfg.data, "data")
        datamodule.setup()  # missing or damaged data fails here, before any logger writes a file; the image shape
        if datamodule.split_record is not None and is_global_zero():  # which files a folder's run trained on
            split = json.dumps(datamodule.split_record, indent=1) + "\n"
            write_file(Path(cfg.paths.output_dir) / DATA_SPLIT_FILE, split, root=cfg.paths.output_dir)
        module = VAELitModule.from_config(cfg, datamodule)
        module.run_record = {
            "commit": source_commit(),
            "seed": int(cfg.seed),
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        inner, trainer_instead, note = plan(cfg.get("steps_per_fetch", 1), cfg.trainer, datamodule.batch_size)
        if note:
            log.info(note)
        if inner is not None:
            module.use_inner_steps(inner)
            datamodule.batches_per_fetch = inner.batches_per_fetch
        if cfg.get("compile"):
            module.vae.compile()  # in place: the checkpoint's parameter names stay the same
        # a callback set to null (callbacks.nan_guard=null) is off
        callbacks = [instantiate_setting(c, f"callbacks.{name}") for name, c in switched_on(cfg.get("callbacks"))]
        if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar callback then
            callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
        callbacks.append(FinalSummary())  # final metrics into the W&B run summary, from global rank 0
        callbacks.append(RemoveStaleCheckpoints())
        callbacks.append(TimeLimitRequeue())  # a SLURM job near its time limit requeues after a checkpoint
        pruning = pruning_callback(objective_names(cfg.get("optimized_metric")))  # a trial of an Optuna study
        if pruning is not None:
            callbacks.append(pruning)
        ckpt_path, resume_step, metrics_before = None, None, {}
        if resume_from:  # checked against this model before Lightning loads it
            key, ckpt_path = resume_from
            check_fits(module, checkpoint, f"{key}={ckpt_path}")
            resume_step = int(checkpoint.get("global_step", 0))
            metrics_before = dict((checkpoint.get("vaelab") or {}).get("metrics") or {})
            del checkpoint
        # no profiler named: one that does nothing at each hook call (Lightning's default costs time there)
        profiler = {} if cfg.trainer.get("profiler") is not None else {"profiler": NoProfiler()}
        # the Trainer checks its arguments before any logger starts a run or writes a file
        trainer = instantiate_setting(
            cfg.trainer, "trainer", logger=False, callbacks=callbacks, **trainer_instead, **profiler
        )
        trainer.loggers = build_loggers(cfg, resume_step=resume_step)
        if is_global_zero():
            save_run_config(cfg.paths.output_dir, cfg, overrides)
        started = time.perf_counter()
        try:
            fit(trainer, module, datamodule, ckpt_path, key if resume_from else None)
            if pruning is not None:
                pruning.check_pruned()  # under DDP the callback only stops the loop
        except Exception as error:
            if pruning is None or not is_pruned(error):
                raise
            last = {k: float(v) for k, v in trainer.callback_metrics.items()}
            value = last.get(pruning.monitor, float("nan"))
            message = f"pruned after epoch {trainer.current_epoch}: {pruning.monitor}={value:.6g}"
            raise TrialPruned(message, {**metrics_before, **last}) from None
        # a resumed run that had finished its epochs (killed during the test) keeps its last train/ and val/ values
        metrics = {**metrics_before, **{k: float(v) for k, v in trainer.callback_metrics.items()}}
        metrics["time/fit_seconds"] = time.perf_counter() - started  # this process only, after a resume
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best and not in_folder(best, checkpoint_dir(cfg.paths.output_dir)):
            log.warning("not testing %s: it is outside this run's checkpoints/; testing the last weights", best)
            best = ""
        if cfg.get("test", True):
            # verbose=False: no results table; the final metrics line below holds the same numbers
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if trainer.is_global_zero:
            log_final_hparams(trainer.loggers, cfg, metrics)
        run_dir = Path(cfg.paths.output_dir)
        last = last_checkpoint_file(run_dir)
        return TrainResult(metrics, run_dir, Path(best) if best else None, last if last.is_file() else None)
    finally:
        finish_wandb()


def run_in_folder(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool = False) -> TrainResult:
    """Train in ``run_dir`` while holding its lock: a fresh start, or its run continued
    (``resume=``, ``resume=auto``, a sweep job that stopped), then ``status.json`` says ok.
    A single run that fails on a bad input leaves no new folder behind."""
    saved = config_file(run_dir)
    had_run = saved.is_file()
    saved_before = saved.stat().st_mtime_ns if had_run else None
    try:
        with FolderLock(run_dir, "run folder"), stop_on_sigterm() as sigterm:
            try:
                cfg = plan_start(cfg, run_dir, overrides, multirun=multirun)
                result = train(cfg, None if cfg.get("resume") else overrides)  # a resumed run keeps its overrides.yaml
            except Exception as error:
                if sigterm.received:  # e.g. W&B's service, stopped by the same signal: not the cause
                    raise SchedulerStopped() from error
                raise
    except TrialPruned as pruned:  # an outcome of the search: the sweeper records it as pruned
        write_status(run_dir, "pruned", pruned.metrics, error=str(pruned))
        raise
    except SchedulerStopped as stopped:  # not a failure: the next attempt continues from last.ckpt
        if saved.is_file() and is_global_zero():
            with contextlib.suppress(UserError):
                write_status(run_dir, "stopped", error=str(stopped))
        log.warning("%s; the next attempt continues from %s", stopped, last_checkpoint_file(run_dir))
        raise
    except Exception as error:
        user_error = find_user_error(error)
        if not multirun and not isinstance(user_error, FolderInUseError):  # never another process's folder
            if user_error and not had_run:
                remove_if_empty(run_dir)
            if saved.is_file() and saved.stat().st_mtime_ns != saved_before and is_global_zero():
                # this start passed its checks and saved its config, then stopped: say so in status.json
                message = str(user_error) if user_error else f"{type(error).__name__}: {error}"
                with contextlib.suppress(UserError):  # a status that cannot be written must not hide the error
                    write_status(run_dir, "failed", error=message.splitlines()[0] if message else type(error).__name__)
        raise
    write_status(run_dir, "ok", result.metrics)
    return result
