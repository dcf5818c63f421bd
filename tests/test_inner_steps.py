"""steps_per_fetch: several optimizer steps per Lightning step take the same steps as one per
Lightning step (the Trainer's clipping, accumulation, limits, schedulers and logging steps
included), continue exactly after a resume, and refuse what they cannot keep."""

import csv

import pytest
import torch
from helpers import FAST, compose, train_cli

from vaelab.errors import ConfigError, NonFiniteError
from vaelab.training import train

# static binarization: the data draws no random numbers, so that one step per Lightning step and
# several draw the same z samples in the same order and must give the same weights, bit for bit
SAME_RUN = [*FAST, "logger=csv", "callbacks.image_panels=null", "test=false", "data.binarize=static"]
SAME_RUN += ["trainer.log_every_n_steps=2"]  # a multiple of the steps per fetch
STEP_LR = (
    "model.lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:2,gamma:0.5,interval:step}"
)
EPOCH_LR = "model.lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5}"

STEP_METRICS = {f"train/{name}" for name in ("loss", "recon", "kl", "elbo", "beta")}


def run(tmp_path, data_root, overrides):
    """Train; returns (the last checkpoint, {column: [(step, value), ...]} of metrics.csv)."""
    result = train(compose([*SAME_RUN, *overrides], output_dir=tmp_path, data_root=data_root))
    checkpoint = torch.load(result.last_checkpoint, weights_only=True)
    columns: dict[str, list] = {}
    with open(tmp_path / "csv" / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if value and key not in ("step", "epoch", "train/images_per_second"):
                    columns.setdefault(key, []).append((int(row["step"]), float(value)))
    return checkpoint, columns


@pytest.mark.parametrize(
    "settings",
    [
        ["trainer.max_epochs=2"],  # 7 batches an epoch: the last fetch of each epoch is short
        ["trainer.max_epochs=2", "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=0.5", STEP_LR],
        ["trainer.max_epochs=3", "trainer.limit_train_batches=5", "+trainer.gradient_clip_algorithm=value"]
        + ["trainer.gradient_clip_val=0.01", EPOCH_LR, "callbacks.lr_monitor.enabled=true"],
        ["trainer.max_epochs=2", "trainer.max_steps=9", EPOCH_LR],  # stops in the second epoch
    ],
    ids=["epochs", "accumulate-clip-step-lr", "limit-clip-value-epoch-lr", "max-steps"],
)
def test_several_steps_per_fetch_take_the_same_steps_as_one(tmp_path, data_root, settings):
    one, one_logged = run(tmp_path / "one", data_root, settings)
    several, several_logged = run(tmp_path / "several", data_root, [*settings, "steps_per_fetch=2"])
    assert several["global_step"] == one["global_step"] > 0
    assert several["epoch"] == one["epoch"]
    for name, weights in one["state_dict"].items():
        assert torch.equal(several["state_dict"][name], weights), name
    for name, state in one["optimizer_states"][0]["state"].items():
        assert torch.equal(several["optimizer_states"][0]["state"][name]["exp_avg"], state["exp_avg"])
    assert several["lr_schedulers"] == one["lr_schedulers"]
    # the same values at the same optimizer steps: val/ at every validation, train/ wherever both
    # logged (at the same steps in the first epoch; later a fetch can straddle a logging step)
    assert several_logged.keys() == one_logged.keys()
    for key, logged in one_logged.items():
        if key not in STEP_METRICS:
            assert [s for s, _ in several_logged[key]] == [s for s, _ in logged], key
            assert [v for _, v in several_logged[key]] == pytest.approx([v for _, v in logged], rel=1e-6), key
            continue
        both = dict(logged).keys() & dict(several_logged[key]).keys()
        assert {1, 3} <= both, key
        assert all(dict(several_logged[key])[s] == pytest.approx(dict(logged)[s], rel=1e-6) for s in both), key


def test_the_same_steps_hold_with_a_fetch_that_a_log_interval_does_not_divide_into_epochs(tmp_path, data_root):
    # 7 batches an epoch, 3 per fetch: from the second epoch on, fetches straddle the logging steps
    one, one_logged = run(tmp_path / "one", data_root, ["trainer.max_epochs=3", "trainer.log_every_n_steps=3"])
    several, several_logged = run(
        tmp_path / "several", data_root, ["trainer.max_epochs=3", "trainer.log_every_n_steps=3", "steps_per_fetch=3"]
    )
    assert all(torch.equal(several["state_dict"][k], v) for k, v in one["state_dict"].items())
    steps_one = [step for step, _ in one_logged["train/loss"]]
    steps_several = [step for step, _ in several_logged["train/loss"]]
    assert steps_one == [2, 5, 8, 11, 14, 17, 20]
    # each logging step is in a fetch that ends there or at most 2 steps later; it logs that last step
    assert len(steps_several) == len(steps_one)
    assert all(0 <= b - a <= 2 for a, b in zip(steps_one, steps_several, strict=True))
    assert several_logged["val/elbo"] == one_logged["val/elbo"]  # the same steps, the same values


def test_a_resumed_run_continues_exactly(tmp_path, data_root):
    args = [*SAME_RUN, "steps_per_fetch=2", "data.binarize=dynamic"]  # the data's bits are drawn too
    whole = train(compose([*args, "trainer.max_epochs=3"], output_dir=tmp_path / "whole", data_root=data_root))
    first = compose([*args, "trainer.max_epochs=2"], output_dir=tmp_path / "part", data_root=data_root)
    train(first)
    rest = train(
        compose(
            [*args, "trainer.max_epochs=3", f"resume={tmp_path / 'part'}"],
            output_dir=tmp_path / "part",
            data_root=data_root,
        )
    )
    expected = torch.load(whole.last_checkpoint, weights_only=True)
    resumed = torch.load(rest.last_checkpoint, weights_only=True)
    assert resumed["global_step"] == expected["global_step"] == 21
    for name, weights in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weights), name


