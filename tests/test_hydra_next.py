"""Ready for Hydra 1.4 without depending on it: in a venv of its own with hydra-core 1.4's
release candidate (and the OmegaConf 2.4 it brings), every config option composes, and neither
Hydra nor OmegaConf warns about a deprecated call; the same holds under the installed 1.3."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import PROJECT_ROOT, python_cli

pytestmark = pytest.mark.slow

# compose every option of every config group, every warning an error
COMPOSE_ALL = r"""
import warnings
warnings.simplefilter("error")
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
import hydra, omegaconf
from vaelab.cli import CONFIG_DIR, VERSION_BASE
options = sorted(
    f"{p.parent.relative_to(CONFIG_DIR).as_posix()}={p.stem}"
    for p in CONFIG_DIR.rglob("*.yaml")
    if p.parent != CONFIG_DIR and p.parent.name != "hydra"
)
with initialize_config_dir(config_dir=str(CONFIG_DIR), **VERSION_BASE):
    for option in options:
        cfg = compose("train", overrides=[option, "paths.output_dir=/tmp/x"], return_hydra_config=True)
        assert cfg.run_name  # resolves vaelab's resolvers
        OmegaConf.to_container(cfg, resolve=False)
        assert not cfg.hydra.get("mode"), option  # a search config must not set hydra.mode
print(f"hydra {hydra.__version__} omegaconf {omegaconf.__version__}: {len(options)} options composed")
"""


def test_every_option_composes_without_a_deprecation_on_hydra_13():
    result = python_cli("-c", COMPOSE_ALL, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hydra 1.3" in result.stdout


def test_every_option_composes_without_a_deprecation_on_hydra_14(tmp_path):
    venv = PROJECT_ROOT / ".venv-hydra14"
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--pre", "hydra-core>=1.4.0rc1,<1.5", "joblib", "submitit"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    plugins = subprocess.run(  # vaelab and the launcher plugins as they are, without their pins on Hydra 1.3
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(PROJECT_ROOT)]
        + ["hydra-joblib-launcher>=1.2", "hydra-submitit-launcher>=1.2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert plugins.returncode == 0, plugins.stderr[-3000:]
    result = subprocess.run([str(python), "-c", COMPOSE_ALL], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hydra 1.4" in result.stdout and "omegaconf 2.4" in result.stdout
