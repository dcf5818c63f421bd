"""The lowest versions pyproject.toml allows: installed into a venv of their own (torch, Lightning,
Hydra, OmegaConf, W&B, torchmetrics, matplotlib and the extras at their floors), then a training,
an evaluation and an Optuna sweep run on them. Slow: the install alone downloads several GB once
(kept in .venv-lowest/ while the floors stay the same)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from helpers import FAST, PROJECT_ROOT, child_env
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = pytest.mark.slow

EXTRAS = ("launchers", "optuna", "tensorboard", "rich")


def floors() -> dict[str, str]:
    """{package: its lowest allowed version} of the dependencies and EXTRAS, from pyproject.toml."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project["optional-dependencies"][extra]
    lowest = {}
    for text in requirements:
        requirement = Requirement(text)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                lowest[requirement.name.lower()] = spec.version
    return lowest


def test_every_floor_is_pinned_and_none_is_missing():
    lowest = floors()
    for name in ("torch", "torchvision", "lightning", "hydra-core", "omegaconf", "wandb", "torchmetrics", "optuna"):
        assert name in lowest, f"{name} has no lower bound in pyproject.toml"


@pytest.fixture(scope="module")
def lowest_venv() -> Path:
    """A venv with vaelab and every floor of floors() installed exactly; reused while they stay
    the same, and updated in place when they change."""
    pins = "".join(f"{name}=={version}\n" for name, version in sorted(floors().items()))
    venv = PROJECT_ROOT / ".venv-lowest"
    stamp = venv / "floors.sha1"
    digest = hashlib.sha1(pins.encode()).hexdigest()
    python = venv / "bin" / "python"
    if not (stamp.is_file() and stamp.read_text() == digest):
        if not python.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        (venv / "floors.txt").write_text(pins)  # changed floors move the packages already there
        # several GB from the registry: a pip that resumes a download cut off mid-stream (25.1+),
        # and a second attempt when the first one fails all the same
        pip = [str(python), "-m", "pip", "install", "-q", "--retries", "10"]
        upgrade = subprocess.run([*pip, "pip>=25.3"], capture_output=True, text=True, timeout=600)
        assert upgrade.returncode == 0, upgrade.stderr[-3000:]
        for _attempt in range(2):
            install = subprocess.run(
                [*pip, "--resume-retries", "10", "-c", str(venv / "floors.txt"), "-e", f".[{','.join(EXTRAS)}]"],
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                timeout=3000,
            )
            if install.returncode == 0:
                break
        assert install.returncode == 0, install.stderr[-3000:]
        stamp.write_text(digest)
    return venv


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = child_env()
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


def test_train_evaluate_and_sweep_on_the_lowest_versions(lowest_venv, tmp_path, data_root):
    listed = run(lowest_venv, "python", "-m", "pip", "list", "--format=json", cwd=tmp_path)
    installed = {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}
    for name, version in floors().items():
        assert Version(installed.get(name, "0").split("+")[0]) == Version(version), (name, installed.get(name), version)

    common = [*FAST, "trainer.max_epochs=2", "trainer.limit_train_batches=3", f"data.root={data_root}"]
    trained = run(lowest_venv, "vaelab-train", *common, "logger=many", "paths.log_dir=logs", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (last,) = tmp_path.glob("logs/runs/*/checkpoints/last.ckpt")
    status = json.loads((last.parent.parent / "status.json").read_text())
    assert status["status"] == "ok" and status["metrics"]["test/elbo"] < 0

    evaluated = run(
        lowest_venv,
        "vaelab-eval",
        f"ckpt={last}",
        "k=10",
        "limit_images=40",
        f"data_root={data_root}",
        "wandb=false",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "nll" in evaluated.stdout

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    swept = run(
        lowest_venv,
        "vaelab-train",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={storage}",
        "logger=csv",
        "test=false",
        *common,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert "sweep: 2 of 2 jobs ok" in swept.stdout
