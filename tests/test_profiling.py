"""The Trainer's profiler: a no-op one when the config names none, the named one otherwise; under
the no-op one Lightning calls a per-batch hook only where something defines it."""

import ast
import inspect
import pickle
import textwrap

import lightning as L
import pytest
import torch
from helpers import FAST, compose
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.profilers import PassThroughProfiler

import vaelab.training
from vaelab.profiling import PER_BATCH_HOOKS, NoProfiler
from vaelab.training import train


def test_without_a_profiler_the_hooks_run_under_one_shared_no_op_context(monkeypatch, tmp_path, data_root):
    seen = {}
    fit = vaelab.training.fit

    def fit_and_look(trainer, *args):
        seen["profiler"] = trainer.profiler
        fit(trainer, *args)
        seen["steps"] = trainer.global_step

    monkeypatch.setattr(vaelab.training, "fit", fit_and_look)
    train(compose([*FAST, "logger=none", "test=false"], output_dir=tmp_path, data_root=data_root))
    profiler = seen["profiler"]
    assert isinstance(profiler, NoProfiler) and seen["steps"] > 0
    assert profiler.profile("[Callback]NaNGuard.on_before_backward") is profiler.profile("run_training_batch")
    with profiler.profile("x"):
        pass
    # ddp_spawn pickles the Trainer, its profiler with it
    assert isinstance(pickle.loads(pickle.dumps(profiler)).profile("x"), type(profiler.profile("x")))


def test_a_named_profiler_still_records_every_callback_hook(tmp_path, data_root):
    overrides = [
        "+trainer.profiler._target_=lightning.pytorch.profilers.SimpleProfiler",
        f"+trainer.profiler.dirpath={tmp_path / 'profile'}",
        "+trainer.profiler.filename=steps",
    ]
    train(compose([*FAST, "logger=none", "test=false", *overrides], output_dir=tmp_path / "run", data_root=data_root))
    report = (tmp_path / "profile" / "fit-steps.txt").read_text()
    for hook in ("on_before_backward", "on_after_backward", "on_before_optimizer_step"):
        assert f"[Callback]NaNGuard.{hook}" in report and f"[LightningModule]VAELitModule.{hook}" in report


PER_STEP = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class Counting(L.Callback):
    """Counts its per-step hooks and logs from one of them (which needs Lightning's current hook name)."""

    def __init__(self):
        self.calls = dict.fromkeys(PER_STEP, 0)

    def on_before_backward(self, trainer, pl_module, loss):
        assert loss.requires_grad
        self.calls["on_before_backward"] += 1

    def on_after_backward(self, trainer, pl_module):
        self.calls["on_after_backward"] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        assert all(p.grad is not None for group in optimizer.param_groups for p in group["params"])
        self.calls["on_before_optimizer_step"] += 1
        pl_module.log("counted_steps", float(self.calls["on_before_optimizer_step"]), on_step=True, on_epoch=False)


class Watching(L.Callback):
    """Defines no hook of its own, and records every hook Lightning looks up on it."""

    def __init__(self):
        self.looked_up = set()

    def __getattribute__(self, name):
        if name.startswith("on_"):
            object.__getattribute__(self, "looked_up").add(name)
        return object.__getattribute__(self, name)


def run_with(tmp_path, data_root, overrides, *callbacks):
    """A short run with ``callbacks`` added to train.py's; (the Trainer, the VAE's final weights)."""
    seen = {}
    fit = vaelab.training.fit

    def fit_with_callbacks(trainer, *args):
        trainer.callbacks.extend(callbacks)
        fit(trainer, *args)
        seen["trainer"] = trainer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vaelab.training, "fit", fit_with_callbacks)
        train(compose([*FAST, "logger=none", "test=false", *overrides], output_dir=tmp_path, data_root=data_root))
    trainer = seen["trainer"]
    return trainer, {k: v.clone() for k, v in trainer.lightning_module.vae.state_dict().items()}


# one optimizer step per Lightning step (automatic optimization), and four (manual)
STEPPING = {"one": [], "four": ["steps_per_fetch=4", "trainer.log_every_n_steps=4"]}


@pytest.mark.parametrize("stepping", STEPPING)
def test_without_a_profiler_only_the_callbacks_that_define_a_per_step_hook_are_called(tmp_path, data_root, stepping):
    counting, watching = Counting(), Watching()
    trainer, _ = run_with(tmp_path, data_root, STEPPING[stepping], counting, watching)
    assert isinstance(trainer.profiler, NoProfiler)
    assert trainer.global_step > 4 and counting.calls == dict.fromkeys(PER_STEP, trainer.global_step)
    assert float(trainer.callback_metrics["counted_steps"]) == trainer.global_step  # logged from inside a hook
    assert not watching.looked_up & PER_BATCH_HOOKS  # never looked up, so never called
    assert "on_train_epoch_start" in watching.looked_up  # the other hooks as Lightning calls them


@pytest.mark.parametrize("stepping", STEPPING)
def test_a_named_profiler_calls_every_callback_and_trains_the_same_weights(tmp_path, data_root, stepping):
    _, skipping = run_with(tmp_path / "skipping", data_root, STEPPING[stepping])
    watching = Watching()
    passthrough = ["+trainer.profiler._target_=lightning.pytorch.profilers.PassThroughProfiler"]
    trainer, every = run_with(tmp_path / "every", data_root, [*STEPPING[stepping], *passthrough], watching)
    assert type(trainer.profiler) is PassThroughProfiler
    assert set(PER_STEP) <= watching.looked_up
    assert skipping.keys() == every.keys() and all(torch.equal(skipping[k], every[k]) for k in every)


@pytest.mark.parametrize("base", [Callback, LightningModule], ids=lambda base: base.__name__)
def test_the_hooks_skipped_do_nothing_in_lightning(base):
    """The skip is exact only while Lightning's own versions of these hooks do nothing."""
    for hook in PER_BATCH_HOOKS:
        source = textwrap.dedent(inspect.getsource(getattr(base, hook)))
        body = ast.parse(source).body[0].body
        statements = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        assert all(isinstance(s, ast.Pass) for s in statements), f"{base.__name__}.{hook} does something"
