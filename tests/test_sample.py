import pytest
import torch
from helpers import CONFIG_DIR, FAST, child_env, compose, vaelab_cli
from PIL import Image

from vaelab.errors import ConfigError
from vaelab.module import VAELitModule
from vaelab.training import train


@pytest.fixture(scope="module")
def cvae_ckpt(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("cvae")
    train(
        compose(
            [*FAST, "model=cvae", "model.latent_dim=3", "logger=none", "test=false"],
            output_dir=out,
            data_root=data_root,
        )
    )
    return out / "checkpoints" / "last.ckpt"


def test_label_picks_the_class_of_every_sample(cvae_ckpt):
    module = VAELitModule.from_checkpoint(cvae_ckpt)
    sevens = module.sample(6, label=7, seed=1)
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sevens, module.generate(z, torch.full((6,), 7)))
    assert not torch.allclose(sevens, module.sample(6, label=3, seed=1))
    cycled = module.sample(10, seed=1)
    torch.testing.assert_close(
        cycled[7], module.generate(torch.randn(10, 3, generator=torch.Generator().manual_seed(1)), torch.arange(10))[7]
    )
    with pytest.raises(ConfigError, match=r"label=10 is not allowed"):
        module.sample(2, label=10)


def test_cli_writes_the_grid(cvae_ckpt, tmp_path):
    out = tmp_path / "sevens.png"
    env = child_env()
    result = vaelab_cli("sample", f"ckpt={cvae_ckpt}", "n=16", "label=7", f"out={out}", timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out).size == (2 + 4 * 30, 2 + 4 * 30)  # 4 x 4 images of 28 pixels, 2-pixel padding
    bad = vaelab_cli("sample", f"ckpt={cvae_ckpt}", "label=12", f"out={out}", timeout=120, env=env)
    assert bad.returncode == 1 and "error: label=12 is not allowed" in bad.stderr


@pytest.mark.parametrize(
    "kind, args, size",
    [
        ("traversals", ["n=2", "steps=5"], (2 + 5 * 30, 2 + 2 * 30)),  # 2 of the 3 latent dims, by KL
        ("interpolations", ["n=3", "steps=4", "label=2"], (2 + 4 * 30, 2 + 3 * 30)),  # 3 pairs of test twos
        ("scatter", ["scatter_images=50"], (500, 500)),
    ],
)
def test_cli_writes_traversals_interpolations_and_scatter(cvae_ckpt, data_root, tmp_path, kind, args, size):
    out = tmp_path / f"{kind}.png"
    result = vaelab_cli(
        "sample", f"ckpt={cvae_ckpt}", f"kind={kind}", *args, f"data_root={data_root}", f"out={out}", timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out).size == size
    assert f"wrote {out} ({kind}" in result.stdout


def test_manifold_needs_two_unconditional_latents(cvae_ckpt, data_root):
    from omegaconf import OmegaConf

    from vaelab.command_configs import validate_sample_config
    from vaelab.panels import make_picture

    defaults = OmegaConf.load(CONFIG_DIR / "sample.yaml")  # vaelab-sample's own defaults
    cfg = OmegaConf.merge(defaults, {"ckpt": str(cvae_ckpt), "kind": "manifold", "n": 1, "data_root": str(data_root)})
    with pytest.raises(ConfigError, match=r"kind=manifold needs an unconditional model with latent_dim=2"):
        make_picture(VAELitModule.from_checkpoint(cvae_ckpt), cfg)
    with pytest.raises(ConfigError, match=r"kind='sketch' is not allowed"):  # checked before anything loads
        validate_sample_config(OmegaConf.merge(cfg, {"kind": "sketch"}))
