"""What older run folders, checkpoints and command lines say, read as today's names.

The rule (docs/development.md): a class path that a saved ``_target_`` names keeps resolving (its
module re-exports the class, and the allow-list keeps the old path), and a renamed config key is
read under its new name from saved configs, checkpoints and command lines for one release.

- ``FORMER_TARGETS``: former class path -> the class it is now;
- ``FORMER_KEYS``: former config key -> its name now;
- ``upgrade_overrides``: a command line's overrides with former keys renamed, and a warning each;
- ``upgrade_config`` / ``upgrade_hparams``: a saved config or a checkpoint's hyperparameters, likewise.

Imports nothing heavy.
"""

from __future__ import annotations

import re
import sys

FORMER_TARGETS = {
    "vaelab.objectives.BernoulliLikelihood": "vaelab.likelihoods.BernoulliLikelihood",
    "vaelab.objectives.GaussianLikelihood": "vaelab.likelihoods.GaussianLikelihood",
    "vaelab.objectives.LocalAutoregressiveBernoulli": "vaelab.likelihoods.LocalAutoregressiveBernoulli",
    "vaelab.callbacks.SampleGrids": "vaelab.image_panels.ImagePanels",
    "vaelab.callbacks.ImagePanels": "vaelab.image_panels.ImagePanels",
    "vaelab.callbacks.CheckpointArtifacts": "vaelab.checkpointing.CheckpointArtifacts",
}
FORMER_KEYS = {"loss": "likelihood", "callbacks.sample_grids": "callbacks.image_panels"}

# an override: optional +, ++ or ~, then the key (dots, or / for a group), then = or the end (a deletion)
OVERRIDE_KEY = re.compile(r"^(?P<prefix>\+{0,2}|~)(?P<key>[\w./@-]+)(?P<rest>=.*|)$", re.DOTALL)


def renamed_key(key: str) -> str | None:
    """``key`` (dotted, or a group with /) under its current name, or None when it is current."""
    dotted = key.replace("/", ".")
    for old, new in FORMER_KEYS.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + key[len(old) :]
    return None


def upgrade_overrides(overrides: list[str], warn: bool = True) -> list[str]:
    """The overrides with former keys renamed (``loss=gaussian`` -> ``likelihood=gaussian``,
    ``callbacks.sample_grids.every_n_epochs=5`` -> ``callbacks.image_panels.every_n_epochs=5``);
    with ``warn``, one ``warning:`` line on stderr for each renamed override."""
    upgraded = []
    for override in overrides:
        match = OVERRIDE_KEY.match(override)
        new_key = renamed_key(match["key"]) if match else None
        if new_key is None:
            upgraded.append(override)
            continue
        upgraded.append(f"{match['prefix']}{new_key}{match['rest']}")
        if warn:
            old_name = next(old for old in FORMER_KEYS if match["key"].replace("/", ".").startswith(old))
            print(
                f"warning: {old_name} is now {FORMER_KEYS[old_name]}: {override!r} was read as {upgraded[-1]!r}",
                file=sys.stderr,
            )
    return upgraded


def upgrade_config(config) -> None:
    """Rename former keys of a saved run config (an OmegaConf DictConfig) in place; a key given
    under both names keeps the current one."""
    from omegaconf import OmegaConf

    for old, new in FORMER_KEYS.items():
        value = OmegaConf.select(config, old, default=None, throw_on_resolution_failure=False)
        if value is None:
            continue
        parent_path, _, name = old.rpartition(".")
        parent = OmegaConf.select(config, parent_path) if parent_path else config
        parent.pop(name)
        if OmegaConf.select(config, new, default=None, throw_on_resolution_failure=False) is None:
            OmegaConf.update(config, new, value, merge=False, force_add=True)


def upgrade_hparams(hparams: dict) -> dict:
    """A checkpoint's hyperparameters with former top-level keys renamed (``loss``)."""
    renames = {old: new for old, new in FORMER_KEYS.items() if "." not in old}
    return {renames[k] if k in renames and renames[k] not in hparams else k: v for k, v in hparams.items()}
