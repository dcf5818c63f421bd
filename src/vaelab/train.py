"""The Hydra entry point: ``python train.py ...`` or ``vaelab-train ...``.

Only hydra and omegaconf are imported at module level, so ``--help`` and ``--cfg job``
stay fast; torch and Lightning are imported when a run starts.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from vaelab.errors import UserError, find_user_error
from vaelab.sweep import in_multirun, sweep_group, threads_per_job, write_status

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "configs"

OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
OmegaConf.register_new_resolver("vaelab_group", sweep_group, replace=True)
OmegaConf.register_new_resolver("vaelab_run_dir", lambda resume, default: resume or default, replace=True)


def checkpoint_step(path: str) -> int:
    """The global step at which a checkpoint was saved (sys.maxsize when ``path`` is not a file, e.g. "last")."""
    import torch

    if not Path(path).is_file():
        return sys.maxsize
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step", 0))


def checkpoint_to_resume(cfg: DictConfig) -> str | None:
    """ckpt_path as given ("last" or a path), or <resume>/checkpoints/last.ckpt with resume=RUN_DIR."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    if cfg.get("resume"):
        last = Path(cfg.resume) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise UserError(f"resume={cfg.resume}: there is no checkpoints/last.ckpt in that run folder")
        return str(last)
    return None


def remove_if_empty(run_dir: str | Path, keep: bool = False) -> None:
    """Delete a run folder that holds only Hydra's bookkeeping (.hydra/, train.log): a run that
    stopped on a bad input leaves no half-made run behind. Folders with anything else stay."""
    run_dir = Path(run_dir)
    if keep or not run_dir.is_dir():
        return
    if {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        import shutil

        logging.shutdown()  # close train.log before removing it
        shutil.rmtree(run_dir, ignore_errors=True)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test on the best checkpoint. Returns the final metrics as floats."""
    import time
    import warnings

    from vaelab.config import validate

    validate(cfg)  # before the slow imports: a bad value fails in a second
    import lightning as L
    from hydra.utils import instantiate

    from vaelab.callbacks import FinalSummary
    from vaelab.loggers import build_loggers, finish_wandb
    from vaelab.module import VAELitModule

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
        datamodule = instantiate(cfg.data)
        module = VAELitModule(
            model=OmegaConf.to_container(cfg.model, resolve=True),
            loss=OmegaConf.to_container(cfg.loss, resolve=True),
            annealing=OmegaConf.to_container(cfg.annealing, resolve=True),
            image_shape=datamodule.image_shape,
            num_classes=datamodule.num_classes,
            data=OmegaConf.to_container(cfg.data, resolve=True),
        )
        if cfg.get("compile"):
            module.vae.compile()  # in place: the checkpoint's parameter names stay the same
        # a callback set to null (callbacks.nan_guard=null) is off
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
        if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar callback then
            callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
        callbacks.append(FinalSummary())  # final metrics into the W&B run summary, from global rank 0
        datamodule.setup()  # missing or damaged data fails here, before any logger writes a file
        ckpt_path = checkpoint_to_resume(cfg)
        loggers = build_loggers(cfg, resume_step=checkpoint_step(ckpt_path) if ckpt_path else None)
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["time/fit_seconds"] = time.perf_counter() - started  # this process only, after a resume
        if cfg.get("test", True):
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        return metrics
    finally:
        finish_wandb()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """One run. In a multirun a failed job is recorded in its status.json and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig

    output_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = train(cfg)
    except Exception as error:
        user_error = find_user_error(error)
        if in_multirun():
            message = str(user_error) if user_error else f"{type(error).__name__}: {error}"
            log.error("job failed: %s", message, exc_info=user_error is None)
            write_status(output_dir, "failed", error=message.splitlines()[0] if message else type(error).__name__)
            return float("nan")  # Optuna records a NaN as a failed trial and goes on
        if user_error is None:
            raise
        # never delete the folder the user asked to resume
        remove_if_empty(output_dir, keep=bool(cfg.get("resume")) and Path(cfg.resume).resolve() == Path(output_dir).resolve())
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(1) from None
    write_status(output_dir, "ok", metrics)
    shown = {k: float(f"{v:.6g}") for k, v in sorted(metrics.items()) if "/kl_dim/" not in k}
    log.info("final metrics (nats per image): %s", shown)
    return metrics.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None


if __name__ == "__main__":
    main()
