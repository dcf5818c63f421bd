"""Bad config values: one line naming the key, before anything heavy starts."""

import re

import pytest
from helpers import compose

from vaelab.config import validate
from vaelab.errors import ConfigError

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


def app_config(name: str, overrides: list[str]):
    from helpers import CONFIG_DIR, VERSION_BASE
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), **VERSION_BASE):
        return hydra_compose(config_name=name, overrides=overrides)


COMMAND_BAD = [
    ("eval", ["k=0"], "k=0 is not allowed: an integer >= 1"),
    ("eval", ["split=train"], "split='train' is not allowed: test or val"),
    ("eval", ["ood=cifar10"], "ood='cifar10' is not allowed"),
    ("eval", ["device=tpu"], "device='tpu' is not allowed"),
    ("eval", ["limit_images=0"], "limit_images=0 is not allowed"),
    ("sample", ["kind=sketch"], "kind='sketch' is not allowed"),
    ("sample", ["n=0"], "n=0 is not allowed: an integer >= 1"),
    ("sample", ["steps=1"], "steps=1 is not allowed: an integer >= 2"),
    ("sample", ["span=-1"], "span=-1 is not allowed: a number > 0"),
    ("sample", ["nrow=0"], "nrow=0 is not allowed"),
    ("sample", ["label=abc"], "label='abc' is not allowed"),
]


@pytest.mark.parametrize(
    ("command", "overrides", "message"), COMMAND_BAD, ids=[f"{c} {' '.join(o)}" for c, o, _ in COMMAND_BAD]
)
def test_bad_eval_or_sample_value_names_the_key(command, overrides, message):
    from vaelab.command_configs import validate_eval_config, validate_sample_config

    validator = {"eval": validate_eval_config, "sample": validate_sample_config}[command]
    with pytest.raises(ConfigError, match=re.escape(message)):
        validator(app_config(command, ["ckpt=x.ckpt", *overrides]))


def test_a_sweep_with_a_value_of_the_wrong_type_stops_before_any_job(tmp_path):
    import subprocess
    import sys

    from helpers import child_env

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaelab.train",
            "-m",
            "data.batch_size=64,abc",
            "logger=csv",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: Error merging override data.batch_size=abc: Value 'abc' of type 'str' could not be converted to Integer"
    ]
    assert not (tmp_path / "sweep").exists()  # no job started, and no sweep folder left behind


def test_the_rich_progress_bar_without_rich_names_the_extra(tmp_path, data_root, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rich" else find_spec(name, *a))
    cfg = compose(["callbacks.rich_progress_bar.enabled=true"], output_dir=tmp_path, data_root=data_root)
    with pytest.raises(ConfigError, match=re.escape("callbacks.rich_progress_bar: needs the rich package")):
        validate(cfg)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    validate(cfg)  # with rich there, the same config passes
