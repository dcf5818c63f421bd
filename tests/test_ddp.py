"""Two-process data-parallel training on the CPU (gloo): trainer=ddp as a real command, ddp_spawn in-process."""

import json

import pytest
from helpers import FAST, assert_metrics_over_every_image, compose, train_cli

from vaelab.results.wandb_offline import find_offline_runs, read_offline_run
from vaelab.training import train

pytestmark = pytest.mark.slow  # about 100 s: run by `make test-slow` (and .ci/run)

TWO_CPUS = ["trainer.accelerator=cpu", "trainer.devices=2", "callbacks.image_panels.panels.latent_scatter=false"]


def assert_one_run_from_rank_zero(run_dir, world_size=2):
    runs = [read_offline_run(path) for path in find_offline_runs(run_dir / "wandb")]
    assert len(runs) == 1, [run.folder for run in runs]  # one W&B run, from rank 0
    if world_size is not None:
        assert runs[0].summary["world_size"] == world_size
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["best-epoch-000.ckpt", "last.ckpt"]  # one set, no rank-suffixed copies
    assert len(list((run_dir / "images" / "samples").glob("*.png"))) == 1
    return runs[0]


def test_ddp_command_trains_with_two_processes(tmp_path, data_root):
    run_dir = tmp_path / "run"
    result = train_cli(
        "trainer=ddp", *TWO_CPUS, *FAST, f"data.root={data_root}", f"hydra.run.dir={run_dir}", timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "train.log").read_text() + result.stdout + result.stderr
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    run = assert_one_run_from_rank_zero(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "ok" and status["metrics"]["test/elbo"] == pytest.approx(run.summary["test/elbo"])
    assert_metrics_over_every_image(run_dir, data_root, world_size=2)
    assert "sync_dist" not in result.stderr  # every epoch metric is synced or gathered


def test_ddp_spawn_in_process(tmp_path, data_root):
    cfg = compose(["trainer=ddp_spawn", *TWO_CPUS, *FAST], output_dir=tmp_path, data_root=data_root)
    metrics = train(cfg).metrics
    assert metrics["test/elbo"] < 0 and metrics["val/kl"] > 0
    assert metrics["test/elbo"] == pytest.approx(-(metrics["test/recon"] + metrics["test/kl"]), rel=1e-5)
    # the summary is written by rank 0 inside the spawned processes, so it holds the test metrics
    run = assert_one_run_from_rank_zero(tmp_path, world_size=2)
    assert run.summary["test/elbo"] == pytest.approx(metrics["test/elbo"])
    assert_metrics_over_every_image(tmp_path, data_root, world_size=2, logged=metrics)


def test_ddp_spawn_takes_the_same_steps_with_several_per_fetch(tmp_path, data_root):
    """Two ranks, each taking 2 optimizer steps per fetch (manual optimization, gradients averaged
    at each backward), end on the weights of 1 step per fetch, bit for bit (static binarization:
    the data draws no random numbers)."""
    import torch

    same = ["trainer=ddp_spawn", *TWO_CPUS, *FAST, "logger=none", "test=false", "data.binarize=static"]
    same += ["trainer.max_epochs=2", "trainer.log_every_n_steps=2", "callbacks.image_panels=null"]
    weights = []
    for steps in (1, 2):
        cfg = compose([*same, f"steps_per_fetch={steps}"], output_dir=tmp_path / str(steps), data_root=data_root)
        checkpoint = torch.load(train(cfg).last_checkpoint, weights_only=True)
        weights.append((checkpoint["global_step"], checkpoint["state_dict"]))
    (steps_one, one), (steps_two, two) = weights
    assert steps_one == steps_two == 8  # 200 images over 2 ranks in batches of 32: 4 steps an epoch
    assert all(torch.equal(two[name], value) for name, value in one.items())
