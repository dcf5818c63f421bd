"""Reading files that vaelab did not write in this process as data, never as code.

- ``read_checkpoint``: ``torch.load(weights_only=True)``, so a pickled callable is refused
  unrun, and the loaded structure bounded (``check_bounded``), so that a small file with shared
  references cannot expand into gigabytes when it is copied or converted.
- ``read_run_config``: a run folder's ``.hydra/config.yaml``, bounded the same way.
- ``check_targets``: the ``_target_`` allow-list, applied before a config read from a file is
  instantiated.

Hydra's ``instantiate`` calls whatever ``_target_`` names, so a crafted file could name
``pathlib.Path.write_text`` or ``builtins.exec``. Before a config read from a file is
instantiated, every ``_target_`` in it (at any depth) must be one of:

- a class defined in vaelab (read from vaelab's source, not imported);
- a ``torch.optim`` optimizer or a ``torch.optim.lr_scheduler`` scheduler;
- a Lightning callback (``lightning.pytorch.callbacks``) or logger (``lightning.pytorch.loggers``);
- ``lightning.pytorch.Trainer``;
- a name the user trusts in the environment, never in the file: ``VAELAB_TRUSTED_TARGETS``, a
  comma-separated list of class paths (``mylab.nets.ResNetEncoder``) or packages (``mylab.*``),
  so that runs built from one's own classes can be resumed, evaluated and re-run in sweeps.

Only torch's and Lightning's own modules are imported to check a name.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import zipfile
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from vaelab.errors import ConfigError, UserError, first_line

# a vaelab checkpoint holds about 1,000 values and is 10 deep; a shared-reference bomb expands to billions
MAX_VALUES = 200_000
MAX_DEPTH = 64
MAX_CONFIG_BYTES = 1 << 20


class CheckpointError(UserError):
    """A missing, unreadable, unsafe or foreign checkpoint."""


def check_bounded(data, source: str) -> None:
    """Raise UserError when ``data``, walked as a tree (shared references counted every time they
    are reached), has more than MAX_VALUES values or is deeper than MAX_DEPTH. Stops at the limit,
    so a bomb costs no more than MAX_VALUES steps."""
    stack, count = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            raise UserError(
                f"{source} is refused: its structure is larger than {MAX_VALUES:,} values or deeper than "
                f"{MAX_DEPTH} levels (shared references are counted each time they are reached)"
            )
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend((item, depth + 1) for item in value)


def read_checkpoint(path: str | Path, key: str = "ckpt") -> dict:
    """The checkpoint at ``path`` as plain data (tensors, numbers, strings, lists, dicts).

    Loaded with ``torch.load(weights_only=True, mmap=True)``: a pickled callable or any other
    object is refused before it is built. ``key`` names the setting in error messages."""
    import torch

    path = Path(path)
    source = f"{key}={path}"
    if not path.is_file():
        raise CheckpointError(f"{source}: no such file" if not path.exists() else f"{source} is not a file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{source} is not a readable checkpoint: not a file written by torch.save")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any failure to read means the same to the user
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(error))
        if unsafe:
            raise CheckpointError(
                f"{source} is refused: it holds a pickled object ({unsafe.group(1)}), and vaelab "
                "loads only tensors and plain data (weights_only=True)"
            ) from None
        raise CheckpointError(f"{source} is not a readable checkpoint: {first_line(error)}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
    try:
        check_bounded(checkpoint, source)
    except UserError as error:
        raise CheckpointError(str(error)) from None
    return checkpoint


def read_vaelab_checkpoint(path: str | Path, key: str = "ckpt") -> dict:
    """``read_checkpoint``, then checked to be vaelab's: weights and model, loss, annealing and
    data configs whose every ``_target_`` is on the allow-list."""
    checkpoint = read_checkpoint(path, key)
    hparams = checkpoint.get("hyper_parameters")
    if (
        not isinstance(checkpoint.get("state_dict"), dict)
        or not isinstance(hparams, dict)
        or not all(isinstance(hparams.get(name), dict) for name in ("model", "loss", "annealing"))
    ):
        raise CheckpointError(
            f"{key}={path} is not a vaelab checkpoint: it has no state_dict or no model, loss "
            "and annealing hyperparameters"
        )
    check_targets(hparams, f"{key}={path}: hyper_parameters")
    return checkpoint


def read_run_config(run_dir: str | Path, key: str = "resume") -> DictConfig:
    """A run folder's ``.hydra/config.yaml`` as an unresolved config, bounded in size and
    structure, every ``_target_`` on the allow-list."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserError(f"{key}={run_dir} is not a vaelab run folder: it has no .hydra/config.yaml")
    source = f"{key}={run_dir}: {path.name}"
    config = load_yaml(path, source)
    check_targets(config, source)
    return config


