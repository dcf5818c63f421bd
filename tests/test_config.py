"""Bad config values: one line naming the key, before anything heavy starts."""

import pytest
from helpers import compose

from vaelab.config import validate
from vaelab.errors import ConfigError

BAD = [
    (["model.beta=-1"], "model.beta=-1.0 is not allowed: a number >= 0"),
    (["model.beta=abc"], "model.beta: Value 'abc'"),
    (["model.latent_dim=0"], "model.latent_dim=0 is not allowed"),
    (["model.latent_dim=abc"], "model.latent_dim: Value 'abc'"),
    (["model.free_bits=-0.5"], "model.free_bits=-0.5"),
    (["model.optimizer.lr=0"], "model.optimizer.lr=0"),
    (["+model.bta=4"], "model.bta: Key 'bta' not in"),
    (["model=beta_vae_capacity", "model.capacity.gamma=-3"], "model.capacity.gamma=-3.0"),
    (["data.binarize=maybe"], "data.binarize='maybe' is not allowed: one of none, static, dynamic"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.batch_size=1.5"], "data.batch_size: Value '1.5'"),
    (["data.val_size=-1"], "data.val_size=-1"),
    (["data.name=cifar"], "data.name='cifar'"),
    (["seed=abc"], "seed='abc'"),
    (["model.importance_samples=0"], "model.importance_samples=0 is not allowed: an integer >= 1"),
    (["model=iwae", "model.free_bits=0.5"], "model.importance_samples=5 cannot be combined with model.free_bits"),
    (["model=beta_vae_capacity", "model.importance_samples=2"], "model.importance_samples=2 cannot be combined"),
    (["model.dreg=true"], "model.dreg=True is not allowed: true only with model.importance_samples > 1"),
    (["model.lr_scheduler={step_size:3}"], "model.lr_scheduler._target_=None is not allowed"),
    (["model.lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,step_size:3,interval:batch}"],
     "model.lr_scheduler.interval='batch' is not allowed: epoch or step"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_names_the_key(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        validate(compose(overrides, output_dir=tmp_path))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("overrides", [[], ["model=cvae", "data=fashion_mnist"], ["model=beta_vae_capacity"],
                                       ["experiment=beta_vae_mnist"], ["model/net=conv", "loss=gaussian"],
                                       ["model=iwae", "model.dreg=true", "annealing=linear"]])
def test_good_configs_pass(overrides, tmp_path):
    validate(compose(overrides, output_dir=tmp_path))
