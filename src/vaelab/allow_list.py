"""The allow-list for configs read from files (run folders, checkpoints): what they may name,
interpolate and point at.

- ``is_allowed`` / ``check_targets``: every ``_target_`` must be one of:

  - a class of ``VAELAB_CLASSES`` (the ones vaelab's configs name);
  - a ``torch.optim`` optimizer or a ``torch.optim.lr_scheduler`` scheduler (not ``LambdaLR`` or
    ``MultiplicativeLR``, which take code);
  - a Lightning callback of ``LIGHTNING_CALLBACKS``, a logger of ``LIGHTNING_LOGGERS``, or
    ``lightning.pytorch.Trainer``;
  - a name the user trusts in the environment, never in the file: ``VAELAB_TRUSTED_TARGETS``, a
    comma-separated list of class paths (``mylab.nets.ResNetEncoder``) or packages (``mylab.*``).

- ``check_interpolations``: only references to other keys and vaelab's pure resolvers; never
  ``oc.env`` (reads secrets), ``oc.create`` or ``oc.decode`` (make a ``_target_`` after the check).
- ``check_paths``: every argument of an allowed class that names a file or folder
  (``PATH_ARGUMENTS``) lies inside the run folder; a test walks every allowed class's signature.
- ``check_file_config`` / ``check_checkpoint_config``: all of these on a whole config, resolved.

Hydra's ``instantiate`` calls whatever ``_target_`` names, so a crafted file could otherwise name
``pathlib.Path.write_text`` or ``builtins.exec``. Only torch's and Lightning's own modules are
imported to check a name.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from vaelab.compat import FORMER_TARGETS
from vaelab.errors import ConfigError, first_line

ALLOWED = (
    "vaelab's classes, torch optimizers and LR schedulers, Lightning's Trainer and its common callbacks "
    "and loggers; trust your own with VAELAB_TRUSTED_TARGETS=package.module.Class or package.*"
)
TRUSTED_TARGETS_VARIABLE = "VAELAB_TRUSTED_TARGETS"

# the classes vaelab's own configs name, and their former paths, which older run folders and
# checkpoints name (vaelab.compat.FORMER_TARGETS: re-exported there, checked as the class they are now)
VAELAB_CLASSES = frozenset(
    f"vaelab.{name}"
    for name in (
        "annealing.Constant",
        "annealing.Linear",
        "annealing.Sigmoid",
        "annealing.Cyclical",
        "image_panels.ImagePanels",
        "callbacks.CollapseMonitor",
        "callbacks.NaNGuard",
        "callbacks.Throughput",
        "denormals.FlushDenormals",
        "checkpointing.CheckpointArtifacts",
        "checkpointing.AtomicCheckpointIO",
        "data.VAEDataModule",
        "networks.MLPEncoder",
        "networks.MLPDecoder",
        "networks.ConvEncoder",
        "networks.ConvDecoder",
        "likelihoods.BernoulliLikelihood",
        "likelihoods.GaussianLikelihood",
        "likelihoods.LocalAutoregressiveBernoulli",
        "likelihoods.DiscretizedLogistic",
    )
) | frozenset(FORMER_TARGETS)
# Lightning's callbacks and loggers that write only where their arguments say (checked below) and
# take no code; not LambdaCallback (callables), BasePredictionWriter, ModelPruning and the like
LIGHTNING_CALLBACKS = frozenset(
    f"lightning.pytorch.callbacks.{name}"
    for name in (
        "ModelCheckpoint",
        "EarlyStopping",
        "LearningRateMonitor",
        "TQDMProgressBar",
        "RichProgressBar",
        "ModelSummary",
        "RichModelSummary",
        "StochasticWeightAveraging",
        "GradientAccumulationScheduler",
        "Timer",
        "DeviceStatsMonitor",
    )
)
LIGHTNING_LOGGERS = frozenset(
    f"lightning.pytorch.loggers.{name}" for name in ("CSVLogger", "TensorBoardLogger", "WandbLogger")
)
SCHEDULERS_TAKING_CODE = frozenset({"LambdaLR", "MultiplicativeLR"})

# The arguments of allowed classes that name a file or folder to write or read: "dir" must lie
# inside the run folder, "part" is one file-name part (no / or ..). The test walks every allowed
# class's signature, so a new path argument cannot slip through unlisted.
PATH_ARGUMENTS: dict[str, dict[str, str]] = {
    "lightning.pytorch.Trainer": {"default_root_dir": "dir"},
    "lightning.pytorch.callbacks.ModelCheckpoint": {"dirpath": "dir", "filename": "part"},
    "lightning.pytorch.loggers.CSVLogger": {"save_dir": "dir", "name": "part", "version": "part", "prefix": "part"},
    "lightning.pytorch.loggers.TensorBoardLogger": {
        "save_dir": "dir",
        "name": "part",
        "version": "part",
        "sub_dir": "part",
        "log_graph": "safe",
        "prefix": "part",
    },
    "lightning.pytorch.loggers.WandbLogger": {"save_dir": "dir", "dir": "dir", "id": "part", "version": "part"},
    "vaelab.image_panels.ImagePanels": {"output_dir": "dir"},
    "vaelab.checkpointing.AtomicCheckpointIO": {"root": "dir"},
    "vaelab.data.VAEDataModule": {"root": "data"},
}
# the keywords that classes taking **kwargs may get from a config read from a file: W&B's
# wandb.init arguments vaelab's configs use, SummaryWriter's timing ones; any other is refused
EXTRA_KEYWORDS = {
    "lightning.pytorch.loggers.WandbLogger": {"group", "tags", "job_type", "notes", "entity"},
    "lightning.pytorch.loggers.TensorBoardLogger": {"flush_secs", "max_queue"},
}
# path-like names that are not paths, with the reason, for the signature test
NOT_PATHS = {
    "lightning.pytorch.Trainer": {
        "enable_checkpointing": "a switch",
        "log_every_n_steps": "a count",
        "enable_model_summary": "a switch",
        "model_registry": "must be null: checked in check_file_config",
        "logger": "vaelab passes logger=False and builds its loggers itself",
        "profiler": "a profiler name (it writes in the run folder) or an allowed _target_",
        "enable_autolog_hparams": "a switch",
    },
    "lightning.pytorch.callbacks.ModelCheckpoint": {
        "save_last": "a switch",
        "save_top_k": "a count",
        "save_weights_only": "a switch",
        "save_on_train_epoch_end": "a switch",
        "save_on_exception": "a switch",
        "auto_insert_metric_name": "a switch",
        "enable_version_counter": "a switch",
    },
    "lightning.pytorch.callbacks.LearningRateMonitor": {
        "log_momentum": "a switch",
        "log_weight_decay": "a switch",
        "logging_interval": "step or epoch",
    },
    "lightning.pytorch.callbacks.EarlyStopping": {"log_rank_zero_only": "a switch"},
    "lightning.pytorch.callbacks.DeviceStatsMonitor": {"cpu_stats": "a switch"},
    "lightning.pytorch.callbacks.StochasticWeightAveraging": {"device": "a device name"},
    "lightning.pytorch.loggers.CSVLogger": {"flush_logs_every_n_steps": "a count"},
    "lightning.pytorch.loggers.TensorBoardLogger": {"default_hp_metric": "a switch"},
    "lightning.pytorch.loggers.WandbLogger": {
        "name": "a display name, not a path",
        "project": "a project name (W&B checks it)",
        "log_model": "a switch: artifacts go to W&B, not to a path",
        "prefix": "a metric-name prefix",
        "anonymous": "a switch",
        "checkpoint_name": "an artifact name",
        "add_file_policy": "a W&B upload policy name",
        "offline": "a switch",
    },
    "vaelab.image_panels.ImagePanels": {"traversal_dims": "a count", "scatter_images": "a count"},
    "vaelab.callbacks.Throughput": {"log_every_n_steps": "a count"},
    "vaelab.likelihoods.DiscretizedLogistic": {"log_scale": "a number: the logistic's initial log scale"},
    "vaelab.data.VAEDataModule": {
        "name": "a data set name: DATA_NAMES, a torchvision class (check_data_source) or a label",
        "source": "builtin, torchvision or folder (DataSchema)",
        "bad_files": "skip or error (DataSchema)",
    },
    "vaelab.callbacks.CollapseMonitor": {},
    "vaelab.denormals.FlushDenormals": {},
}
for _former, _current in FORMER_TARGETS.items():  # a former path is checked as the class it names now
    for _table in (PATH_ARGUMENTS, NOT_PATHS):
        if _current in _table:
            _table[_former] = _table[_current]


def trusted_by_the_user(target: str) -> bool:
    """True when ``target`` is named in $VAELAB_TRUSTED_TARGETS: exactly, or under a ``package.*`` entry."""
    for entry in filter(None, (part.strip() for part in os.environ.get(TRUSTED_TARGETS_VARIABLE, "").split(","))):
        if target == entry or (entry.endswith(".*") and target.startswith(entry[:-1])):
            return True
    return False


def named_by_vaelab(target: str) -> bool:
    """True for the classes the allow-list names one by one (vaelab's, Lightning's)."""
    return target in VAELAB_CLASSES | LIGHTNING_CALLBACKS | LIGHTNING_LOGGERS or target == "lightning.pytorch.Trainer"


def is_allowed(target: object) -> bool:
    """True when ``target`` (a ``_target_`` value) names a class on the allow-list."""
    if not isinstance(target, str):
        return False
    module_name, _, name = target.rpartition(".")
    if not name.isidentifier() or not all(part.isidentifier() for part in module_name.split(".")):
        return False
    if named_by_vaelab(target):
        return True
    if trusted_by_the_user(target):
        return True
    if module_name not in ("torch.optim", "torch.optim.lr_scheduler") or name in SCHEDULERS_TAKING_CODE:
        return False
    import torch

    bases = (
        (torch.optim.Optimizer,)
        if module_name == "torch.optim"
        else (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    )
    found = getattr(importlib.import_module(module_name), name, None)
    return inspect.isclass(found) and issubclass(found, bases) and found not in bases


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


# the interpolations a config read from a file may use: vaelab's pure ones (a string in, a
# string out) and references to other keys. Not oc.env (reads secrets), oc.create / oc.decode
# (make new config, a _target_ included), now, hydra, vaelab_cwd and the like.
PURE_RESOLVERS = frozenset({"vaelab_group", "vaelab_file_name", "vaelab_round"})


def leaves(config, prefix: str = ""):
    """(dotted key, value) for every key and leaf value of a nested dict/list; keys are yielded too,
    as (key, key), so that an interpolation in a key is seen."""
    if isinstance(config, dict):
        for key, value in config.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, key
            yield from leaves(value, path)
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            yield from leaves(value, f"{prefix}[{index}]")
    else:
        yield prefix, config


def resolvers_in(text: str) -> list[str]:
    """The names of the resolvers ``text`` calls (``${oc.env:X}`` -> ["oc.env"]), nested ones included."""
    from omegaconf import grammar_parser
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

    found, stack = [], [grammar_parser.parse(text)]
    while stack:
        node = stack.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            found.append(node.resolverName().getText())
        stack.extend(node.getChildren() if hasattr(node, "getChildren") else [])
    return found


def check_interpolations(data: dict, source: str) -> None:
    """Raise ConfigError naming the key unless every interpolation in ``data`` (an unresolved
    container) is a reference to another key or one of PURE_RESOLVERS."""
    for key, value in leaves(data):
        if not isinstance(value, str) or "${" not in value:
            continue
        try:
            names = resolvers_in(value)
        except Exception as error:  # noqa: BLE001 - a grammar error is a bad value, whatever its class
            raise ConfigError(f"{source}: {key} is not a valid interpolation: {first_line(error)}") from None
        refused = [name for name in names if name not in PURE_RESOLVERS]
        if refused:
            raise ConfigError(
                f"{source}: {key} uses the interpolation ${{{refused[0]}:...}}, which a config read from a "
                f"file may not use (allowed: references to other keys, {', '.join(sorted(PURE_RESOLVERS))})"
            )


def check_no_interpolation(data, source: str) -> None:
    """Raise ConfigError naming the key if any key or string value of ``data`` (a resolved
    container) still holds ``${``: an escaped interpolation would run when re-read."""
    for key, value in leaves(data):
        if isinstance(value, str) and "${" in value:
            raise ConfigError(f"{source}: {key} holds an interpolation ({value[:60]!r}), which is refused here")


def inside(path: str | Path, folder: str | Path) -> bool:
    """True when ``path`` (relative to the working folder, symlinks followed) lies in ``folder``."""
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def same_folder(path, other) -> bool:
    return other is not None and os.path.realpath(path) == os.path.realpath(other)


def check_paths(data, source: str, run_dir: str | Path, data_dir: str | Path | None, trusted=()) -> None:
    """Raise ConfigError naming the key unless every path argument (PATH_ARGUMENTS) of every
    ``_target_`` in ``data`` (a resolved container) lies inside ``run_dir``: "dir" arguments in
    it, "part" arguments one plain file-name part. A data root other than ``data_dir`` is read
    but never downloaded into: its ``download`` is set to false in ``data``. Keys in ``trusted``
    (dotted, given on the command line) are the user's and not checked."""
    for prefix, target in find_targets(data):
        node = data
        for part in re.findall(r"[^.\[\]]+", prefix):
            node = node[int(part)] if isinstance(node, list) else node[part]
        unknown = sorted(set(node) - accepted_keywords(target) - EXTRA_KEYWORDS.get(target, set()))
        if unknown and takes_any_keyword(target):
            where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
            raise ConfigError(f"{source}: {where} is not an argument that a config read from a file may give {target}")
        for argument, kind in PATH_ARGUMENTS.get(target, {}).items():
            value, key = node.get(argument), f"{prefix}.{argument}" if prefix else argument
            if value is None or key in trusted or kind == "safe":
                continue
            text = str(value)
            if kind == "part":
                ok = "/" not in text and "\\" not in text and ".." not in text and "\0" not in text
                rule = "one file-name part (no / or ..)"
            elif kind == "data":  # read anywhere, written (downloaded into, cached in) only where the user said
                ok, rule = "\0" not in text, "a folder name"
                for writes in ("download", "cache"):
                    if node.get(writes) and not same_folder(text, data_dir) and not inside(text, run_dir):
                        node[writes] = False
            else:
                ok = "\0" not in text and inside(text, run_dir)
                rule = f"inside the run folder {run_dir}"
            if not ok:
                raise ConfigError(
                    f"{source}: {key}={text[:200]!r} is refused in a config read from a file: it must be {rule} "
                    "(give it on the command line to use it)"
                )


def _signature(target: str):
    module_name, _, name = target.rpartition(".")
    try:
        return inspect.signature(getattr(importlib.import_module(module_name), name).__init__).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def accepted_keywords(target: str) -> set[str]:
    """The named arguments of ``target``'s class, plus Hydra's and vaelab's own keys."""
    parameters = _signature(target) or {}
    own = {"_target_", "_partial_", "_convert_", "_recursive_", "enabled"}
    return own | {name for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def takes_any_keyword(target: str) -> bool:
    """True when ``target``'s class takes **kwargs (where an unknown key would go unchecked).
    A user-trusted class (VAELAB_TRUSTED_TARGETS) is the user's: False."""
    if trusted_by_the_user(target) and not named_by_vaelab(target):
        return False
    parameters = _signature(target) or {}
    return any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def resolved(config: DictConfig, source: str) -> dict:
    """``config`` resolved into plain data; a failing interpolation is one ConfigError naming the file."""
    try:
        return OmegaConf.to_container(config, resolve=True)
    except Exception as error:  # noqa: BLE001 - OmegaConf's error names the key
        raise ConfigError(f"{source}: {first_line(error)}") from None


def check_file_config(config: DictConfig, source: str, run_dir: str | Path, data_dir=None, trusted=()) -> None:
    """Check a config read from a run folder (its ``paths`` already this command's) before
    anything is built from it: interpolations (``check_interpolations``), then, resolved, no
    interpolation left, no ``_args_``, every ``_target_`` allowed, every path argument in
    ``run_dir`` (``check_paths``; ``trusted``: the keys the command line gave again)."""
    check_interpolations(OmegaConf.to_container(config, resolve=False), source)
    data = resolved(config, source)
    check_checkpoint_config(data, source, run_dir, data_dir, trusted)
    for writes in ("download", "cache"):  # check_paths: a data root from the file is read, never written into
        if (data.get("data") or {}).get(writes) is False and (config.get("data") or {}).get(writes):
            config.data[writes] = False


def check_checkpoint_config(data: dict, source: str, run_dir=None, data_dir=None, trusted=()) -> None:
    """Check resolved config data (a checkpoint's hyper_parameters are saved resolved): no
    ``${`` left, no positional ``_args_``, every ``_target_`` allowed, path arguments inside
    ``run_dir`` (with ``run_dir=None``, none may be set: a checkpoint read elsewhere)."""
    check_no_interpolation(data, source)
    for key, _ in leaves(data):
        if key == "_args_" or key.endswith("._args_"):
            raise ConfigError(f"{source}: {key} is refused in a config read from a file (give keyword arguments)")
    check_targets(data, source)
    trainer = data.get("trainer") if isinstance(data, dict) else None
    if isinstance(trainer, dict) and trainer.get("model_registry") is not None:
        raise ConfigError(f"{source}: trainer.model_registry must be null in a config read from a file")
    check_paths(data, source, run_dir if run_dir is not None else os.devnull + "/none", data_dir, trusted)
    check_data_source(data.get("data") if isinstance(data, dict) else None, source)


# torchvision data sets whose files are read without pickle (IDX, MAT, raw binary); CIFAR and
# others unpickle their files, which would run code from a folder someone else prepared
FILE_SAFE_TORCHVISION = frozenset({"MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "SVHN", "STL10"})


def check_data_source(data: dict | None, source: str) -> None:
    """A torchvision data set named by a config read from a file must be one whose files are read
    as data (FILE_SAFE_TORCHVISION), or trusted by the user (VAELAB_TRUSTED_TARGETS)."""
    if not isinstance(data, dict) or data.get("source") != "torchvision":
        return
    name = str(data.get("name", "")).removeprefix("torchvision.datasets.")
    if name not in FILE_SAFE_TORCHVISION and not trusted_by_the_user(f"torchvision.datasets.{name}"):
        raise ConfigError(
            f"{source}: data.name={name!r} is refused in a config read from a file: torchvision reads its files "
            f"with pickle, which can run code; trust it with {TRUSTED_TARGETS_VARIABLE}=torchvision.datasets.{name}"
        )
