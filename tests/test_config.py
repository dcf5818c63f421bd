"""The train config: every option of every group composes, resolves and instantiates; a bad value
is one line naming the key, before anything heavy starts."""

import re

import pytest
from helpers import CONFIG_DIR, compose, write_image_folder, write_synthetic_dataset
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vaelab.config import validate
from vaelab.errors import ConfigError
from vaelab.module import VAELitModule
from vaelab.training import switched_on

BAD = [
    (["model.beta=-1"], "model.beta=-1.0 is not allowed: a number >= 0"),
    (["model.latent_dim=0"], "model.latent_dim=0 is not allowed"),
    (["model.free_bits=-0.5"], "model.free_bits=-0.5"),
    (["model.optimizer.lr=0"], "model.optimizer.lr=0"),
    (["+model.bta=4"], "model.bta: Key 'bta' not in"),  # a key added with + passes composition
    (["model=beta_vae_capacity", "model.capacity.gamma=-3"], "model.capacity.gamma=-3.0"),
    (["data.binarize=maybe"], "data.binarize='maybe' is not allowed: one of none, static, dynamic"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.val_size=-1"], "data.val_size=-1"),
    (["data.name=cifar"], "data.name='cifar'"),
    (["seed=abc"], "seed='abc'"),
    (["model.importance_samples=0"], "model.importance_samples=0 is not allowed: an integer >= 1"),
    (["model=iwae", "model.free_bits=0.5"], "model.importance_samples=5 cannot be combined with model.free_bits"),
    (["model=beta_vae_capacity", "model.importance_samples=2"], "model.importance_samples=2 cannot be combined"),
    (["model.dreg=true"], "model.dreg=True is not allowed: true only with model.importance_samples > 1"),
    (["model.lr_scheduler={step_size:3}"], "model.lr_scheduler._target_=None is not allowed"),
    (
        ["model.lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,step_size:3,interval:batch}"],
        "model.lr_scheduler.interval='batch' is not allowed: epoch or step",
    ),
    (["model.optimizer.lr=null"], "model.optimizer.lr=None is not allowed: a number > 0"),
    (["model.optimizer.lr=abc"], "model.optimizer.lr='abc' is not allowed: a number > 0"),
    (["model.beta=1e400"], "model.beta=inf is not allowed"),
    (["model.latent_dim=100000"], "model.latent_dim=100000 is not allowed: an integer in [1, 4096]"),
    (["model=cvae", "model.conditional=false"], "model.conditional=False is not allowed: model.name='cvae'"),
    (["data.val_size=70000"], "data.val_size=70000 is not allowed"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs: Value 'abc'"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed: an integer >= 1, or -1 for no limit"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is not allowed"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1.0 is not allowed"),
    (["trainer.precision=fp8"], "trainer.precision='fp8' is not allowed"),
    (["compile=maybe"], "compile='maybe' is not allowed: true or false"),
]


# the schemas' types are checked while Hydra composes the config (--cfg job and multiruns included)
BAD_TYPES = [
    (["model.beta=abc"], "model.beta=abc: Value 'abc' of type 'str' could not be converted to Float"),
    (["model.latent_dim=abc"], "model.latent_dim=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    (["data.batch_size=1.5"], "data.batch_size=1.5: Value '1.5' of type 'float' could not be converted to Integer"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_TYPES, ids=[" ".join(o) for o, _ in BAD_TYPES])
def test_a_value_of_the_wrong_type_fails_while_composing(overrides, message, tmp_path):
    from hydra.errors import HydraException

    from vaelab.cli import hydra_message

    with pytest.raises(HydraException) as error:
        compose(overrides, output_dir=tmp_path)
    assert message in hydra_message(error.value)
    assert "\n" not in hydra_message(error.value)


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_names_the_key(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        validate(compose(overrides, output_dir=tmp_path))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=cvae", "data=fashion_mnist"],
        ["model=beta_vae_capacity"],
        ["experiment=beta_vae_mnist"],
        ["model/net=conv", "likelihood=gaussian"],
        ["model=iwae", "model.dreg=true", "annealing=linear"],
    ],
)
def test_good_configs_pass(overrides, tmp_path):
    validate(compose(overrides, output_dir=tmp_path))


@pytest.mark.parametrize("precision", ["16-true", "bf16", "16", "64", "transformer-engine"])
def test_every_precision_lightning_accepts_passes(precision, tmp_path):
    validate(compose([f"trainer.precision={precision}"], output_dir=tmp_path))


def test_the_rich_progress_bar_without_rich_names_the_extra(tmp_path, data_root, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rich" else find_spec(name, *a))
    cfg = compose(["callbacks.rich_progress_bar.enabled=true"], output_dir=tmp_path, data_root=data_root)
    with pytest.raises(ConfigError, match=re.escape("callbacks.rich_progress_bar: needs the rich package")):
        validate(cfg)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    validate(cfg)  # with rich there, the same config passes


GROUPS = [
    "data",
    "model",
    "likelihood",
    "annealing",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "hparams_search",
    "debug",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_group_exists_with_options():
    for group in GROUPS:
        assert options(group), f"configs/{group}/ has no options"
    assert {"vae", "beta_vae", "cvae"} <= set(options("model"))
    assert set(options("annealing")) == {"none", "linear", "cyclical", "sigmoid"}
    assert {"default", "cpu", "gpu", "ddp", "ddp_spawn"} <= set(options("trainer"))
    assert {"wandb", "csv", "none"} <= set(options("logger"))


ALL_OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path, data_root):
    overrides = [f"{group}={option}", "trainer.accelerator=cpu"]
    if (group, option) == ("data", "folder"):
        data_root = write_image_folder(tmp_path / "images")
    else:
        overrides.append("data.val_size=40")  # of the 240 synthetic training images
        if (group, option) == ("data", "torchvision"):
            data_root = write_synthetic_dataset(tmp_path / "data", "kmnist")
    cfg = compose(overrides, output_dir=tmp_path, data_root=data_root)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["paths"]["output_dir"] == str(tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup()  # reads the images: their shape builds the networks
    module = VAELitModule.from_config(cfg, datamodule)
    assert module.vae.conditional == resolved["model"]["conditional"]
    for logger_cfg in (cfg.logger or {}).values():
        assert logger_cfg._target_.startswith("lightning.pytorch.loggers.")
    callbacks = cfg.callbacks or {}
    every = [(name, settings) for name, settings in callbacks.items() if settings is not None]
    for _, callback_cfg in switched_on(OmegaConf.create({n: {**s, "enabled": True} for n, s in every})):
        callback = instantiate(callback_cfg)  # each, switched on, builds the class it names with its settings
        assert f"{type(callback).__module__}.{type(callback).__name__}".endswith(callback_cfg._target_.split(".")[-1])
        for key, value in callback_cfg.items():
            if key != "_target_" and hasattr(callback, key) and isinstance(value, int | float | str | bool):
                assert getattr(callback, key) == value, (callback_cfg._target_, key)
    if group == "trainer" and option not in ("gpu",):
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs


def test_command_line_values_reach_the_model(tmp_path):
    cfg = compose(["model=beta_vae", "model.beta=8", "model.latent_dim=3", "data=fashion_mnist"], output_dir=tmp_path)
    assert (cfg.model.name, cfg.model.beta, cfg.model.latent_dim, cfg.data.name) == ("beta_vae", 8, 3, "fashion_mnist")
    assert compose(["model=beta_vae"], output_dir=tmp_path).model.beta == 4.0
    assert compose(["model=vae"], output_dir=tmp_path).model.beta == 1.0
    assert cfg.run_name == "beta_vae-fashion_mnist-z3-b8.0-s0"  # model.beta is a float (ModelSchema)


def test_data_root_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_DATA_DIR", "/somewhere/else")
    assert compose(output_dir=tmp_path).data.root == "/somewhere/else"
    monkeypatch.delenv("VAELAB_DATA_DIR")
    monkeypatch.chdir(tmp_path)  # data and logs follow the folder the command runs in, not the source tree
    cfg = compose(output_dir=tmp_path)
    assert (cfg.data.root, cfg.paths.log_dir) == (str(tmp_path / "data"), str(tmp_path / "logs"))
