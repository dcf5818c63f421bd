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
from omegaconf import DictConfig

from vaelab.cli import CONFIG_DIR, VERSION_BASE, run_hydra_app
from vaelab.command_configs import validate_sample_config
from vaelab.errors import one_line_errors


@hydra.main(**VERSION_BASE, config_path=str(CONFIG_DIR), config_name="sample")
def app(cfg: DictConfig) -> None:
    from vaelab.runs import write_file
    from vaelab.safe_load import read_vaelab_checkpoint

    with one_line_errors():
        validate_sample_config(cfg)
        checkpoint = read_vaelab_checkpoint(cfg.ckpt)
        # imported once the inputs have passed: Lightning takes seconds
        from torchvision.utils import save_image

        from vaelab.module import VAELitModule
        from vaelab.panels import make_picture

        module = VAELitModule.from_checkpoint(checkpoint, source=f"ckpt={cfg.ckpt}")
        del checkpoint
        picture = make_picture(module, cfg)
        out = Path(cfg.out)
        suffix = out.suffix.lstrip(".").lower() or "png"
        write_file(out, lambda handle: save_image(picture, handle, format="jpeg" if suffix == "jpg" else suffix))
        label = "" if cfg.get("label") is None else f", class {cfg.label}"
        print(f"wrote {out} ({cfg.kind}, n={cfg.n}{label}, {picture.shape[2]}x{picture.shape[1]} pixels)")


def main() -> None:
    """``vaelab-sample``: Hydra's command line, its errors as one line."""
    run_hydra_app(app)


if __name__ == "__main__":
    main()
