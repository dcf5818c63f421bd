"""Whole runs in fresh processes, as a user starts them: what a tiny run costs beyond importing
its libraries, and what each job of an in-process sweep costs beyond its fit."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import ROOT

IMPORTS = "import lightning, torchvision, wandb, hydra"
# one batch each of training, validation and test, with the default logger (W&B, offline)
TINY_RUN = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


def seconds_of(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one command, from its start to its exit (W&B's shutdown included)."""
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_env(data_root: str) -> dict[str, str]:
    return {**os.environ, "VAELAB_DATA_DIR": data_root, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def bench_startup(repeats: int = 5) -> float:
    """Median seconds of `python train.py --cfg job` in a fresh process."""
    command = [sys.executable, str(ROOT / "train.py"), "--cfg", "job"]
    return statistics.median(seconds_of(command, ROOT, dict(os.environ)) for _ in range(repeats))


def bench_tiny_run(data_root: str, repeats: int = 3) -> dict[str, float]:
    """Medians of `python -c "<IMPORTS>"` and of a tiny `python train.py` run, in turn."""
    env, imports, runs = run_env(data_root), [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as work:
            imports.append(seconds_of([sys.executable, "-c", IMPORTS], Path(work), env))
            runs.append(seconds_of([sys.executable, str(ROOT / "train.py"), *TINY_RUN], Path(work), env))
    imports_seconds, run_seconds = statistics.median(imports), statistics.median(runs)
    return {"imports_seconds": imports_seconds, "tiny_run_seconds": run_seconds, "extra": run_seconds - imports_seconds}


def bench_sweep(data_root: str, imports_seconds: float, jobs: int = 8) -> dict[str, float]:
    """A `jobs`-job in-process multirun of 1-epoch runs (beta = 1..jobs, default config): its wall
    time, the jobs' fit times (status.json), and the seconds per job beyond its fit once the
    libraries are imported: (wall - imports - sum of fits) / jobs."""
    with tempfile.TemporaryDirectory() as work:
        sweep_dir = Path(work) / "sweep"
        betas = ",".join(str(beta) for beta in range(1, jobs + 1))
        command = [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            f"model.beta={betas}",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={sweep_dir}",
        ]
        wall = seconds_of(command, Path(work), run_env(data_root))
        statuses = [json.loads(path.read_text()) for path in sweep_dir.glob("*/status.json")]
    fits = [status["metrics"]["time/fit_seconds"] for status in statuses if status["status"] == "ok"]
    if len(fits) != jobs:
        raise SystemExit(f"error: the bench sweep finished {len(fits)} of {jobs} jobs")
    return {
        "jobs": jobs,
        "wall_seconds": wall,
        "fit_seconds": sum(fits),
        "per_job_beyond_fit": (wall - imports_seconds - sum(fits)) / jobs,
    }
