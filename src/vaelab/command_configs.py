"""The settings of vaelab-eval, vaelab-sample and vaelab-classifier, checked before anything
loads: each bad value is one ConfigError naming the key. (The train config's rules are ``config``.)
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from vaelab.config import DATA_NAMES, PICTURE_KINDS, check_seed, is_count, is_number
from vaelab.errors import require


def validate_eval_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line naming the key) for a bad vaelab-eval value, before anything loads."""
    require(is_count(cfg.k), "k", cfg.k, "an integer >= 1")
    require(cfg.split in ("test", "val"), "split", cfg.split, "test or val")
    for key in ("batch_images", "limit_images"):
        require(is_count(cfg.get(key), allow_null=True), key, cfg.get(key), "null or an integer >= 1")
    progress = cfg.get("progress_seconds", 60)
    require(
        isinstance(progress, int | float) and not isinstance(progress, bool) and progress >= 0,
        "progress_seconds",
        progress,
        "a number >= 0",
    )
    require(
        cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:"),
        "device",
        cfg.device,
        "auto, cpu, cuda or cuda:N",
    )
    ood = cfg.get("ood")
    require(
        ood in (None, *DATA_NAMES) or (isinstance(ood, str) and Path(ood).expanduser().is_dir()),
        "ood",
        ood,
        f"null, {' or '.join(DATA_NAMES)}, or a folder of images",
    )
    require(is_count(cfg.samples_per_class), "samples_per_class", cfg.samples_per_class, "an integer >= 1")


def validate_sample_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line naming the key) for a bad vaelab-sample value, before anything loads."""
    require(cfg.kind in PICTURE_KINDS, "kind", cfg.kind, f"one of {', '.join(PICTURE_KINDS)}")
    require(is_count(cfg.n), "n", cfg.n, "an integer >= 1")
    require(is_count(cfg.steps) and cfg.steps >= 2, "steps", cfg.steps, "an integer >= 2")
    require(is_number(cfg.span) and cfg.span > 0, "span", cfg.span, "a number > 0")
    require(is_count(cfg.get("nrow"), allow_null=True), "nrow", cfg.get("nrow"), "null or an integer >= 1")
    require(is_count(cfg.scatter_images), "scatter_images", cfg.scatter_images, "an integer >= 1")
    check_seed(cfg.seed)
    label = cfg.get("label")
    require(
        label is None or (isinstance(label, int) and not isinstance(label, bool)),
        "label",
        label,
        "null or a class number",
    )


def validate_classifier_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line naming the key) for a bad vaelab-classifier value."""
    require(is_count(cfg.epochs), "epochs", cfg.epochs, "an integer >= 1")
    check_seed(cfg.seed)
    require(isinstance(cfg.retrain, bool), "retrain", cfg.retrain, "true or false")
