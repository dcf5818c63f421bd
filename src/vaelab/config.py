"""The dataclass schema of the user-facing config values, checked before anything heavy starts.

``validate(cfg)`` merges the ``data`` and ``model`` sections and the top-level values into
these dataclasses (OmegaConf checks the types and unknown keys, ``__post_init__`` the ranges)
and raises ``ConfigError`` with one line naming the key, the bad value and what is allowed.
Objects built from ``_target_`` (likelihoods, schedules, networks, the Trainer) check their
own arguments when they are instantiated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vaelab.errors import ConfigError, DataNotFoundError, require
from vaelab.inner_steps import plan as plan_inner_steps
from vaelab.instantiate import instantiate_setting

DATA_NAMES = ("mnist", "fashion_mnist")  # data.source=builtin
DATA_SOURCES = ("builtin", "torchvision", "folder", "tensors")  # tensors: from Python (vaelab.train(data=...))
MAX_IMAGE_SIZE = 1024  # a typo must not allocate gigabytes per image
BINARIZE = ("none", "static", "dynamic")
# vaelab-sample kind=...
PICTURE_KINDS = ("samples", "traversals", "interpolations", "manifold", "scatter")


MAX_LATENT_DIM = 4096  # far above any useful VAE on 28x28 images; keeps a typo from allocating gigabytes


def is_count(value, allow_null: bool = False) -> bool:
    """An integer >= 1 (not a bool), or None when allowed."""
    return (value is None and allow_null) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def is_number(value) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class DataSchema:
    _target_: str = "vaelab.data.VAEDataModule"
    name: str = "mnist"
    root: str = "data"
    batch_size: int = 128
    eval_batch_size: int = 1000
    val_size: int | None = 5000
    binarize: str = "dynamic"
    split_seed: int = 0
    binarize_seed: int = 0
    download: bool = True
    num_workers: int = 0
    shuffle_seed: int = 0
    data_on_device: bool = True
    source: str = "builtin"
    image_size: int | None = None
    channels: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    bad_files: str = "skip"
    cache: bool = True
    tensor_key: str | None = None
    tensor_summary: str | None = None

    def __post_init__(self):
        require(self.source in DATA_SOURCES, "data.source", self.source, f"one of {', '.join(DATA_SOURCES)}")
        if self.source == "builtin":
            require(self.name in DATA_NAMES, "data.name", self.name, f"one of {', '.join(DATA_NAMES)}")
            require(
                self.val_size is not None and 0 <= self.val_size < 60_000,
                "data.val_size",
                self.val_size,
                "an integer in [0, 60000)",
            )
        elif self.source == "torchvision":
            name = self.name.removeprefix("torchvision.datasets.")
            require(name.isidentifier(), "data.name", self.name, "a class of torchvision.datasets, e.g. KMNIST")
        require(self.val_size is None or self.val_size >= 0, "data.val_size", self.val_size, "null or an integer >= 0")
        require(self.binarize in BINARIZE, "data.binarize", self.binarize, f"one of {', '.join(BINARIZE)}")
        require(self.batch_size >= 1, "data.batch_size", self.batch_size, "an integer >= 1")
        require(self.eval_batch_size >= 1, "data.eval_batch_size", self.eval_batch_size, "an integer >= 1")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")
        require(
            self.image_size is None or 4 <= self.image_size <= MAX_IMAGE_SIZE,
            "data.image_size",
            self.image_size,
            f"null or an integer in [4, {MAX_IMAGE_SIZE}]",
        )
        require(self.channels in (None, 1, 3), "data.channels", self.channels, "null, 1 (grey) or 3 (RGB)")
        fractions = (self.val_fraction, self.test_fraction)
        require(
            all(0 <= f < 1 for f in fractions) and sum(fractions) < 1,
            "data.val_fraction and data.test_fraction",
            fractions,
            "each in [0, 1), their sum below 1",
        )
        require(self.bad_files in ("skip", "error"), "data.bad_files", self.bad_files, "skip or error")


@dataclass
class CapacitySchema:
    gamma: float = 100.0
    max_nats: float = 25.0
    ramp_steps: int = 20_000

    def __post_init__(self):
        require(math.isfinite(self.gamma) and self.gamma > 0, "model.capacity.gamma", self.gamma, "a number > 0")
        require(
            math.isfinite(self.max_nats) and self.max_nats >= 0,
            "model.capacity.max_nats",
            self.max_nats,
            "a number >= 0",
        )
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
        require(
            1 <= self.latent_dim <= MAX_LATENT_DIM,
            "model.latent_dim",
            self.latent_dim,
            f"an integer in [1, {MAX_LATENT_DIM}]",
        )
        require(math.isfinite(self.beta) and self.beta >= 0, "model.beta", self.beta, "a number >= 0")
        require(
            math.isfinite(self.free_bits) and self.free_bits >= 0,
            "model.free_bits",
            self.free_bits,
            "a number >= 0 (nats per latent dimension)",
        )
        require(
            self.name != "cvae" or self.conditional,
            "model.conditional",
            self.conditional,
            "model.name='cvae' is a conditional VAE (use model=vae for an unconditional one)",
        )
        require(self.importance_samples >= 1, "model.importance_samples", self.importance_samples, "an integer >= 1")
        if self.importance_samples > 1 and (self.free_bits > 0 or self.capacity is not None):
            raise ConfigError(
                f"model.importance_samples={self.importance_samples} cannot be combined with "
                "model.free_bits or model.capacity: the IWAE bound has no per-dimension KL term"
            )
        require(
            not self.dreg or self.importance_samples > 1,
            "model.dreg",
            self.dreg,
            "true only with model.importance_samples > 1",
        )
        if "lr" in (self.optimizer or {}):
            lr = self.optimizer["lr"]
            require(is_number(lr) and lr > 0, "model.optimizer.lr", lr, "a number > 0")
        if self.lr_scheduler:
            require(
                "_target_" in self.lr_scheduler, "model.lr_scheduler._target_", None, "a torch.optim.lr_scheduler class"
            )
            interval = self.lr_scheduler.get("interval", "epoch")
            require(interval in ("epoch", "step"), "model.lr_scheduler.interval", interval, "epoch or step")


# every precision that Lightning's Trainer accepts
PRECISIONS = (
    "32-true",
    "32",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "64",
    "16",
    "bf16",
    "transformer-engine",
    "transformer-engine-float16",
)


@dataclass
class TrainerSchema:
    """Types and ranges of the Trainer arguments in configs/trainer/default.yaml; the Trainer
    checks the rest (and any ``+trainer.<arg>``) when it is built, before any logger starts."""

    max_epochs: int | None = 10
    max_steps: int = -1
    num_nodes: int = 1
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    check_val_every_n_epoch: int | None = 1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    enable_progress_bar: bool = True
    enable_model_summary: bool = True

    def __post_init__(self):
        require(
            self.max_epochs is None or self.max_epochs == -1 or self.max_epochs >= 1,
            "trainer.max_epochs",
            self.max_epochs,
            "an integer >= 1, or -1 for no limit",
        )
        require(
            self.max_steps == -1 or self.max_steps >= 1,
            "trainer.max_steps",
            self.max_steps,
            "an integer >= 1, or -1 for no limit",
        )
        require(self.num_nodes >= 1, "trainer.num_nodes", self.num_nodes, "an integer >= 1")
        require(
            self.num_sanity_val_steps >= -1,
            "trainer.num_sanity_val_steps",
            self.num_sanity_val_steps,
            "an integer >= 0, or -1 for all",
        )
        require(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", self.log_every_n_steps, "an integer >= 1")
        require(
            self.check_val_every_n_epoch is None or self.check_val_every_n_epoch >= 1,
            "trainer.check_val_every_n_epoch",
            self.check_val_every_n_epoch,
            "null or an integer >= 1",
        )
        require(
            self.accumulate_grad_batches >= 1,
            "trainer.accumulate_grad_batches",
            self.accumulate_grad_batches,
            "an integer >= 1",
        )
        require(
            self.gradient_clip_val is None or (math.isfinite(self.gradient_clip_val) and self.gradient_clip_val >= 0),
            "trainer.gradient_clip_val",
            self.gradient_clip_val,
            "null or a number >= 0",
        )


def register_schemas() -> None:
    """Give Hydra the data and model schemas (``/schema/data``, ``/schema/model``), which
    configs/data/mnist.yaml and configs/model/vae.yaml extend: a value of the wrong type fails
    while the config is composed (``--cfg job`` and every job of a multirun included). The
    ranges are checked by ``validate`` (``__post_init__``), before a run starts."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="schema", name="data", node=DataSchema)
    store.store(group="schema", name="model", node=ModelSchema)


