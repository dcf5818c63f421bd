"""Run folders: a resume keeps its config, one writer per folder, sweeps that continue after a kill."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    PROJECT_ROOT,
    child_env,
    differing_metrics,
    kill_at_checkpoint,
    snapshot,
    three_killable_epochs,
    train_cli,
)
from omegaconf import OmegaConf

from vaelab.allow_list import check_file_config
from vaelab.errors import ConfigError, UserError
from vaelab.results.wandb_offline import find_offline_runs, read_offline_run
from vaelab.runs import (
    FolderLock,
    file_name,
    holds_run,
    last_checkpoint_file,
    read_run_config,
    read_status,
    run_of_checkpoint,
    save_run_config,
    saved_overrides,
    write_status,
)

CSV = [*FAST, "logger=csv"]


cli = train_cli  # python train.py ...


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root) -> Path:
    """A finished one-epoch run (CSV logger, not tested), to copy into each test that changes it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert cli(*CSV, f"data.root={data_root}", "test=false", f"hydra.run.dir={run}").returncode == 0
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def one_error_line(result) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def test_resume_starts_from_the_saved_config_and_applies_only_the_overrides_given_again(tmp_path, data_root):
    run = tmp_path / "run"
    assert cli(*CSV, f"data.root={data_root}", "model=beta_vae", "model.beta=4", f"hydra.run.dir={run}").returncode == 0
    overrides_before = (run / ".hydra" / "overrides.yaml").read_bytes()

    result = cli(f"data.root={data_root}", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", f"resume={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "with the overrides given again: data.root=" in result.stdout + result.stderr
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.model.name == "beta_vae" and saved.model.beta == 4 and saved.trainer.max_epochs == 2
    assert saved.data.val_size == 40  # from the first start, not the default
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["model"]["beta"] == 4 and checkpoint["epoch"] == 1
    assert (run / ".hydra" / "overrides.yaml").read_bytes() == overrides_before


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.latent_dim=3", "model.latent_dim is 3 here, 20 in the checkpoint"),
        ("model/net=conv", "model.net.encoder._target_"),
        ("model.optimizer.lr=-1", "model.optimizer.lr=-1"),
    ],
)
def test_a_failed_resume_leaves_the_run_folder_as_it_was(override, key, tmp_path, data_root, finished_run):
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    error = one_error_line(cli(*CSV, f"data.root={data_root}", f"resume={run}", override))
    assert key in error
    assert snapshot(run) == before


def test_a_fresh_start_in_a_folder_that_holds_a_run_is_refused(tmp_path, data_root, finished_run):
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    assert f"run folder {run} holds a run already: continue it with resume={run}" in one_error_line(
        cli(*CSV, f"data.root={data_root}", f"hydra.run.dir={run}")
    )
    assert snapshot(run) == before
    assert "resume=" in one_error_line(cli(*CSV, f"data.root={data_root}", f"resume={run}", f"ckpt_path={run}/x.ckpt"))
    assert f"resume={run / 'status.json'} is a file" in one_error_line(
        cli(*CSV, f"data.root={data_root}", f"resume={run / 'status.json'}", f"hydra.run.dir={tmp_path / 'other'}")
    )


def test_resume_auto_starts_then_continues(tmp_path, data_root):
    run = tmp_path / "run"
    for epochs in (1, 2):
        result = cli(
            *CSV, f"data.root={data_root}", f"trainer.max_epochs={epochs}", "resume=auto", f"hydra.run.dir={run}"
        )
        assert result.returncode == 0, result.stderr[-2000:]
        checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["epoch"] == epochs - 1 and checkpoint["global_step"] == 7 * epochs  # 240 - 40 images / 32


