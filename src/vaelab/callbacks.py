"""The guards and monitors of a training run: collapse warnings (``CollapseMonitor``), the NaN
guard (``NaNGuard``), images per second (``Throughput``), the run's final summary and KL table
(``FinalSummary``) and the SLURM time-limit requeue (``TimeLimitRequeue``).

The image panels are ``vaelab.image_panels``; checkpoints as W&B artifacts are
``vaelab.checkpointing.CheckpointArtifacts``. Both are re-exported here, where the ``_target_``
of older run folders names them (``vaelab.compat``).
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch

from vaelab.checkpointing import CheckpointArtifacts, last_checkpoint_written
from vaelab.diagnostics import ACTIVE_UNIT_THRESHOLD
from vaelab.errors import ConfigError, NonFiniteError
from vaelab.image_panels import ImagePanels, SampleGrids
from vaelab.metrics import TERMS
from vaelab.module import lightning_logs_this_step
from vaelab.slurm import requeue_if_time_is_short
from vaelab.wandb_run import log_kl_table, write_summaries

log = logging.getLogger(__name__)

__all__ = ["CheckpointArtifacts", "CollapseMonitor", "FinalSummary", "ImagePanels", "NaNGuard", "SampleGrids"]
__all__ += ["Throughput", "TimeLimitRequeue"]


class CollapseMonitor(L.Callback):
    """Warn in the log when the posterior collapses, the KL explodes or a loss is not finite.

    Reads the epoch's synchronised metrics when validation ends (no extra device syncs):
    collapse when ``val/active_units`` is 0 or ``val/kl`` < ``min_kl`` nats; explosion when
    ``val/kl`` > ``max_kl`` nats; non-finite when any logged loss term is NaN or infinite.
    """

    def __init__(self, min_kl: float = 0.1, max_kl: float = 1000.0):
        super().__init__()
        self.min_kl = min_kl
        self.max_kl = max_kl
        self.warnings: list[str] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        epoch = trainer.current_epoch
        found = [
            f"epoch {epoch}: {key} is {value} (not finite)"
            for key, value in sorted(metrics.items())
            if key.split("/")[-1] in TERMS and not math.isfinite(value)
        ]
        kl, units = metrics.get("val/kl"), metrics.get("val/active_units")
        if kl is not None and math.isfinite(kl):
            if units == 0 or kl < self.min_kl:
                units_text = "" if units is None else f", {units:.0f} active units"
                found.append(f"epoch {epoch}: posterior collapse: val/kl = {kl:.3f} nats{units_text}")
            elif kl > self.max_kl:
                found.append(f"epoch {epoch}: the KL explodes: val/kl = {kl:.1f} nats > {self.max_kl}")
        for message in found:
            log.warning(message)
        self.warnings += found


def grads_sum(grads: list[torch.Tensor]) -> torch.Tensor:
    """The sum of every gradient element: non-finite when any element is (cheaper than a norm)."""
    return torch.stack([g.sum() for g in grads]).sum()


class NaNGuard(L.Callback):
    """Stop training, before the optimizer step, when the loss or a gradient is not finite.

    The error names the step and the offending term (recon or KL); the checkpoints already
    written are left as they are. Checks every ``check_every_n_steps`` steps (each check
    reads a few scalars from the device).
    """

    def __init__(self, check_every_n_steps: int = 1):
        super().__init__()
        if check_every_n_steps < 1:
            raise ConfigError(f"callbacks.nan_guard.check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step % self.check_every_n_steps:
            return
        terms = {name: pl_module.last_terms[name] for name in ("recon", "kl", "loss") if name in pl_module.last_terms}
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # one sum and one device sync per step (reading the gradients is most of its cost); the
        # details only when something is wrong or the sum of finite values overflows
        values = [value.detach().float() for value in terms.values()]
        if grads:
            values.append(grads_sum(grads).float())
        if not values or math.isfinite(torch.stack(values).sum().item()):
            return
        bad = {name: float(value.detach()) for name, value in terms.items() if not torch.isfinite(value)}
        if bad:
            culprits = [name for name in ("recon", "kl") if name in bad] or ["loss"]
            raise NonFiniteError(
                f"step {step}: the training loss is not finite ({', '.join(f'{n}={bad[n]}' for n in culprits)}); "
                f"training stopped, the checkpoints written so far are kept{self._last(trainer)}"
            )
        names = [n for n, p in pl_module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if not names:  # every gradient finite, only their sum overflows
            return
        raise NonFiniteError(
            f"step {step}: non-finite gradients in {', '.join(names[:3])}"
            f"{' ...' if len(names) > 3 else ''}; training stopped, the checkpoints written so far are kept"
            f"{self._last(trainer)}"
        )

    @staticmethod
    def _last(trainer: L.Trainer) -> str:
        path = last_checkpoint_written(trainer)
        return f" (last: {path})" if path else ""


class Throughput(L.Callback):
    """Training images per second, logged as ``train/images_per_second`` on the steps the loggers
    write: the images of the steps since the last logging step (or the epoch's start) over their
    wall time, on all ranks together (under DDP every rank trains on a batch of the same size).
    Lightning's ThroughputMonitor needs a batch-size function that a YAML config cannot give, and
    logs under its own names. One hook per step: its cost is in docs/benchmarks.md."""

    def __init__(self):
        self.images, self.started = 0, 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self.images, self.started = 0, time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        fetched = getattr(pl_module, "images_last_step", None)  # set under steps_per_fetch (a fetch may stop early)
        self.images += fetched if fetched is not None else len(batch[0]) * trainer.world_size
        if lightning_logs_this_step(trainer):
            now = time.perf_counter()
            metrics = {"train/images_per_second": self.images / (now - self.started)}
            if hasattr(pl_module, "log_train_metrics"):  # vaelab's module: also under steps_per_fetch
                pl_module.log_train_metrics(metrics)
            else:
                pl_module.log_dict(metrics, on_step=True, on_epoch=False)
            self.images, self.started = 0, now


class FinalSummary(L.Callback):
    """Put the final metrics (nats per image), the epoch and step counts, the fit time, the best
    checkpoint and the world size into the W&B run summary, at the end of fit and of test, so
    that W&B's tables and parallel-coordinates panels compare runs with no set-up.

    It runs where the trainer's state lives: on global rank 0, inside the spawned process under
    ``ddp_spawn`` (the parent gets back the metrics, not the epoch and step counts)."""

    def __init__(self):
        self.fit_started: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self.fit_started = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        extra = {"time/fit_seconds": time.perf_counter() - self.fit_started} if self.fit_started else {}
        self.write(trainer, extra)
        diagnostics = getattr(pl_module, "last_diagnostics", None) or {}
        if trainer.is_global_zero and "kl_per_dim" in diagnostics:  # the last validation's, over the whole split
            log_kl_table(
                trainer.loggers, diagnostics["kl_per_dim"], diagnostics["mean_variance"], ACTIVE_UNIT_THRESHOLD
            )

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        self.write(trainer, {})

    @staticmethod
    def write(trainer: L.Trainer, extra: dict) -> None:
        if not trainer.is_global_zero:
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        final = {name: float(value) for name, value in trainer.callback_metrics.items()}
        final.update(
            extra,
            epochs=trainer.current_epoch,
            global_step=trainer.global_step,
            best_checkpoint=best,
            world_size=trainer.world_size,
        )
        write_summaries(trainer.loggers, final)


class TimeLimitRequeue(L.Callback):
    """In a submitit SLURM job warned of its time limit: requeue when the next epoch starts,
    once this attempt has trained an epoch and written its last.ckpt (``vaelab.slurm``)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.first_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > self.first_epoch:
            requeue_if_time_is_short()