@pytest.mark.parametrize("first, then", [(2, 1), (1, 3)])
def test_a_run_continues_with_another_number_of_steps_per_fetch(tmp_path, data_root, first, then):
    whole, _ = run(tmp_path / "whole", data_root, ["trainer.max_epochs=2"])
    run(tmp_path / "part", data_root, [f"steps_per_fetch={first}"])  # 1 epoch
    overrides = [*SAME_RUN, "trainer.max_epochs=2", f"steps_per_fetch={then}", f"resume={tmp_path / 'part'}"]
    part = compose(overrides, output_dir=tmp_path / "part", data_root=data_root)
    resumed = torch.load(train(part).last_checkpoint, weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == 14  # counted on, whichever loop wrote the first epoch
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in whole["state_dict"].items())


@pytest.mark.parametrize(
    "overrides, lowered",
    [
        (["trainer.log_every_n_steps=6"], "steps_per_fetch=4 lowered to 2 by trainer.log_every_n_steps=6"),
        (["+trainer.val_check_interval=4"], "steps_per_fetch=4 lowered to 1 by trainer.val_check_interval=4"),
        (["trainer.gradient_clip_val=1", "trainer.precision=16-mixed"], "lowered to 1 by trainer.gradient_clip_val"),
    ],
)
def test_settings_that_need_fewer_steps_per_fetch_lower_it(overrides, lowered):
    from vaelab.inner_steps import plan

    trainer = compose([*FAST, "trainer.log_every_n_steps=4", *overrides]).trainer
    inner, instead, note = plan(4, trainer, 32)
    assert lowered in note
    assert (inner.steps_per_fetch if inner else 1) == int(lowered.split("lowered to ")[1].split()[0])
    assert instead.get("log_every_n_steps", 1) == 1  # vaelab's logging steps, not Lightning's, when several


def test_a_lowered_steps_per_fetch_is_said_in_the_run_log(tmp_path, data_root):
    result = train_cli(*FAST, f"data.root={data_root}", "logger=none", "steps_per_fetch=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "steps_per_fetch=4 lowered to 1 by trainer.log_every_n_steps=1" in result.stdout + result.stderr


def test_the_nan_guard_stops_before_the_step_inside_a_fetch(tmp_path, data_root, monkeypatch):
    from vaelab.objectives import Objective

    forward = Objective.forward

    def poisoned(self, x, decoder_output, mean, logvar, step, **kwargs):
        terms = forward(self, x, decoder_output, mean, logvar, step, **kwargs)
        if self.training and step == 9:  # the second step of the second epoch's first fetch of 4
            terms["recon"] = terms["recon"] * float("inf")
            terms["loss"] = terms["recon"] + terms["kl"]
        return terms

    monkeypatch.setattr(Objective, "forward", poisoned)
    overrides = [*FAST, "trainer.max_epochs=3", "logger=none", "steps_per_fetch=4", "trainer.log_every_n_steps=4"]
    cfg = compose(overrides, output_dir=tmp_path, data_root=data_root)
    with pytest.raises(NonFiniteError, match=r"step 9: the training loss is not finite \(recon=inf\)"):
        train(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 7
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_images_per_second_and_the_epoch_are_logged_under_several_steps(tmp_path, data_root):
    run(tmp_path, data_root, ["trainer.max_epochs=1", "steps_per_fetch=2"])
    with open(tmp_path / "csv" / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    assert [int(row["step"]) for row in rows] == [1, 3, 5]
    assert all(float(row["train/images_per_second"]) > 0 and row["epoch"] == "0" for row in rows)


def test_steps_per_fetch_is_checked_before_anything_starts():
    with pytest.raises(ConfigError, match="steps_per_fetch=-1 is not allowed"):
        from vaelab.config import validate

        validate(compose(["steps_per_fetch=-1"]))
