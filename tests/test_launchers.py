"""The joblib launcher and submitit_local, through real `python train.py -m` runs (Optuna: test_optuna_search.py)."""

import csv
import math
import os

import pytest
from helpers import FAST, train_cli

from vaelab.results.wandb_offline import find_offline_runs, read_offline_run

pytestmark = pytest.mark.slow  # about 80 s: run by `make test-slow` (and .ci/run)

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")

QUICK = [*FAST, "trainer.limit_train_batches=3", "callbacks.image_panels.every_n_epochs=5", "test=false"]


def sweep(args, sweep_dir, data_root, timeout=600):
    return train_cli(*args, *QUICK, f"data.root={data_root}", f"hydra.sweep.dir={sweep_dir}", timeout=timeout)


def summary_rows(sweep_dir):
    with open(sweep_dir / "sweep_summary.csv") as handle:
        return list(csv.DictReader(handle))


def test_joblib_runs_two_jobs_in_parallel_with_their_own_runs(tmp_path, data_root):
    sweep_dir = tmp_path / "joblib"
    result = sweep(["-m", "hydra/launcher=local_parallel", "model.latent_dim=2,3"], sweep_dir, data_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["ok", "ok"]
    runs = [read_offline_run(path) for path in find_offline_runs(sweep_dir)]
    assert len({run.run_id for run in runs}) == 2 and {run.group for run in runs} == {f"sweep-{sweep_dir.name}"}
    assert sorted(run.config["model"]["latent_dim"] for run in runs) == [2, 3]
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # joblib's loky workers share the cores
    for job in sweep_dir.glob("*_vae-*"):
        assert f"torch threads: {threads}\n" in (job / "train.log").read_text()


def test_submitit_local_runs_the_jobs(tmp_path, data_root):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")
    sweep_dir = tmp_path / "submitit"
    result = sweep(
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model.beta=1,-1"],
        sweep_dir,
        data_root,
    )
    assert result.returncode == 1, result.stderr[-3000:]  # the second job fails on purpose
    rows = summary_rows(sweep_dir)
    assert [row["status"] for row in rows] == ["ok", "failed"]
    assert "model.beta=-1.0 is not allowed" in rows[1]["error"]
    assert math.isfinite(float(rows[0]["val/elbo"]))
    assert list(sweep_dir.glob(".submitit/*/*_log.out"))  # ran as submitit jobs


def test_optuna_trials_in_joblib_workers_reach_the_study_and_its_pruner(tmp_path, data_root):
    pytest.importorskip("optuna", reason="pip install -e '.[optuna]'")
    sweep_dir = tmp_path / "optuna_joblib"
    result = sweep(
        [
            "hparams_search=optuna",
            "hydra/launcher=local_parallel",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",  # how other processes reach the trial
            "~hydra.sweeper.pruner",
            "+hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 0.0}",  # every ELBO is < 0
            "logger=csv",
        ],
        sweep_dir,
        data_root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["pruned", "pruned"]
    assert "sweep: 0 of 2 jobs ok, 2 pruned" in result.stdout
