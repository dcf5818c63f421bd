"""The dataclass schema of the user-facing config values, checked before anything heavy starts.

``validate(cfg)`` merges the ``data`` and ``model`` sections and the top-level values into
these dataclasses (OmegaConf checks the types and unknown keys, ``__post_init__`` the ranges)
and raises ``ConfigError`` with one line naming the key, the bad value and what is allowed.
Objects built from ``_target_`` (likelihoods, schedules, networks, the Trainer) check their
own arguments when they are instantiated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vaelab.errors import ConfigError

DATA_NAMES = ("mnist", "fashion_mnist")
BINARIZE = ("none", "static", "dynamic")


def require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


@dataclass
class DataSchema:
    _target_: str = "vaelab.data.VAEDataModule"
    name: str = "mnist"
    root: str = "data"
    batch_size: int = 128
    eval_batch_size: int = 1000
    val_size: int = 5000
    binarize: str = "dynamic"
    split_seed: int = 0
    binarize_seed: int = 0
    download: bool = True
    num_workers: int = 0
    shuffle_seed: int = 0
    data_on_device: bool = True

    def __post_init__(self):
        require(self.name in DATA_NAMES, "data.name", self.name, f"one of {', '.join(DATA_NAMES)}")
        require(self.binarize in BINARIZE, "data.binarize", self.binarize, f"one of {', '.join(BINARIZE)}")
        require(self.batch_size >= 1, "data.batch_size", self.batch_size, "an integer >= 1")
        require(self.eval_batch_size >= 1, "data.eval_batch_size", self.eval_batch_size, "an integer >= 1")
        require(0 <= self.val_size < 60_000, "data.val_size", self.val_size, "an integer in [0, 60000)")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")


@dataclass
class CapacitySchema:
    gamma: float = 100.0
    max_nats: float = 25.0
    ramp_steps: int = 20_000

    def __post_init__(self):
        require(self.gamma > 0, "model.capacity.gamma", self.gamma, "a number > 0")
        require(self.max_nats >= 0, "model.capacity.max_nats", self.max_nats, "a number >= 0")
        require(self.ramp_steps >= 1, "model.capacity.ramp_steps", self.ramp_steps, "an integer >= 1")


@dataclass
class ModelSchema:
    name: str = "vae"
    latent_dim: int = 20
    beta: float = 1.0
    conditional: bool = False
    free_bits: float = 0.0
    capacity: CapacitySchema | None = None
    importance_samples: int = 1
    dreg: bool = False
    net: Any = field(default_factory=dict)
    optimizer: Any = field(default_factory=dict)
    lr_scheduler: Any = None

    def __post_init__(self):
        require(self.latent_dim >= 1, "model.latent_dim", self.latent_dim, "an integer >= 1")
        require(self.beta >= 0, "model.beta", self.beta, "a number >= 0")
        require(self.free_bits >= 0, "model.free_bits", self.free_bits, "a number >= 0 (nats per latent dimension)")
        require(self.importance_samples >= 1, "model.importance_samples", self.importance_samples, "an integer >= 1")
        if self.importance_samples > 1 and (self.free_bits > 0 or self.capacity is not None):
            raise ConfigError(f"model.importance_samples={self.importance_samples} cannot be combined with "
                              "model.free_bits or model.capacity: the IWAE bound has no per-dimension KL term")
        require(not self.dreg or self.importance_samples > 1, "model.dreg", self.dreg,
                "true only with model.importance_samples > 1")
        lr = (self.optimizer or {}).get("lr")
        require(lr is None or lr > 0, "model.optimizer.lr", lr, "a number > 0")
        if self.lr_scheduler:
            require("_target_" in self.lr_scheduler, "model.lr_scheduler._target_", None, "a torch.optim.lr_scheduler class")
            interval = self.lr_scheduler.get("interval", "epoch")
            require(interval in ("epoch", "step"), "model.lr_scheduler.interval", interval, "epoch or step")


PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true", "64")


def check(section: str, schema: type, values: DictConfig) -> None:
    try:
        resolved = OmegaConf.to_container(values, resolve=True)
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), resolved))
    except OmegaConfBaseException as error:
        key = f"{section}.{error.full_key}" if getattr(error, "full_key", None) else section
        reason = str(getattr(error, "msg", error)).splitlines()[0]
        raise ConfigError(f"{key}: {reason}") from None


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError (one line, naming the key) for the first bad user-facing value."""
    seed = cfg.get("seed")
    require(isinstance(seed, int) and not isinstance(seed, bool), "seed", seed, "an integer")
    require(isinstance(cfg.get("compile", False), bool), "compile", cfg.get("compile"), "true or false")
    precision = str(cfg.get("trainer", {}).get("precision", "32-true"))
    require(precision in PRECISIONS, "trainer.precision", precision, f"one of {', '.join(PRECISIONS)}")
    check("data", DataSchema, cfg.data)
    check("model", ModelSchema, cfg.model)
