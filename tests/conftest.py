"""Shared fixtures: tiny synthetic IDX data sets, W&B kept offline in temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import FOLDERS, REAL_DATA, write_synthetic_dataset

# never online from the tests, even before the per-test fixture below applies (module-scoped fixtures)
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root with tiny synthetic MNIST and FashionMNIST IDX files in torchvision's layout."""
    root = tmp_path_factory.mktemp("data")
    for name in FOLDERS:
        write_synthetic_dataset(root, name)
    return root


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    if not (REAL_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {REAL_DATA} (set VAELAB_DATA_DIR)")
    return REAL_DATA


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, with every folder of its own under the test's temporary path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        folder = tmp_path / "wandb_home" / var.lower()
        folder.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(folder))
