"""Sweeps on a real SLURM cluster: requeues, time limits, cancellations, sbatch refusals and DDP
across tasks and nodes.

The cluster is the local one of ``scripts/slurm/local-cluster.sh up`` (Debian's Slurm packages,
two nodes on this machine), which ``.ci/run`` starts; without it these tests skip, saying why.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import FAST, PROJECT_ROOT, assert_metrics_over_every_image, child_env, compose, train_cli

from vaelab.results.wandb_offline import find_offline_runs, read_offline_run
from vaelab.runs import saved_overrides

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")

CLUSTER_DIR = Path(os.environ.get("VAELAB_SLURM_DIR", f"/tmp/vaelab-slurm-{os.getuid()}"))
# what the local cluster's nodes offer (2 CPUs each, no GPU); each job trains for a few seconds
ON_THE_LOCAL_CLUSTER = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
]
LONG_ENOUGH = [*FAST, "trainer.max_epochs=30", "callbacks.image_panels.every_n_epochs=10", "trainer.deterministic=true"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """The environment in which sbatch, squeue and scontrol reach the local cluster."""
    conf = Path(os.environ.get("SLURM_CONF", CLUSTER_DIR / "slurm.conf"))
    if not conf.is_file():
        pytest.skip(f"no SLURM cluster: {conf} is missing (scripts/slurm/local-cluster.sh up)")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        idle = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"no SLURM cluster: sinfo failed ({error})")
    if "idle" not in idle.stdout and "mix" not in idle.stdout:
        pytest.skip(f"no SLURM cluster with an idle node: sinfo says {idle.stdout.strip() or idle.stderr.strip()}")
    return {"SLURM_CONF": str(conf)}


def run_sweep(args: list[str], sweep_dir: Path, data_root: Path, slurm: dict, timeout: float = 600):
    os.environ.update(slurm)  # train_cli's child environment is this process's
    return train_cli(
        "-m", *ON_THE_LOCAL_CLUSTER, *args, f"data.root={data_root}", f"hydra.sweep.dir={sweep_dir}", timeout=timeout
    )


def summary(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "sweep_summary.csv") as handle:
        return list(csv.DictReader(handle))


def slurm_job_of(job_dir: Path) -> str:
    """The SLURM id of the job (or array task, ``<array>_<task>``) that trains in ``job_dir``: the
    submitit plugin records it as hydra.job.id when the job starts; submitit's folder is named by it."""
    from omegaconf import OmegaConf

    return str(OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.id)


def after_first_checkpoint(job_glob: str, sweep_dir: Path, act, timeout: float = 300) -> threading.Thread:
    """Run ``act(job_dir)`` in a thread once the job's folder has its first last.ckpt."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(sweep_dir.glob(f"{job_glob}/checkpoints/last.ckpt"))
            if found:
                act(found[0].parent.parent)
                return
            time.sleep(0.5)

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def wandb_segments(job_dir: Path) -> list[str]:
    """The run id of each W&B segment (offline-run-<time>-<id>): an attempt stopped by SIGTERM
    may not have flushed its run record, so the id is read from W&B's folder name."""
    return [folder.name.rsplit("-", 1)[1] for folder in find_offline_runs(job_dir)]


@pytest.mark.slow
def test_a_requeued_job_continues_and_the_sweep_reports_its_last_attempt(tmp_path, data_root, slurm):
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, **slurm}
    requeued = []

    def requeue(job_dir: Path) -> None:
        job = slurm_job_of(job_dir)
        subprocess.run(["scontrol", "requeue", job], env=env, check=True, timeout=30)
        requeued.append(job)

    # three jobs with the same training config: job 0 is the uninterrupted reference of job 1
    thread = after_first_checkpoint("1_*", sweep_dir, requeue)
    result = run_sweep([*LONG_ENOUGH, "logger=wandb", "run_name=reference,requeued,third"], sweep_dir, data_root, slurm)
    thread.join(timeout=10)
    assert requeued, "the job was not requeued"
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep: 3 of 3 jobs ok" in result.stdout
    rows = summary(sweep_dir)
    assert [row["status"] for row in rows] == ["ok", "ok", "ok"]
    job_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    segments = wandb_segments(job_dirs[1])
    assert len(segments) >= 2 and len(set(segments)) == 1, segments  # one W&B run over two attempts
    assert "resume=" in (job_dirs[1] / "train.log").read_text()  # the second attempt continued the folder
    assert "test/elbo" in read_offline_run(find_offline_runs(job_dirs[1])[-1]).summary
    for metric in ("val/elbo", "test/elbo", "test/kl"):  # deterministic: as if never stopped
        assert float(rows[1][metric]) == pytest.approx(float(rows[0][metric]), rel=1e-6, abs=1e-6), metric


