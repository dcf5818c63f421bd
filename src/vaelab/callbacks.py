"""Callbacks: image panels (``ImagePanels``), collapse warnings (``CollapseMonitor``), the
NaN guard (``NaNGuard``), images per second (``Throughput``), the W&B run summary and KL table
(``FinalSummary``) and checkpoints as W&B artifacts (``CheckpointArtifacts``).

Image panels are made at the end of validation, saved as PNG files in the run folder and
logged as images to every logger that takes images (W&B). What each panel shows is in
``vaelab.panels``; which ones are made, and how often, is the ``panels`` setting.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from torchvision.utils import save_image

from vaelab import panels as draw
from vaelab.config import PANELS, panel_intervals
from vaelab.diagnostics import ACTIVE_UNIT_THRESHOLD, kl_per_dimension
from vaelab.errors import ConfigError, NonFiniteError
from vaelab.module import lightning_logs_this_step
from vaelab.slurm import requeue_if_time_is_short
from vaelab.wandb_run import log_checkpoints, log_kl_table, wandb_loggers, write_summaries

log = logging.getLogger(__name__)


# panel name -> on (every every_n_epochs), off, or its own interval in validation epochs
class ImagePanels(L.Callback):
    """Make the image panels at the end of validation, save them to
    ``<output_dir>/images/<panel>/epoch=NNN.png`` and log them as ``images/<panel>``.

    Args:
        every_n_epochs: make the panels that are switched on every this many validation epochs.
        panels: panel name -> true (every every_n_epochs), false (off) or its own interval
            in validation epochs (0: off). Names:
            reconstructions, samples, class_samples (CVAE), traversals, interpolations,
            manifold (latent_dim = 2, unconditional), latent_scatter.
        num_images: images in the reconstruction panel.
        num_samples: prior samples in the samples panel.
        samples_per_class: columns of the class_samples panel.
        manifold_steps: the manifold is manifold_steps x manifold_steps images.
        traversal_steps, traversal_span, traversal_dims: columns, range (prior standard
            deviations either side of the posterior mean) and most rows of the traversals.
        interpolation_pairs, interpolation_steps: rows and columns of the interpolations.
        scatter_images: validation images in the latent scatter (0: the whole validation split).
        output_dir: the run folder (default: the trainer's root folder).
        seed: seeds the prior samples, which are the same every epoch.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        panels: dict | None = None,
        num_images: int = 16,
        num_samples: int = 64,
        samples_per_class: int = 10,
        manifold_steps: int = 15,
        traversal_steps: int = 9,
        traversal_span: float = 3.0,
        traversal_dims: int = 10,
        interpolation_pairs: int = 5,
        interpolation_steps: int = 10,
        scatter_images: int = 5000,
        output_dir: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ConfigError(f"callbacks.sample_grids.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.intervals = panel_intervals(every_n_epochs, panels)
        self.num_images = num_images
        self.num_samples = num_samples
        self.samples_per_class = samples_per_class
        self.manifold_steps = manifold_steps
        self.traversal_steps = traversal_steps
        self.traversal_span = traversal_span
        self.traversal_dims = traversal_dims
        self.interpolation_pairs = interpolation_pairs
        self.interpolation_steps = interpolation_steps
        self.scatter_images = scatter_images
        self.output_dir = output_dir
        self.seed = seed

    def due(self, epoch: int) -> set[str]:
        """The panels to make after the validation of (0-based) epoch."""
        return {name for name, every in self.intervals.items() if every and (epoch + 1) % every == 0}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        wanted = self.due(trainer.current_epoch)
        if not wanted:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            images = self.make_panels(pl_module, trainer.datamodule, wanted)
        finally:
            pl_module.train(was_training)
        for name, grid in images.items():
            path = self.save(name, grid, trainer)
            self.log_image(trainer, name, path, grid)

    @torch.no_grad()
    def make_panels(self, pl_module, datamodule, wanted: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Each wanted panel (default: all that apply to this model) as a (3, H, W) image in [0, 1]."""
        wanted = set(PANELS) if wanted is None else wanted
        vae, device = pl_module.vae, pl_module.device
        generator = torch.Generator().manual_seed(self.seed)  # the same z every epoch
        split = "val" if len(datamodule.fixed_batch("val", 1)[0]) else "train"
        n_fixed = max(self.num_images, 2 * self.interpolation_pairs, 1)
        x, y = (t.to(device) for t in datamodule.fixed_batch(split, n_fixed))
        y_or_none = y if vae.conditional else None
        kl_per_dim = pl_module.last_diagnostics.get("kl_per_dim")
        images = {}
        if "reconstructions" in wanted:
            images["reconstructions"] = draw.reconstructions(
                pl_module, x[: self.num_images], None if y_or_none is None else y_or_none[: self.num_images]
            )
        if "samples" in wanted:
            z = torch.randn(self.num_samples, vae.latent_dim, generator=generator).to(device)
            labels = torch.arange(self.num_samples, device=device) % vae.num_classes if vae.conditional else None
            images["samples"] = draw.prior_samples(pl_module, z, labels)
        if "class_samples" in wanted and vae.conditional:
            images["class_samples"] = draw.class_samples(pl_module, self.samples_per_class, generator)
        if "traversals" in wanted:
            images["traversals"] = draw.traversals(
                pl_module,
                x[:1],
                None if y_or_none is None else y_or_none[:1],
                kl_per_dim,
                self.traversal_steps,
                self.traversal_span,
                self.traversal_dims,
            )
        pairs = min(self.interpolation_pairs, len(x) // 2)
        if "interpolations" in wanted and pairs:
            images["interpolations"] = draw.interpolations(
                pl_module,
                x[:pairs],
                x[pairs : 2 * pairs],
                None if y_or_none is None else y_or_none[:pairs],
                self.interpolation_steps,
            )
        if "manifold" in wanted and vae.latent_dim == 2 and not vae.conditional:
            images["manifold"] = draw.manifold(pl_module, self.manifold_steps)
        if "latent_scatter" in wanted:
            images["latent_scatter"] = self.latent_scatter(pl_module, datamodule)
        return images

    def latent_scatter(self, pl_module, datamodule) -> torch.Tensor:
        """The validation split's posterior means (the first scatter_images of them), coloured by
        class: drawn at validation, it reads no test image."""
        val_x, val_y = datamodule.fixed_batch("val", self.scatter_images or 10**9)
        mean, logvar = draw.encode_all(pl_module, val_x, val_y)
        return draw.latent_scatter(
            mean,
            val_y,
            kl_per_dimension(mean, logvar),
            datamodule.classes,
            title=f"{datamodule.name} validation posterior means",
        )

    def save(self, name: str, grid: torch.Tensor, trainer: L.Trainer) -> Path:
        from vaelab.runs import write_file

        root = Path(self.output_dir or trainer.default_root_dir)
        path = root / "images" / name / f"epoch={trainer.current_epoch:03d}.png"
        return write_file(path, lambda handle: save_image(grid, handle, format="png"), root=root)

    def log_image(self, trainer: L.Trainer, name: str, path: Path, grid: torch.Tensor) -> None:
        """The panel to every logger that takes images: W&B from its PNG, TensorBoard as a (3, H, W) tensor."""
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"images/{name}", grid.clamp(0, 1), global_step=trainer.global_step)
            elif hasattr(logger, "log_image"):
                logger.log_image(
                    key=f"images/{name}",
                    images=[str(path)],
                    caption=[f"epoch {trainer.current_epoch}"],
                    step=trainer.global_step,
                )


class SampleGrids(ImagePanels):
    """ImagePanels' former name: run folders saved with it (``_target_: vaelab.callbacks.SampleGrids``)
    still resume."""


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
            if key.split("/")[-1] in ("loss", "recon", "kl", "elbo", "iwae") and not math.isfinite(value)
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


def last_checkpoint_written(trainer: L.Trainer) -> Path | None:
    """The newest checkpoint written: last.ckpt (callbacks.last_checkpoint) or Lightning's save_last."""
    paths = [
        Path(path)
        for cb in trainer.checkpoint_callbacks
        for path in (cb.last_model_path, cb.best_model_path)
        if path and Path(path).stem == "last"
    ]
    return paths[0] if paths else None


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
        # one fused check and one device sync per step; the details only when something is wrong
        values = [value.detach().float().reshape(1) for value in terms.values()]
        if grads:
            values.append(grads_sum(grads).float().reshape(1))
        if not values or torch.isfinite(torch.cat(values)).all():
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
        self.images += len(batch[0]) * trainer.world_size
        if lightning_logs_this_step(trainer):
            now = time.perf_counter()
            pl_module.log("train/images_per_second", self.images / (now - self.started), on_step=True, on_epoch=False)
            self.images, self.started = 0, now


class FinalSummary(L.Callback):
    """Put the final metrics (nats per image), the epoch and step counts, the fit time, the best
    checkpoint and the world size into the W&B run summary, at the end of fit and of test, so
    that W&B's tables and parallel-coordinates panels compare runs with no set-up.

    It runs where the W&B run lives: on global rank 0, inside the spawned process under
    ``ddp_spawn`` (a write from the parent process after the ranks have finished can be lost)."""

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


class CheckpointArtifacts(L.Callback):
    """At the end of fit, the best checkpoint (on ``val/elbo``) and the last one as two versions of
    the W&B artifact ``model-<run id>``, aliased ``best`` and ``last`` (W&B makes the last one
    ``latest``); online they are uploaded, offline staged for ``wandb sync``. Nothing without a W&B
    logger. Lightning's own ``log_model`` is not used: it aliases the newest file of every
    ModelCheckpoint ``best``, and vaelab has two (the best one and ``last.ckpt``)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero or not wandb_loggers(trainer.loggers) or trainer.checkpoint_callback is None:
            return
        best_callback = trainer.checkpoint_callback  # the first ModelCheckpoint: the one on val/elbo
        at = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        checkpoints = []  # W&B gives the version logged last the alias "latest" too
        if best_callback.best_model_path and Path(best_callback.best_model_path).is_file():
            best = Path(best_callback.best_model_path)
            score = best_callback.best_model_score
            scored = {"monitor": best_callback.monitor, "score": float(score)} if score is not None else {}
            checkpoints.append((best, ["best"], {**at, **scored, "file": best.name}))
        last = last_checkpoint_written(trainer)
        if last is not None and last.is_file():
            checkpoints.append((last, ["last"], {**at, "file": last.name}))
        log_checkpoints(trainer.loggers, checkpoints)
