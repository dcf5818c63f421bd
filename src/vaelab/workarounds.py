"""Where vaelab works around the libraries and machines it runs on, in one place, each with its reason.

- Known-harmless output, silenced where it is raised (``quiet_third_party``, called once per run
  before Lightning builds anything; ``quiet_wandb_logger``). Real warnings stay: a filter here
  names one message, never a category.
- Hydra 1.3 and 1.4, OmegaConf 2.3 and 2.4: ``VERSION_BASE`` and ``register_resolver``.
- Lightning's NVML-based CUDA check on machines without a GPU: ``skip_nvml_cuda_probe``.
- W&B's import of its Launch package at every ``wandb.init``: ``skip_unstaged_launch_inputs``.
- The interpreter's last garbage collection over the libraries' objects at a command's exit:
  ``skip_final_garbage_collection``.

Imports only hydra and omegaconf (torch inside a function), so the commands' ``--help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

import hydra
from omegaconf import OmegaConf

# (message regex, why it is harmless here)
HARMLESS_WARNINGS = (
    (".*does not have many workers.*", "the batches are tensors in memory: no loader workers are needed"),
    (".*treespec, LeafSpec.*", "Lightning's pytree call against newer torch; nothing changes"),
    (".*`srun` command is available on your system but is not used.*", "vaelab submits through sbatch (its launcher)"),
)

# Lightning's INFO lines about the hardware found, the seed set, batch limits, checkpoint restores
# and an advert for its cloud logger: the run folder, train.log and vaelab's own lines say what matters
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed")


def quiet_third_party() -> None:
    for message, _reason in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message)
    for name in LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_QUIET", "true")  # W&B's offline notice stays; its end-of-run history table goes


def skip_unstaged_launch_inputs() -> None:
    """Let ``wandb.init`` skip applying W&B Launch inputs when none can have been staged.

    Every ``wandb.init`` imports ``wandb.sdk.launch`` (about 0.5 s, W&B's public API and its
    pydantic models) to apply the config inputs a Launch job staged beforehand. Staging them
    imports ``wandb.sdk.launch.inputs.internal`` first, so while that module is not loaded there is
    nothing to apply, and the import is skipped; once it is loaded, W&B's own method runs."""
    import sys

    from wandb.sdk.wandb_run import Run

    apply = getattr(Run, "_detect_and_apply_job_inputs", None)
    if apply is None or getattr(apply, "vaelab_skips_unstaged", False):
        return

    def apply_when_staged(run) -> None:
        if "wandb.sdk.launch.inputs.internal" in sys.modules:
            apply(run)

    apply_when_staged.vaelab_skips_unstaged = True
    Run._detect_and_apply_job_inputs = apply_when_staged


def skip_final_garbage_collection() -> None:
    """Leave the objects alive at a command's exit out of Python's last garbage collection.

    With torch, Lightning and W&B loaded, the interpreter's shutdown spends most of its time
    collecting their objects (the cost is in docs/benchmarks.md). ``gc.freeze`` as an exit handler
    moves them out of the collector's reach. Exit handlers registered after this one (W&B's) run
    before it; those registered before (``logging.shutdown``, which flushes the log files) run
    after it. Every file vaelab writes is closed by its writer, never by the collector."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)  # once, however many commands run in this process
    atexit.register(gc.freeze)


def quiet_wandb_logger(logger) -> None:
    """Drop the ``anonymous`` argument Lightning's WandbLogger always passes to ``wandb.init``
    (W&B warns that it has no effect). The logger keeps it in a private dict until its run starts."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)


def release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as ``1.4.0rc3``."""
    major, minor = version.split(".")[:2]
    return int(major), int(re.match(r"\d+", minor).group())


# Hydra 1.3 warns when version_base is missing, Hydra 1.4 when it is given: ask for 1.3's
# behaviour on 1.3 only (1.4's defaults are the same for vaelab's configs)
VERSION_BASE = {"version_base": "1.3"} if release(hydra.__version__) < (1, 4) else {}


def register_resolver(name: str, resolver) -> None:
    """``OmegaConf.register_new_resolver`` (OmegaConf 2.3), renamed ``register_resolver`` in 2.4,
    where the old name is deprecated; in 2.3 ``register_resolver`` is the legacy string-only API."""
    import omegaconf

    if release(omegaconf.__version__) >= (2, 4):
        OmegaConf.register_resolver(name, resolver, replace=True)
    else:
        OmegaConf.register_new_resolver(name, resolver, replace=True)


def skip_nvml_cuda_probe() -> None:
    """On a machine without a GPU, let torch.cuda.is_available() use torch's cheap check.

    Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 so that asking whether CUDA is there never
    initializes CUDA before a fork. torch's optimizers ask once per step, and where there is no
    GPU each NVML probe tries to load the NVML library again (its cost: docs/benchmarks.md). With
    no GPU there is no CUDA to keep uninitialized, so the flag is turned off; with one, it stays."""
    import torch

    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and not torch.cuda.is_available():
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