@pytest.mark.slow
def test_a_job_that_reaches_a_one_minute_limit_is_warned_requeued_and_finishes(tmp_path, data_root, slurm):
    """A 1-minute limit, with SLURM's own USR2 warning ``signal_delay_s`` before it: each attempt
    requeues itself when its next epoch starts (after a last.ckpt), and a later attempt finishes.
    SLURM checks limits every 30 s or so, so an attempt may last up to about 100 s: the job trains
    for longer than that even on an idle machine (200 epochs of 0.5 s), so the warning always comes
    before its end."""
    sweep_dir = tmp_path / "sweep"
    limit = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=15", "hydra.launcher.max_num_timeout=8"]
    longer_than_an_attempt = [*FAST, "trainer.max_epochs=200", "data.batch_size=4"]
    longer_than_an_attempt.append("callbacks.image_panels.every_n_epochs=100")
    result = run_sweep([*longer_than_an_attempt, *limit, "logger=wandb"], sweep_dir, data_root, slurm, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["status"] for row in summary(sweep_dir)] == ["ok"]
    job_dir = next(sweep_dir.glob("0_*"))
    log = (job_dir / "train.log").read_text()
    assert "the time limit is near; the job requeues itself when this epoch ends" in log
    assert "Requeued job" in log and "resume=" in log  # submitit requeued it; the next attempt continued
    segments = wandb_segments(job_dir)
    assert len(segments) >= 2 and len(set(segments)) == 1, segments
    assert "test/elbo" in json.loads((job_dir / "status.json").read_text())["metrics"]
    assert read_offline_run(find_offline_runs(job_dir)[-1]).summary["epochs"] == 200  # trained to the end


@pytest.mark.slow
def test_a_cancelled_job_is_reported_and_a_rerun_of_the_sweep_finishes_it(tmp_path, data_root, slurm):
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, **slurm}
    args = [*LONG_ENOUGH, "logger=csv", "model.beta=1,2"]

    def cancel(job_dir: Path) -> None:
        subprocess.run(["scancel", slurm_job_of(job_dir)], env=env, check=True, timeout=30)

    thread = after_first_checkpoint("1_*", sweep_dir, cancel)
    first = run_sweep(args, sweep_dir, data_root, slurm)
    thread.join(timeout=10)
    assert first.returncode == 1, first.stderr[-3000:]
    rows = summary(sweep_dir)
    assert [row["status"] for row in rows] == ["ok", "cancelled"]
    assert "cancelled; re-run the sweep to continue it" in rows[1]["error"]
    again = run_sweep(args, sweep_dir, data_root, slurm)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [row["status"] for row in summary(sweep_dir)] == ["ok", "ok"]
    assert "resume=" in next(sweep_dir.glob("1_*/train.log")).read_text()  # continued, not restarted
    job_logs = [log.read_text() for log in sweep_dir.glob(".submitit/*/*_log.out")]
    assert any("finished before (status.json ok): skipped" in log for log in job_logs)  # job 0 ran once


@pytest.mark.slow
def test_ddp_across_tasks_and_nodes_logs_metrics_over_every_image(tmp_path, data_root, slurm, monkeypatch):
    """trainer=ddp on the launcher: each job asks for trainer.devices tasks on each of
    trainer.num_nodes nodes (one array job per layout), Lightning's SLURM environment runs a rank
    per task (gloo), and the run's numbers are those of every image (helpers.assert_metrics_over_every_image)."""
    sweep_dir = tmp_path / "sweep"
    # a port the submitting shell exported (an earlier DDP run does): concurrent jobs must not share it
    monkeypatch.setenv("MASTER_PORT", "29533")
    layouts = ["trainer=ddp", "trainer.devices=2,1", "trainer.num_nodes=1,2"]  # 2x1, 2x2, 1x1, 1x2 ranks
    result = run_sweep([*FAST, *layouts, "logger=wandb"], sweep_dir, data_root, slurm)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep: 4 of 4 jobs ok" in result.stdout
    assert result.stdout.count("submitted SLURM jobs") + result.stderr.count("submitted SLURM jobs") == 4
    seen = set()
    for job_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit()):
        overrides = dict(o.split("=", 1) for o in saved_overrides(job_dir) if "=" in o)
        devices, nodes = int(overrides["trainer.devices"]), int(overrides["trainer.num_nodes"])
        world_size = devices * nodes
        environment = next((sweep_dir / ".submitit" / slurm_job_of(job_dir)).glob("*_0_log.out")).read_text()
        assert f"node=0({nodes})" in environment and f"global_rank=0({world_size})" in environment
        log = (job_dir / "train.log").read_text()
        assert log.count("torch threads: 1") == world_size  # each task's one CPU (cpus_per_task=1)
        if world_size > 1:
            assert f"GLOBAL_RANK: {world_size - 1}, MEMBER: {world_size}/{world_size}" in log
        runs = [read_offline_run(path) for path in find_offline_runs(job_dir)]
        assert len(runs) == 1 and runs[0].summary["world_size"] == world_size  # one W&B run, from rank 0
        assert sorted(p.name for p in (job_dir / "checkpoints").iterdir()) == ["best-epoch-000.ckpt", "last.ckpt"]
        assert_metrics_over_every_image(job_dir, data_root, world_size)
        seen.add((devices, nodes))
    assert seen == {(2, 1), (2, 2), (1, 1), (1, 2)}
    errors = "".join(path.read_text() for path in sweep_dir.glob(".submitit/*/*_log.err"))
    assert "sync_dist" not in errors  # every epoch metric is synced or gathered


