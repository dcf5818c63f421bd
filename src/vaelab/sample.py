"""Pictures from a checkpoint: prior samples, traversals, interpolations, the 2-D manifold, the latent scatter.

    vaelab-sample ckpt=logs/runs/<run>/checkpoints/last.ckpt n=64 out=grid.png
    vaelab-sample ckpt=<a CVAE checkpoint> label=7 n=16 out=sevens.png
    vaelab-sample ckpt=... kind=traversals out=traversals.png
    vaelab-sample ckpt=... kind=interpolations n=5 out=interpolations.png

``kind=samples`` (default): pixel means of p(x | z) for n prior samples z ~ N(0, I) (seeded by
``seed``); for a CVAE, ``label`` picks the class of every image, otherwise they cycle through
the classes. ``traversals``, ``interpolations`` and ``scatter`` encode test images of the
checkpoint's data set (``data_root`` says where it is); see ``vaelab.panels`` for what each shows.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from vaelab.cli import CONFIG_DIR, run_hydra_app
from vaelab.config import is_count, is_number, require
from vaelab.errors import ConfigError, one_line_errors

KINDS = ("samples", "traversals", "interpolations", "manifold", "scatter")


def pick_test_images(module, cfg: DictConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images (and labels) of the checkpoint's data set; only class `label` if given."""
    from vaelab.evaluate import datamodule_for

    datamodule = datamodule_for(module, cfg.get("data_root"))
    images, labels = datamodule.test_set.images, datamodule.test_set.labels
    if cfg.get("label") is not None:
        keep = labels == cfg.label
        images, labels = images[keep], labels[keep]
    return images[:n], labels[:n]


def validate_sample_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line naming the key) for a bad vaelab-sample value, before anything loads."""
    require(cfg.kind in KINDS, "kind", cfg.kind, f"one of {', '.join(KINDS)}")
    require(is_count(cfg.n), "n", cfg.n, "an integer >= 1")
    require(is_count(cfg.steps) and cfg.steps >= 2, "steps", cfg.steps, "an integer >= 2")
    require(is_number(cfg.span) and cfg.span > 0, "span", cfg.span, "a number > 0")
    require(is_count(cfg.get("nrow"), allow_null=True), "nrow", cfg.get("nrow"), "null or an integer >= 1")
    require(is_count(cfg.scatter_images), "scatter_images", cfg.scatter_images, "an integer >= 1")
    require(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool), "seed", cfg.seed, "an integer")
    label = cfg.get("label")
    require(label is None or (isinstance(label, int) and not isinstance(label, bool)), "label", label,
            "null or a class number")


def make_picture(module, cfg: DictConfig) -> torch.Tensor:
    """The picture that ``cfg.kind`` asks for, as a (3, H, W) image in [0, 1]."""
    from torchvision.utils import make_grid

    from vaelab import panels
    from vaelab.diagnostics import kl_per_dimension

    validate_sample_config(cfg)
    kind, n, vae = cfg.kind, cfg.n, module.vae
    module.sample(1, cfg.get("label"))  # a label the model cannot take fails here, before test images load
    if kind == "samples":
        nrow = cfg.get("nrow") or max(1, round(n**0.5))
        return make_grid(module.sample(n, cfg.get("label"), cfg.seed), nrow=nrow, pad_value=1.0)
    if kind == "manifold":
        if vae.latent_dim != 2 or vae.conditional:
            raise ConfigError(f"kind=manifold needs an unconditional model with latent_dim=2, this one has latent_dim={vae.latent_dim}")
        return panels.manifold(module, cfg.get("nrow") or 15)
    images, labels = pick_test_images(module, cfg, max(2 * n, cfg.scatter_images) if kind == "scatter" else 2 * n)
    y = labels if vae.conditional else None
    if kind == "scatter":
        mean, logvar = panels.encode_all(module, images, labels)
        return panels.latent_scatter(mean, labels, kl_per_dimension(mean, logvar), title="test posterior means")
    if kind == "traversals":
        mean, logvar = panels.encode_all(module, images[:1000], labels[:1000])
        return panels.traversals(module, images[:1], None if y is None else y[:1], kl_per_dimension(mean, logvar),
                                 steps=cfg.steps, span=cfg.span, max_dims=n)
    if len(images) < 2 * n:
        raise ConfigError(f"n={n} interpolation pairs need {2 * n} test images, the split has {len(images)}")
    return panels.interpolations(module, images[:n], images[n:2 * n], None if y is None else y[:n], steps=cfg.steps)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sample")
def app(cfg: DictConfig) -> None:
    from torchvision.utils import save_image

    from vaelab.evaluate import load_module

    with one_line_errors():
        validate_sample_config(cfg)
        module = load_module(cfg.ckpt)
        picture = make_picture(module, cfg)
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(picture, out)
        label = "" if cfg.get("label") is None else f", class {cfg.label}"
        print(f"wrote {out} ({cfg.kind}, n={cfg.n}{label}, {picture.shape[2]}x{picture.shape[1]} pixels)")


def main() -> None:
    """``vaelab-sample``: Hydra's command line, its errors as one line."""
    run_hydra_app(app)


if __name__ == "__main__":
    main()
