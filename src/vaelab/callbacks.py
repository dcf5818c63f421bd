"""Callbacks: image panels (``SampleGrids``), collapse warnings (``CollapseMonitor``) and the
NaN guard (``NaNGuard``).

Image panels are made at the end of validation, saved as PNG files in the run folder and
logged as images to every logger that takes images (W&B).

Panels (each a ``torchvision.utils.make_grid``):
- ``reconstructions``: the first validation images (top row) above their reconstructions;
- ``samples``: decoded prior samples, with the same z every epoch;
- ``class_samples`` (CVAE only): one row per class, one column per shared z;
- ``manifold`` (latent_dim = 2 only): the decoder over a grid of prior quantiles.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
from torch.distributions import Normal
from torchvision.utils import make_grid, save_image

from vaelab.errors import ConfigError, NonFiniteError

log = logging.getLogger(__name__)


def prior_quantile_grid(steps: int, low: float = 0.05, high: float = 0.95) -> torch.Tensor:
    """z on a steps x steps grid of N(0, 1) quantiles: (steps * steps, 2), row-major, y decreasing down."""
    values = Normal(0.0, 1.0).icdf(torch.linspace(low, high, steps))
    ys, xs = torch.meshgrid(values.flip(0), values, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


class SampleGrids(L.Callback):
    """Every ``every_n_epochs`` validation epochs, make the panels, save them to
    ``<output_dir>/images/<panel>/epoch=NNN.png`` and log them as ``images/<panel>``."""

    def __init__(self, every_n_epochs: int = 1, num_images: int = 16, num_samples: int = 64,
                 samples_per_class: int = 10, manifold_steps: int = 15, output_dir: str | None = None, seed: int = 0):
        super().__init__()
        if every_n_epochs < 1:
            raise ConfigError(f"callbacks.sample_grids.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.num_samples = num_samples
        self.samples_per_class = samples_per_class
        self.manifold_steps = manifold_steps
        self.output_dir = output_dir
        self.seed = seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if not trainer.is_global_zero:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            panels = self.make_panels(pl_module, trainer.datamodule)
        finally:
            pl_module.train(was_training)
        for name, grid in panels.items():
            path = self.save(name, grid, trainer)
            self.log_image(trainer, name, path)

    @torch.no_grad()
    def make_panels(self, pl_module, datamodule) -> dict[str, torch.Tensor]:
        """Each panel as a (3, H, W) image grid in [0, 1]."""
        vae, device = pl_module.vae, pl_module.device
        generator = torch.Generator().manual_seed(self.seed)  # the same z every epoch
        panels = {}
        x, y = datamodule.fixed_batch("val", self.num_images)
        if len(x) == 0:
            x, y = datamodule.fixed_batch("train", self.num_images)
        x, y = x.to(device), y.to(device)
        recon = pl_module.reconstruct(x, y)
        panels["reconstructions"] = make_grid(torch.cat([x, recon]), nrow=len(x), pad_value=1.0)

        z = torch.randn(self.num_samples, vae.latent_dim, generator=generator).to(device)
        labels = torch.arange(self.num_samples, device=device) % max(vae.num_classes, 1) if vae.conditional else None
        panels["samples"] = make_grid(pl_module.generate(z, labels), nrow=int(self.num_samples**0.5), pad_value=1.0)

        if vae.conditional:
            k, n = vae.num_classes, self.samples_per_class
            z = torch.randn(n, vae.latent_dim, generator=generator).to(device).repeat(k, 1)  # row = class, column = shared z
            labels = torch.arange(k, device=device).repeat_interleave(n)
            panels["class_samples"] = make_grid(pl_module.generate(z, labels), nrow=n, pad_value=1.0)

        if vae.latent_dim == 2 and not vae.conditional:
            z = prior_quantile_grid(self.manifold_steps).to(device)
            panels["manifold"] = make_grid(pl_module.generate(z), nrow=self.manifold_steps, padding=0)
        return panels

    def save(self, name: str, grid: torch.Tensor, trainer: L.Trainer) -> Path:
        root = Path(self.output_dir or trainer.default_root_dir)
        path = root / "images" / name / f"epoch={trainer.current_epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        return path

    def log_image(self, trainer: L.Trainer, name: str, path: Path) -> None:
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=f"images/{name}", images=[str(path)],
                                 caption=[f"epoch {trainer.current_epoch}"], step=trainer.global_step)


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
        found = [f"epoch {epoch}: {key} is {value} (not finite)" for key, value in sorted(metrics.items())
                 if key.split("/")[-1] in ("loss", "recon", "kl", "elbo") and not math.isfinite(value)]
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
        bad = {name: float(value.detach()) for name, value in terms.items() if not torch.isfinite(value)}
        if bad:
            culprits = [name for name in ("recon", "kl") if name in bad] or ["loss"]
            raise NonFiniteError(f"step {step}: the training loss is not finite ({', '.join(f'{n}={bad[n]}' for n in culprits)}); "
                                 f"training stopped, the checkpoints written so far are kept{self._last(trainer)}")
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.norm() for g in grads]).sum()):
            names = [n for n, p in pl_module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            raise NonFiniteError(f"step {step}: non-finite gradients in {', '.join(names[:3])}"
                                 f"{' ...' if len(names) > 3 else ''}; training stopped, the checkpoints written so far are kept"
                                 f"{self._last(trainer)}")

    @staticmethod
    def _last(trainer: L.Trainer) -> str:
        path = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        return f" (last: {path})" if path else ""
