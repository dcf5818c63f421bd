"""Sample images from a checkpoint into a PNG grid.

    vaelab-sample ckpt=logs/runs/<run>/checkpoints/last.ckpt n=64 out=grid.png
    vaelab-sample ckpt=<a CVAE checkpoint> label=7 n=16 out=sevens.png

Pixel means of p(x | z) for z ~ N(0, I) (seeded by ``seed``), laid out by
``torchvision.utils.make_grid``. For a CVAE, ``label`` picks the class of every image;
without it, the images cycle through the classes.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from vaelab.errors import ConfigError, one_line_errors
from vaelab.train import CONFIG_DIR


@torch.no_grad()
def sample_images(module, n: int, label: int | None = None, seed: int = 0) -> torch.Tensor:
    """(n, C, H, W) pixel means in [0, 1] decoded from n prior samples."""
    vae = module.vae
    if n < 1:
        raise ConfigError(f"n={n} is not allowed: an integer >= 1")
    if label is not None and not vae.conditional:
        raise ConfigError(f"label={label} needs a conditional VAE checkpoint (model=cvae)")
    if label is not None and not 0 <= label < vae.num_classes:
        raise ConfigError(f"label={label} is not allowed: an integer in [0, {vae.num_classes})")
    z = torch.randn(n, vae.latent_dim, generator=torch.Generator().manual_seed(seed)).to(module.device)
    labels = None
    if vae.conditional:
        labels = torch.full((n,), label) if label is not None else torch.arange(n) % vae.num_classes
        labels = labels.to(module.device)
    return module.generate(z, labels).cpu()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sample")
def main(cfg: DictConfig) -> None:
    from torchvision.utils import make_grid, save_image

    from vaelab.evaluate import load_module

    with one_line_errors():
        module = load_module(cfg.ckpt)
        images = sample_images(module, cfg.n, cfg.get("label"), cfg.seed)
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        nrow = cfg.get("nrow") or max(1, round(cfg.n**0.5))
        save_image(make_grid(images, nrow=nrow, pad_value=1.0), out)
        print(f"wrote {out} ({cfg.n} samples{'' if cfg.get('label') is None else f' of class {cfg.label}'})")


if __name__ == "__main__":
    main()