def wait_for_state(job: str, env: dict, wanted: set[str], timeout: float = 600) -> str:
    """Poll ``scontrol show job`` until the job's state is one of ``wanted``; return it."""
    deadline, state = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True).stdout
        state = next((w.split("=", 1)[1] for w in shown.split() if w.startswith("JobState=")), "")
        if state in wanted:
            return state
        time.sleep(1)
    raise AssertionError(f"SLURM job {job} still {state} after {timeout} s")


@pytest.mark.slow
def test_the_sbatch_script_requeues_itself_after_a_checkpoint_and_finishes(tmp_path, data_root, slurm):
    """scripts/slurm/train.sbatch warned of its time limit (USR1, as ``--signal=USR1@90`` sends it)
    requeues itself when the next epoch starts; the second attempt finishes in the same folder."""
    # child_env: not attached to a W&B service of this process (both attempts would share it, and its
    # stream of the first one would make the run id "in use" for the second)
    env = {**child_env(), **slurm, "VAELAB_TRAIN": f"{sys.executable} train.py"}
    run_dir = tmp_path / "run"
    overrides = [*LONG_ENOUGH, "logger=wandb", f"data.root={data_root}"]
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={PROJECT_ROOT}", f"--output={tmp_path}/slurm-%j.out", "--mem=2G",
         "--cpus-per-task=1", "scripts/slurm/train.sbatch", str(run_dir), *overrides],
        env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True, timeout=30)
    state = wait_for_state(job, env, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    output = next(tmp_path.glob("slurm-*.out")).read_text()
    train_log = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else ""
    assert state == "COMPLETED", f"{output[-3000:]}\n--- train.log ---\n{train_log[-2000:]}"  # why it failed
    assert "attempt 1," in output and "attempt 2," in output, output[-3000:]
    assert "requeues itself when this epoch ends" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"
    segments = wandb_segments(run_dir)
    assert len(segments) >= 2 and len(set(segments)) == 1, segments


@pytest.mark.slow
@pytest.mark.parametrize(
    "request_, message",
    [
        # a GPU per node (the default on GPU clusters) where the nodes have none: sbatch refuses
        (["trainer.accelerator=auto"], "sbatch refused the sweep's jobs: Invalid generic resource"),
        # more CPUs per task than a node has: SLURM accepts the job and would keep it pending forever
        (["trainer.accelerator=cpu", "hydra.launcher.cpus_per_task=64"], "SLURM will not start job"),
    ],
)
def test_a_request_the_cluster_cannot_meet_is_one_line_and_leaves_nothing(
    request_, message, tmp_path, data_root, slurm
):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep([*FAST, *request_, "logger=csv", "model.beta=1,2"], sweep_dir, data_root, slurm, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], result.stderr
    assert not sweep_dir.exists()
    queue = subprocess.run(["squeue", "-h"], env={**os.environ, **slurm}, capture_output=True, text=True).stdout
    assert queue.strip() == ""  # the jobs SLURM would not start are cancelled, not left pending


@pytest.mark.parametrize(
    "trainer, expected",
    [
        (["trainer.accelerator=cpu"], {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0}),
        (
            ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            {"nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4},
        ),
    ],
)
def test_the_launcher_asks_for_a_task_per_device_on_each_node(trainer, expected):
    from omegaconf import OmegaConf

    cfg = compose(["hydra/launcher=slurm", *trainer], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert {key: launcher[key] for key in expected} == expected
    assert launcher["_target_"] == "hydra_plugins.vaelab_launchers.slurm_launcher.SlurmLauncher"