def check(section: str, schema: type, values: DictConfig | dict, only_schema_keys: bool = False) -> None:
    """Merge ``values`` into ``schema`` (types, unknown keys, ``__post_init__`` ranges); with
    ``only_schema_keys``, keys the schema does not name are left to their owner to check."""
    try:
        if only_schema_keys:  # resolves only these keys (others may need a Hydra run, e.g. default_root_dir)
            resolved = {k: values[k] for k in schema.__dataclass_fields__ if k in values}
        else:
            resolved = OmegaConf.to_container(values, resolve=True) if isinstance(values, DictConfig) else values
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), resolved))
    except OmegaConfBaseException as error:
        key = f"{section}.{error.full_key}" if getattr(error, "full_key", None) else section
        reason = str(getattr(error, "msg", error)).splitlines()[0]
        raise ConfigError(f"{key}: {reason}") from None


MAX_SEED = 2**32 - 1  # numpy's seeds (Lightning seeds numpy with it)


def check_seed(seed) -> None:
    ok = isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED
    require(ok, "seed", seed, f"an integer in [0, {MAX_SEED}]")


def check_devices(cfg: DictConfig) -> None:
    """A GPU asked for where there is none, and a MASTER_PORT that is not a port, named before
    Lightning reports them over several lines."""
    import os

    port = os.environ.get("MASTER_PORT")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(f"MASTER_PORT={port!r} (environment) is not allowed: a port in 1..65535")
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        import torch

        require(
            torch.cuda.is_available(),
            "trainer.accelerator",
            accelerator,
            "no CUDA GPU is available here (use trainer.accelerator=cpu or auto)",
        )


