"""Known-harmless output of the libraries vaelab drives, silenced where it is raised, each with
the reason it is harmless. Real warnings stay: a filter here names one message, never a category.

``quiet_third_party()`` is called once per run, before Lightning builds anything.
"""

from __future__ import annotations

import logging
import os
import warnings

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


def quiet_wandb_logger(logger) -> None:
    """Drop the ``anonymous`` argument Lightning's WandbLogger always passes to ``wandb.init``
    (W&B warns that it has no effect). The logger keeps it in a private dict until its run starts."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