def test_a_held_run_folder_stops_a_second_process_naming_the_holder(tmp_path, data_root):
    run = tmp_path / "run"
    with FolderLock(run, "run folder"):
        error = one_error_line(cli(*CSV, f"data.root={data_root}", f"hydra.run.dir={run}"))
        assert f"run folder {run} is in use by process {os.getpid()}" in error
        assert (run / ".lock").is_file()  # the stopped process left the holder's folder alone
        with pytest.raises(UserError, match="is in use by process"):
            FolderLock(run, "run folder").__enter__()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "train.log"]


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from vaelab.runs import FolderLock; "
            f"lock = FolderLock({str(tmp_path)!r}, 'run folder').__enter__(); print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
        FolderLock(tmp_path, "run folder").__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with FolderLock(tmp_path, "run folder"):
        assert f"process {os.getpid()}" in (tmp_path / ".lock").read_text()


def test_a_sweep_into_a_held_sweep_folder_stops_at_once(tmp_path, data_root):
    sweep = tmp_path / "sweep"
    with FolderLock(sweep, "sweep folder"):
        result = cli("-m", *CSV, f"data.root={data_root}", "model.latent_dim=2,3", f"hydra.sweep.dir={sweep}")
    assert f"sweep folder {sweep} is in use by process {os.getpid()}" in one_error_line(result)
    assert sorted(p.name for p in sweep.iterdir()) == [".lock"]