def pick_device(setting: str) -> str:
    """cpu or cuda[:N] for device=auto|cpu|cuda[:N]; a GPU asked for where there is none is a ConfigError."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={setting}: no CUDA GPU is available to torch here; use device=cpu or device=auto")
    return setting


# the image panels of vaelab.image_panels.ImagePanels, in the order they are made
PANELS = ("reconstructions", "samples", "class_samples", "traversals", "interpolations", "manifold", "latent_scatter")


def panel_intervals(every_n_epochs, panels: dict | None) -> dict[str, int]:
    """Each panel's interval in validation epochs (0: off) from ``callbacks.image_panels``:
    every panel is on by default; a setting is true, false or its own interval."""
    if not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < 1:
        raise ConfigError(f"callbacks.image_panels.every_n_epochs must be >= 1, got {every_n_epochs}")
    intervals = dict.fromkeys(PANELS, every_n_epochs)
    for name, setting in (panels or {}).items():
        if name not in PANELS:
            raise ConfigError(f"callbacks.image_panels.panels.{name}: unknown panel; allowed: {', '.join(PANELS)}")
        if isinstance(setting, bool) or setting is None:
            intervals[name] = every_n_epochs if setting else 0
        elif isinstance(setting, int) and setting >= 0:
            intervals[name] = setting
        else:
            raise ConfigError(
                f"callbacks.image_panels.panels.{name} must be true, false or an interval >= 0, got {setting!r}"
            )
    return intervals


def targets_in(section) -> list[str]:
    """The ``_target_`` of each entry of a group of named objects (``callbacks``, ``logger``)."""
    entries = section.values() if isinstance(section, DictConfig | dict) else []
    return [str(entry.get("_target_")) for entry in entries if isinstance(entry, DictConfig | dict)]


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError (one line, naming the key) for the first bad user-facing value. Runs
    before torch and Lightning are imported: a bad value or data file fails in about a second."""
    from vaelab.idx_files import check_data_files
    from vaelab.wandb_run import WANDB_TARGET, check_wandb_mode

    check_seed(cfg.get("seed"))
    if cfg.get("ckpt_path") == "last":  # Lightning's shorthand: a new run folder has no last checkpoint
        raise ConfigError("ckpt_path=last: a new run has no last checkpoint; continue a run with resume=<run folder>")
    require(isinstance(cfg.get("compile", False), bool), "compile", cfg.get("compile"), "true or false")
    plan_inner_steps(cfg.get("steps_per_fetch", 1), cfg.get("trainer") or {}, 1)  # an integer >= 1
    precision = str(cfg.get("trainer", {}).get("precision", "32-true"))
    require(precision in PRECISIONS, "trainer.precision", precision, f"one of {', '.join(PRECISIONS)}")
    check("data", DataSchema, cfg.data)
    check("model", ModelSchema, cfg.model)
    check("trainer", TrainerSchema, cfg.trainer, only_schema_keys=True)
    check_devices(cfg)
    grids = (cfg.get("callbacks") or {}).get("image_panels")
    if isinstance(grids, DictConfig) and grids.get("_target_") == "vaelab.image_panels.ImagePanels":
        panel_intervals(grids.get("every_n_epochs", 1), grids.get("panels"))
    annealing = cfg.get("annealing")
    if isinstance(annealing, DictConfig) and str(annealing.get("_target_")).startswith("vaelab.annealing."):
        instantiate_setting(annealing, "annealing")  # a schedule is a small pure object: built here to check it
    if WANDB_TARGET in targets_in(cfg.get("logger")):
        check_wandb_mode()
    rich_bar = (cfg.get("callbacks") or {}).get("rich_progress_bar")
    if isinstance(rich_bar, DictConfig) and rich_bar.get("enabled") is True:
        import importlib.util

        if importlib.util.find_spec("rich") is None:  # Lightning would stop with its own traceback
            raise ConfigError("callbacks.rich_progress_bar: needs the rich package: pip install 'vaelab[rich]'")
    if cfg.data.get("source", "builtin") == "builtin":
        check_data_files(cfg.data.name, cfg.data.root, bool(cfg.data.download))
    elif cfg.data.source == "folder" and not Path(str(cfg.data.root)).expanduser().is_dir():
        raise DataNotFoundError(f"data.root={cfg.data.root} is not a folder of images")
