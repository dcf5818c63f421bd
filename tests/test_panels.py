"""Every image panel, from real training runs on synthetic data: its size, and what it shows."""

import pytest
import torch
from helpers import FAST, compose
from PIL import Image

from vaelab import panels
from vaelab.module import VAELitModule
from vaelab.training import train

TILE = 28 + 2  # one image plus make_grid's 2-pixel padding


def grid_size(columns: int, rows: int) -> tuple[int, int]:
    """(width, height) of a make_grid of 28 x 28 images with 2-pixel padding."""
    return 2 + columns * TILE, 2 + rows * TILE


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """A 2-latent VAE and a 3-latent CVAE, one epoch each, with every panel switched on."""
    out = {}
    for name, args in {"vae": ["model.latent_dim=2"], "cvae": ["model=cvae", "model.latent_dim=3"]}.items():
        run_dir = tmp_path_factory.mktemp(name)
        train(
            compose(
                [
                    *FAST,
                    *args,
                    "logger=none",
                    "test=false",
                    "callbacks.image_panels.manifold_steps=5",
                    "callbacks.image_panels.traversal_steps=7",
                    "callbacks.image_panels.interpolation_pairs=3",
                    "callbacks.image_panels.interpolation_steps=6",
                    "callbacks.image_panels.num_samples=9",
                ],
                output_dir=run_dir,
                data_root=data_root,
            )
        )
        out[name] = run_dir
    return out


def size(run_dir, panel):
    return Image.open(run_dir / "images" / panel / "epoch=000.png").size


def test_every_panel_has_the_expected_size(runs):
    vae, cvae = runs["vae"], runs["cvae"]
    assert size(vae, "reconstructions") == grid_size(16, 2)
    assert size(vae, "samples") == grid_size(3, 3)
    assert size(vae, "traversals") == grid_size(7, 2)  # one row per latent dimension
    assert size(cvae, "traversals") == grid_size(7, 3)
    assert size(vae, "interpolations") == grid_size(6, 3)  # one row per pair
    assert size(vae, "manifold") == (5 * 28, 5 * 28)
    assert size(cvae, "class_samples") == grid_size(10, 10)  # one row per class
    assert size(vae, "latent_scatter") == (500, 500)
    assert not (vae / "images" / "class_samples").exists()  # not a CVAE
    assert not (cvae / "images" / "manifold").exists()  # 3 latents, conditional


def test_scatter_is_not_blank(runs):
    pixels = torch.tensor(
        list(Image.open(runs["cvae"] / "images" / "latent_scatter" / "epoch=000.png").convert("L").getdata())
    )
    assert (pixels < 250).float().mean() > 0.02  # axes, labels and points, not a white page


def test_traversal_rows_follow_the_kl_order(runs, data_root):
    module = VAELitModule.from_checkpoint(runs["vae"] / "checkpoints" / "last.ckpt")
    x = torch.rand(1, 1, 28, 28)
    grid = panels.traversals(module, x, None, kl_per_dim=[0.1, 5.0], steps=3, span=2.0)
    mean, _ = module.vae.encode(x)
    z = mean.repeat(3, 1)
    z[:, 1] = torch.tensor([-2.0, 0.0, 2.0])  # the first row moves dimension 1, which has the larger KL
    first_row = module.generate(z)
    torch.testing.assert_close(grid[:, 2:30, 2:30], first_row[0].expand(3, -1, -1))
    torch.testing.assert_close(grid[:, 2:30, 2 + 2 * TILE : 30 + 2 * TILE], first_row[2].expand(3, -1, -1))
    assert panels.dimensions_by_kl(None, 3) == [0, 1, 2]
    assert panels.dimensions_by_kl(torch.tensor([1.0, 3.0, 2.0]), 3, limit=2) == [1, 2]


def test_interpolation_ends_are_the_reconstructions(runs):
    module = VAELitModule.from_checkpoint(runs["vae"] / "checkpoints" / "last.ckpt")
    a, b = torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    grid = panels.interpolations(module, a, b, steps=4)
    assert grid.shape[1:] == (2 + 2 * TILE, 2 + 4 * TILE)
    tile = lambda row, col: grid[0, 2 + row * TILE : 30 + row * TILE, 2 + col * TILE : 30 + col * TILE]  # noqa: E731
    torch.testing.assert_close(tile(1, 0), module.reconstruct(a)[1, 0])
    torch.testing.assert_close(tile(1, 3), module.reconstruct(b)[1, 0])
