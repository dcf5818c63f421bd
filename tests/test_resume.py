"""Crash safety: SIGKILL mid-epoch, resume, same numbers; the NaN guard; atomic checkpoints."""

import json
import os

import pytest
import torch
from helpers import FAST, compose, differing_metrics, kill_at_checkpoint, three_killable_epochs, train_cli

from vaelab.errors import NonFiniteError
from vaelab.results.wandb_offline import find_offline_runs, read_offline_run
from vaelab.training import train


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics_in_the_same_wandb_run(tmp_path):
    args = three_killable_epochs(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    whole_run = train_cli(*args, f"hydra.run.dir={whole}")
    assert whole_run.returncode == 0, whole_run.stderr[-3000:]
    expected = json.loads((whole / "status.json").read_text())["metrics"]

    kill_at_checkpoint([*args, f"hydra.run.dir={killed}"], "checkpoints/last.ckpt", killed, timeout=300)  # in epoch 2
    assert not (killed / "status.json").exists()
    saved_epoch = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert saved_epoch < 2, f"killed too late: last.ckpt is from epoch {saved_epoch}"

    result = train_cli(*args, f"resume={killed}")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((killed / "status.json").read_text())["metrics"]
    # equal up to float summation order (a wrong data order or random state moves them by nats)
    assert resumed.keys() == expected.keys()
    different = differing_metrics(resumed, expected)
    assert not different, different
    runs = [read_offline_run(path) for path in find_offline_runs(killed)]
    assert len(runs) == 2 and len({run.run_id for run in runs}) == 1


def test_resume_of_a_folder_without_checkpoint_is_one_line(tmp_path):
    result = train_cli("logger=none", f"resume={tmp_path / 'nothing'}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"error: resume={tmp_path / 'nothing'}: there is no checkpoints/last.ckpt" in result.stderr


def test_nan_guard_stops_with_the_step_and_the_term_and_keeps_the_last_checkpoint(tmp_path, data_root, monkeypatch):
    from vaelab.objectives import Objective

    forward = Objective.forward

    def poisoned(self, x, decoder_output, mean, logvar, step, **kwargs):
        terms = forward(self, x, decoder_output, mean, logvar, step, **kwargs)
        if self.training and step == 9:  # an epoch is 7 steps: the first checkpoint exists by then
            terms["kl"] = terms["kl"] * float("nan")
            terms["loss"] = terms["recon"] + terms["kl"]
        return terms

    monkeypatch.setattr(Objective, "forward", poisoned)
    cfg = compose([*FAST, "trainer.max_epochs=3", "logger=none"], output_dir=tmp_path, data_root=data_root)
    with pytest.raises(NonFiniteError, match=r"step 9: the training loss is not finite \(kl=nan\)"):
        train(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 7
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_a_failed_checkpoint_save_keeps_the_previous_file_and_leaves_no_temporary_one(tmp_path, monkeypatch):
    import errno

    from vaelab.checkpointing import AtomicCheckpointIO
    from vaelab.errors import UserError

    checkpoints = tmp_path / "checkpoints"
    io = AtomicCheckpointIO(root=tmp_path)
    io.save_checkpoint({"x": torch.ones(2)}, checkpoints / "last.ckpt")

    def disk_full(fd):  # the data went out, the disk could not keep it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(UserError, match=r"cannot write .*last\.ckpt: No space left on device"):
        io.save_checkpoint({"x": torch.zeros(2)}, checkpoints / "last.ckpt")
    assert sorted(os.listdir(checkpoints)) == ["last.ckpt"]
    assert torch.equal(torch.load(checkpoints / "last.ckpt", weights_only=True)["x"], torch.ones(2))


def test_last_checkpoint_is_rewritten_every_epoch_whether_or_not_the_best_one_is(tmp_path, data_root):
    # mode=min: the rising validation ELBO is never "better" after the first validation (epoch 1),
    # and with validation every 2 epochs epoch 4 ends between validations
    cfg = compose(
        [
            *FAST,
            "trainer.max_epochs=5",
            "trainer.check_val_every_n_epoch=2",
            "logger=none",
            "test=false",
            "callbacks.model_checkpoint.mode=min",
        ],
        output_dir=tmp_path,
        data_root=data_root,
    )
    train(cfg)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best-epoch-001.ckpt", "last.ckpt"]
    best = torch.load(tmp_path / "checkpoints" / "best-epoch-001.ckpt", weights_only=True)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 4 and last["global_step"] == 5 * best["global_step"] // 2
