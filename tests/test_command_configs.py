"""The settings of vaelab-eval and vaelab-sample: a bad value is one ConfigError naming the key."""

import re

import pytest
from helpers import compose

from vaelab.errors import ConfigError

COMMAND_BAD = [
    ("eval", ["k=0"], "k=0 is not allowed: an integer >= 1"),
    ("eval", ["split=train"], "split='train' is not allowed: test or val"),
    ("eval", ["ood=cifar10"], "ood='cifar10' is not allowed: null, mnist or fashion_mnist, or a folder of images"),
    ("eval", ["ood=/no/such/folder"], "ood='/no/such/folder' is not allowed"),
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
        validator(compose(["ckpt=x.ckpt", *overrides], config_name=command))
