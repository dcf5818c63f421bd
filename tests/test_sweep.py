"""Hydra multirun: one W&B run per job in one group, failures recorded, a summary file."""

import csv

import pytest
from helpers import FAST, train_cli

from vaelab.results.wandb_offline import find_offline_runs, read_offline_run


def test_sweep_keeps_going_past_a_failed_job_and_summarises(tmp_path, data_root):
    sweep_dir = tmp_path / "sweep"
    result = train_cli(
        "-m",
        "model.beta=1,-1,4",
        "model.latent_dim=2,3",
        *FAST,
        "trainer.limit_train_batches=2",
        "callbacks.image_panels.every_n_epochs=5",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    with open(sweep_dir / "sweep_summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["ok", "ok", "failed", "failed", "ok", "ok"]
    assert rows[2]["overrides"].startswith("model.beta=-1") and "model.beta=-1.0 is not allowed" in rows[2]["error"]
    assert all(float(row["test/elbo"]) < 0 for row in rows if row["status"] == "ok")
    assert (sweep_dir / "sweep_summary.md").read_text().count("| failed |") == 2
    assert "sweep: 4 of 6 jobs ok" in result.stdout
    assert result.stderr.count("sweep: job") == 2

    runs = [read_offline_run(path) for path in find_offline_runs(sweep_dir)]
    assert len(runs) == 4 and len({run.run_id for run in runs}) == 4
    assert {run.group for run in runs} == {f"sweep-{sweep_dir.name}"}
    assert sorted((run.config["model"]["beta"], run.config["model"]["latent_dim"]) for run in runs) == [
        (1, 2),
        (1, 3),
        (4, 2),
        (4, 3),
    ]
    for run in runs:  # each run holds only its own job's history
        assert run.name == f"vae-mnist-z{run.config['model']['latent_dim']}-b{run.config['model']['beta']}-s0"
        assert len([row for row in run.history if "test/elbo" in row]) == 1

    # vaelab-compare reads the same sweep back from the offline W&B runs: failed jobs listed, curves from W&B
    from vaelab.results.comparison import find_run_folders, read_run

    compared = [read_run(folder) for folder in find_run_folders([sweep_dir])]
    assert [r.status for r in compared] == ["ok", "ok", "failed", "failed", "ok", "ok"]
    ok = [r for r in compared if r.status == "ok"]
    assert all(r.curve_source == "wandb" and any("train/elbo" in row for row in r.history) for r in ok)
    from vaelab.results.comparison import compare  # the report shows why the two jobs failed

    page = compare([sweep_dir], tmp_path / "compare")["html"].read_text()
    assert "<h2>Failed runs (2)</h2>" in page and page.count("model.beta=-1.0 is not allowed") == 2


@pytest.mark.slow  # a two-job sweep: about 18 s
def test_a_sweep_over_importance_samples_summarises_the_iwae_bound(tmp_path, data_root):
    from vaelab.results.comparison import compare

    sweep_dir = tmp_path / "sweep"
    result = train_cli(
        "-m",
        "model.importance_samples=1,4",
        *FAST,
        "trainer.limit_train_batches=2",
        "logger=csv",
        "callbacks.image_panels.every_n_epochs=5",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep_dir / "sweep_summary.csv") as handle:
        elbo_job, iwae_job = list(csv.DictReader(handle))
    assert elbo_job["val/iwae"] == elbo_job["test/iwae"] == ""  # the ELBO-trained job logs no bound
    # the 4-sample bound lies above the one-sample ELBO on the same images (in expectation, and by far here)
    assert float(iwae_job["test/iwae"]) > float(iwae_job["test/elbo"])
    with open(compare([sweep_dir], tmp_path / "compare")["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["test/iwae"] != "" for row in rows] == [False, True]
