"""Image panels during training: made at the end of validation, saved as PNG files in the run
folder (``images/<panel>/epoch=NNN.png``) and logged as images to every logger that takes images
(W&B). What each panel shows is in ``vaelab.panels``; which ones are made, and how often, is the
``panels`` setting of ``callbacks.image_panels``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torchvision.utils import save_image

from vaelab import panels as draw
from vaelab.config import PANELS, panel_intervals
from vaelab.diagnostics import kl_per_dimension
from vaelab.errors import ConfigError

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
            raise ConfigError(f"callbacks.image_panels.every_n_epochs must be >= 1, got {every_n_epochs}")
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