def load_yaml(path: Path, source: str, kind: type = dict) -> DictConfig | ListConfig:
    """A YAML mapping (or, with ``kind=list``, a list) read as data: at most MAX_CONFIG_BYTES,
    its aliases bounded (``check_bounded``)."""
    import yaml

    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{source} is refused: larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(f"{source} is not readable YAML: {first_line(error)}") from None
    if not isinstance(data, kind):
        raise UserError(f"{source} holds a {type(data).__name__}, not a {kind.__name__}")
    check_bounded(data, source)  # YAML aliases are shared references: bounded before OmegaConf expands them
    return OmegaConf.load(path)  # OmegaConf's own YAML rules (1e-3 is a float)


ALLOWED = (
    "vaelab classes, torch optimizers and LR schedulers, Lightning callbacks and loggers, lightning.pytorch.Trainer"
    "; trust your own with VAELAB_TRUSTED_TARGETS=package.module.Class or package.*"
)
TRUSTED_TARGETS_VARIABLE = "VAELAB_TRUSTED_TARGETS"


def trusted_by_the_user(target: str) -> bool:
    """True when ``target`` is named in $VAELAB_TRUSTED_TARGETS: exactly, or under a ``package.*`` entry."""
    for entry in filter(None, (part.strip() for part in os.environ.get(TRUSTED_TARGETS_VARIABLE, "").split(","))):
        if target == entry or (entry.endswith(".*") and target.startswith(entry[:-1])):
            return True
    return False


def defines_class(module_name: str, name: str) -> bool:
    """True when vaelab's module ``module_name`` defines a top-level class ``name``, read from its
    source: nothing is imported, so the check is fast and cannot run anything."""
    import ast
    import importlib.util

    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    return any(isinstance(node, ast.ClassDef) and node.name == name for node in tree.body)


def _base_classes(module_name: str, name: str) -> tuple[type, ...] | None:
    """The classes that ``module_name.name`` must subclass to be allowed; None if the module is not allowed."""
    if module_name == "torch.optim":
        import torch

        return (torch.optim.Optimizer,)
    if module_name == "torch.optim.lr_scheduler":
        import torch

        return (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if module_name == "lightning.pytorch.callbacks":
        from lightning.pytorch.callbacks import Callback

        return (Callback,)
    if module_name == "lightning.pytorch.loggers":
        from lightning.pytorch.loggers import Logger

        return (Logger,)
    if module_name == "lightning.pytorch" and name == "Trainer":
        from lightning.pytorch import Trainer

        return (Trainer,)
    return None


def is_allowed(target: object) -> bool:
    """True when ``target`` (a ``_target_`` value) names a class on the allow-list."""
    if not isinstance(target, str):
        return False
    module_name, _, name = target.rpartition(".")
    if not name.isidentifier() or not all(part.isidentifier() for part in module_name.split(".")):
        return False
    if trusted_by_the_user(target):
        return True
    if module_name.split(".")[0] == "vaelab":
        return defines_class(module_name, name)
    bases = _base_classes(module_name, name)
    if bases is None:
        return False
    try:
        found = getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        return False
    return inspect.isclass(found) and issubclass(found, bases)


def find_targets(config, prefix: str = "") -> list[tuple[str, object]]:
    """Every (key, _target_ value) in a nested dict/list config, keys as dotted paths ("model.net.encoder")."""
    if isinstance(config, DictConfig | ListConfig):
        config = OmegaConf.to_container(config, resolve=False)
    found = []
    if isinstance(config, dict):
        if "_target_" in config:
            found.append((prefix, config["_target_"]))
        for key, value in config.items():
            found += find_targets(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            found += find_targets(value, f"{prefix}[{index}]")
    return found


def check_targets(config, source: str) -> None:
    """Raise ConfigError naming the file, the key and the target if any ``_target_`` in ``config``
    (read from ``source``) is not on the allow-list."""
    for key, target in find_targets(config):
        if not is_allowed(target):
            where = f"{key}._target_" if key else "_target_"
            raise ConfigError(
                f"{source}: {where}={target!r} is not allowed in a config read from a file (allowed: {ALLOWED})"
            )