@pytest.mark.slow  # two full trainings at once: about 22 s
def test_two_runs_started_together_get_folders_of_their_own(tmp_path, data_root):
    args = [sys.executable, "train.py", *CSV, f"data.root={data_root}", f"paths.log_dir={tmp_path}"]
    processes = [
        subprocess.Popen(
            args, cwd=PROJECT_ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in processes] == [0, 0], [p.stderr.read()[-1000:] for p in processes]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(json.loads((r / "status.json").read_text())["status"] == "ok" for r in runs)
    assert all(
        sorted(p.name for p in (r / "checkpoints").iterdir()) == ["best-epoch-000.ckpt", "last.ckpt"] for r in runs
    )


def test_run_names_cannot_lead_out_of_the_log_folder():
    for name in ("../../x", "a/../../b", "..", "/etc/passwd", ".hidden", "ok-name_1.5=2"):
        safe = file_name(name)
        assert "/" not in safe and not safe.startswith(".") and safe
    assert file_name("vae-mnist-z20-b1.0-s0") == "vae-mnist-z20-b1.0-s0"


@pytest.mark.slow
def test_a_sweep_killed_during_its_second_job_continues_where_it_stopped(tmp_path):
    common = [*three_killable_epochs(tmp_path), "logger=wandb"]
    sweep, reference = tmp_path / "sweep", tmp_path / "reference"
    args = ["-m", *common, "model.latent_dim=2,3,4,5", f"hydra.sweep.dir={sweep}"]
    kill_at_checkpoint(args, "1_*/checkpoints/last.ckpt", sweep)  # in job 2's second epoch
    first = next(sweep.glob("0_*"))
    second = next(sweep.glob("1_*"))
    assert json.loads((first / "status.json").read_text())["status"] == "ok" and not (second / "status.json").exists()
    assert not list(sweep.glob("2_*"))
    first_files = snapshot(first, bookkeeping=())

    result = train_cli(*args, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sweep: job {first.name} finished before (status.json ok): skipped" in result.stdout
    assert snapshot(first, bookkeeping=()) == first_files  # job 1's folder untouched, its log and lock included
    rows = (sweep / "sweep_summary.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and all(",ok," in row for row in rows)
    wandb_runs = [read_offline_run(p) for p in find_offline_runs(second)]
    assert len(wandb_runs) == 2 and len({run.run_id for run in wandb_runs}) == 1  # one W&B run, two segments

    uninterrupted = train_cli("-m", *common, "model.latent_dim=3", f"hydra.sweep.dir={reference}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    expected = json.loads(next(reference.glob("0_*/status.json")).read_text())["metrics"]
    resumed = json.loads((second / "status.json").read_text())["metrics"]
    different = differing_metrics(resumed, expected)
    assert not different, different


def test_a_run_resumed_after_its_last_epoch_keeps_its_train_and_val_metrics(tmp_path, data_root, finished_run):
    """As after a kill during the final test: the checkpoint is at the last epoch and nothing is left to fit."""
    run = copy_of(finished_run, tmp_path)
    first = json.loads((run / "status.json").read_text())["metrics"]
    result = cli(*CSV, f"data.root={data_root}", f"resume={run}", "test=true")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run / "status.json").read_text())["metrics"]
    assert metrics["val/elbo"] == pytest.approx(first["val/elbo"]) and metrics["train/elbo"] == first["train/elbo"]
    assert "test/elbo" in metrics


def test_a_best_checkpoint_left_by_a_kill_during_a_save_is_removed(tmp_path, data_root, finished_run):
    run = copy_of(finished_run, tmp_path)
    best = run / "checkpoints" / "best-epoch-000.ckpt"
    (run / "checkpoints" / "best-epoch-007.ckpt").write_bytes(best.read_bytes())  # as if the old one was not deleted
    assert cli(*CSV, f"data.root={data_root}", f"resume={run}", "trainer.max_epochs=2", "test=false").returncode == 0
    assert len(list((run / "checkpoints").glob("best-epoch-*.ckpt"))) == 1


def test_a_long_run_name_is_shortened_to_one_file_name_part_that_stays_unique():
    from vaelab.runs import MAX_NAME, file_name

    first, second = file_name("x" * 300 + "a"), file_name("x" * 300 + "b")
    assert len(first) == len(second) == MAX_NAME and first != second
    assert first.startswith("x" * 80) and file_name("vae-mnist-z20") == "vae-mnist-z20"
    assert file_name("../" * 100) != file_name("../" * 101) and "/" not in file_name("../" * 100)


def test_a_run_config_with_a_yaml_alias_bomb_or_a_foreign_target_is_refused(tmp_path):
    bomb = tmp_path / "bomb"
    (bomb / ".hydra").mkdir(parents=True)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10**9 values expanded
    (bomb / ".hydra" / "config.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="config.yaml is refused: its structure is larger than"):
        read_run_config(bomb)
    foreign = tmp_path / "foreign"
    (foreign / ".hydra").mkdir(parents=True)
    (foreign / ".hydra" / "config.yaml").write_text("callbacks:\n  evil:\n    _target_: builtins.exec\n")
    with pytest.raises(ConfigError, match=r"callbacks\.evil\._target_='builtins.exec' is not allowed"):
        check_file_config(read_run_config(foreign), "config.yaml", foreign)
    with pytest.raises(UserError, match="is not a vaelab run folder"):
        read_run_config(tmp_path / "nowhere")


def test_the_layout_and_status_of_a_run_folder_come_from_runs(tmp_path):
    run = tmp_path / "run"
    assert not holds_run(run) and run_of_checkpoint(last_checkpoint_file(run)) is None
    save_run_config(run, OmegaConf.create({"seed": 1}), ["seed=1"])
    assert holds_run(run) and saved_overrides(run) == ["seed=1"]
    assert run_of_checkpoint(last_checkpoint_file(run)) == run
    assert run_of_checkpoint(tmp_path / "copied" / "last.ckpt") is None  # a checkpoint away from its run
    write_status(run, "ok", {"test/elbo": -90.5})
    assert read_status(run) == {"status": "ok", "metrics": {"test/elbo": -90.5}, "error": None}
    (run / "status.json").write_text("[1]")
    assert read_status(run) is None
    with pytest.raises(UserError, match=r"status.json is not a vaelab status file: it holds a list"):
        read_status(run, strict=True)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"status": "ok", "metrics": {}}))
    (run / "status.json").unlink()
    (run / "status.json").symlink_to(outside)
    assert read_status(run) is None  # a file out of the folder is not read as the run's status
