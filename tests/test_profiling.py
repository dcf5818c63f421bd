"""The Trainer's profiler: a no-op one when the config names none, the named one otherwise."""

import pickle

from helpers import FAST, compose

import vaelab.training
from vaelab.profiling import NoProfiler
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
