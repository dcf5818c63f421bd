"""(a): vaelab through Lightning, timed alone (StepTimer) and in lockstep with (b) and (b')
(Lockstep), against a copy of its own network (SameNetLockstep), and part by part (SimpleProfiler)."""

from __future__ import annotations

import copy
import os
import time
import timeit
from pathlib import Path

import lightning as L
import torch

from benchmarks import BATCH
from benchmarks.plain import Meter, binarizer, in_memory_batches, plain_model, plain_step, synchronize


class StepTimer(L.Callback):
    """Feeds a Meter from Lightning's training steps; the last one made is StepTimer.last."""

    last: Meter | None = None

    def __init__(self, warmup: int = 20):
        self.meter = StepTimer.last = Meter(warmup)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.meter.step(len(batch[0]))


class Lockstep(L.Callback):
    """After each of vaelab's training steps, one step of each plain loop ((b) and (b')), each timed.

    The paths then run under the same machine conditions, step by step, which a shared
    machine's slow spells (seconds to minutes long) cannot tilt. (a)'s time is the interval
    between its batch starts minus the plain steps inside it, so it keeps the data fetch, the
    logging steps, the progress bar and the epoch-end checkpoint. Set Lockstep.images first (and
    Lockstep.device, where the plain loops run: on CUDA every path's time is read after waiting
    for its queued work); the last one made is Lockstep.last. Subclasses give other plain loops
    (``plain_steps``)."""

    images: torch.Tensor | None = None
    device: str = "cpu"
    last: Lockstep | None = None

    def __init__(self, warmup: int = 20):
        self.warmup, self.steps, self.started, self.inside = warmup, 0, None, 0.0
        self.plain: dict = {}  # name -> a function doing one step of that loop
        self.seconds, self.images = {"a": 0.0}, {"a": 0}
        self.batch = BATCH  # images per step of the plain loops
        self.fetched = 0  # images in (a)'s latest Lightning step (several batches under steps_per_fetch)
        type(self).last = self

    @staticmethod
    def endless(batches):
        while True:
            yield from batches()

    def plain_steps(self, trainer, pl_module) -> dict:
        """(b) and (b'): the pytorch/examples VAE with the default Adam and torch.bernoulli, and
        with the fused Adam and vaelab's draw_bits."""
        steps = {}
        for name, fused in (("b", None), ("b_fused", True)):
            model, optimizer = plain_model(fused, Lockstep.device)
            batches = self.endless(in_memory_batches(Lockstep.images, Lockstep.device))
            binarize = binarizer(fused)
            steps[name] = lambda model=model, optimizer=optimizer, batches=batches, binarize=binarize: plain_step(
                model, optimizer, next(batches), binarize
            )
        return steps

    def on_train_start(self, trainer, pl_module) -> None:
        self.plain = self.plain_steps(trainer, pl_module)
        self.seconds.update(dict.fromkeys(self.plain, 0.0))
        self.images.update(dict.fromkeys(self.plain, 0))

    def count(self, name: str, seconds: float, images: int) -> None:
        if self.steps > self.warmup:
            self.seconds[name] += seconds
            self.images[name] += images

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        synchronize(Lockstep.device)
        now = time.perf_counter()
        if self.started is not None:
            self.count("a", now - self.started - self.inside, self.fetched)
        self.started, self.inside = now, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """After (a)'s Lightning step, as many steps of each plain loop as (a) took batches."""
        synchronize(Lockstep.device)  # (a)'s queued work belongs to (a)
        self.fetched = len(batch[0])
        batches = -(-self.fetched // self.batch)
        self.steps += batches  # warm-up counts batches
        for name, step in self.plain.items():
            for _ in range(batches):
                started = time.perf_counter()
                step()
                synchronize(Lockstep.device)
                seconds = time.perf_counter() - started
                self.inside += seconds
                self.count(name, seconds, self.batch)

    def images_per_second(self) -> dict[str, float]:
        return {name: self.images[name] / self.seconds[name] for name in self.seconds}


class SameNetLockstep(Lockstep):
    """(b_same): a hand-written loop over a copy of vaelab's own network and objective (at beta = 1),
    fed by slices of the data module's training tensor (re-binarized per batch when the data is
    dynamically binarized), with the fused Adam: the same maths as (a) with nothing of Lightning or
    vaelab's training code around it."""

    def plain_steps(self, trainer, pl_module) -> dict:
        from vaelab.data import draw_bits

        vae, objective = copy.deepcopy(pl_module.vae), copy.deepcopy(pl_module.objective)
        optimizer = torch.optim.Adam([*vae.parameters(), *objective.parameters()], lr=1e-3, fused=True)
        datamodule = trainer.datamodule
        images, self.batch = datamodule.train_set.images, datamodule.batch_size  # (N, C, H, W) in [0, 1]
        dynamic = datamodule.binarize == "dynamic"

        def epoch():
            order = torch.randperm(len(images), device=images.device)
            for start in range(0, len(order), self.batch):
                yield images[order[start : start + self.batch]]

        batches = self.endless(epoch)

        def step() -> None:
            x = next(batches)
            x = draw_bits(x) if dynamic else x
            out = vae(x, None)
            loss = objective(x, out.decoder_output, out.mean, out.logvar, 0)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return {"b_same": step}


def lightning_overrides(root: str, epochs: int, work: Path, extra: list[str] = ()) -> list[str]:
    """train.py's default config with validation and test off, for `epochs` epochs, then `extra`."""
    return [
        f"data.root={root}",
        f"trainer.max_epochs={epochs}",
        "trainer.limit_val_batches=0",
        "test=false",
        f"paths.output_dir={work}",
        *extra,
    ]


def compose_train_config(overrides: list[str]):
    """train.py's config with the overrides, its values checked; a bad override is a UserError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from vaelab.cli import CONFIG_DIR, VERSION_BASE
    from vaelab.config import validate
    from vaelab.errors import UserError

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), **VERSION_BASE):
            cfg = compose(config_name="train", overrides=overrides)
    except HydraException as error:
        raise UserError(f"--override: {str(error).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def run_train(overrides: list[str]) -> None:
    from vaelab.training import train

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    train(compose_train_config(overrides))


def bench_lockstep(
    images: torch.Tensor, root: str, epochs: int, warmup: int, work: Path, extra: list[str] = (), device: str = "cpu"
) -> dict[str, float]:
    """(a), (b) and (b') in turn, one step each, for `epochs` epochs of (a): images/s of each.
    With ``device="cuda"`` the plain loops run on the GPU, and ``extra`` should put (a) there too."""
    Lockstep.images, Lockstep.device = images, device
    run_train(
        [
            *lightning_overrides(root, epochs, work, extra),
            "+callbacks.lockstep._target_=benchmarks.through_vaelab.Lockstep",
            f"+callbacks.lockstep.warmup={warmup}",
        ]
    )
    return Lockstep.last.images_per_second()


def bench_lightning(root: str, epochs: int, warmup: int, work: Path, extra: list[str] = ()) -> float:
    """(a): vaelab.training.train with train.py's default config (and `extra` overrides); validation and test off."""
    run_train(
        [
            *lightning_overrides(root, epochs, work, extra),
            "+callbacks.bench_timer._target_=benchmarks.through_vaelab.StepTimer",
            f"+callbacks.bench_timer.warmup={warmup}",
        ]
    )
    return StepTimer.last.images_per_second


class ProfileKeeper(L.Callback):
    """Keeps a copy of the SimpleProfiler's recorded durations when training ends: ProfileKeeper.last."""

    last: dict[str, list[float]] = {}

    def on_train_end(self, trainer, pl_module) -> None:
        ProfileKeeper.last = {action: list(times) for action, times in trainer.profiler.recorded_durations.items()}


def bench_step_profile(root: str, epochs: int, work: Path, extra: list[str] = ()) -> dict[str, float]:
    """Where (a)'s training step goes, from Lightning's SimpleProfiler over ``epochs`` epochs of
    train.py's config (validation off): microseconds per step of the data fetch, the forward pass
    and loss (training_step), the backward pass, the optimizer step itself (Adam, with the hooks
    Lightning runs inside it), each callback (all of its hooks), the LightningModule's hooks,
    and Lightning's loop (the rest of the epoch's time), plus ``step`` (their total).
    The profiler's own clock reads add about 1 µs per hook call."""
    run_train(
        [
            *lightning_overrides(root, epochs, work, extra),
            "+trainer.profiler._target_=lightning.pytorch.profilers.SimpleProfiler",
            "+callbacks.profile_keeper._target_=benchmarks.through_vaelab.ProfileKeeper",
        ]
    )
    recorded = ProfileKeeper.last
    steps = len(recorded["run_training_batch"])
    # the actions run once or more per step (not set-up or epoch hooks), and their seconds
    per_step_actions = {action: sum(times) for action, times in recorded.items() if len(times) >= steps}
    module = "[LightningModule]VAELitModule"
    strategy = next(k.split(".")[0] for k in per_step_actions if k.startswith("[Strategy]"))
    forward = per_step_actions[f"{strategy}.training_step"]
    backward = per_step_actions[f"{strategy}.backward"]
    fetch = per_step_actions["[_TrainingEpochLoop].train_dataloader_next"] + per_step_actions.get(
        f"{strategy}.batch_to_device", 0.0
    )
    # the hooks Lightning runs inside the optimizer step's closure, which its time includes
    inside_hooks = (".on_before_backward", ".on_after_backward", ".on_before_optimizer_step", ".on_before_zero_grad")
    inside_module = (f"{module}.optimizer_zero_grad", f"{module}.configure_gradient_clipping")
    inside = sum(
        seconds
        for action, seconds in per_step_actions.items()
        if (action.startswith("[Callback]") and action.endswith(inside_hooks)) or action in inside_module
    )
    callbacks = {}
    for action, seconds in per_step_actions.items():
        if action.startswith("[Callback]") and not action.startswith("[Callback]ProfileKeeper"):
            name = action[len("[Callback]") :].split("{")[0].split(".")[0]
            callbacks[name] = callbacks.get(name, 0.0) + seconds
    module_hooks = sum(
        v for k, v in per_step_actions.items() if k.startswith(module) and k != f"{module}.optimizer_step"
    )
    parts = {
        "data fetch": fetch,
        "forward and loss (training_step)": forward,
        "backward": backward,
        "optimizer step (Adam and Lightning's wrapping)": per_step_actions[f"{module}.optimizer_step"]
        - forward
        - backward
        - inside,
        **{f"callback {name}": seconds for name, seconds in sorted(callbacks.items(), key=lambda kv: -kv[1])},
        "LightningModule hooks": module_hooks,
    }
    parts["Lightning's loop (the rest)"] = sum(recorded["run_training_epoch"]) - sum(parts.values())
    per_step = {name: 1e6 * seconds / steps for name, seconds in parts.items()}
    per_step["step"] = 1e6 * sum(recorded["run_training_epoch"]) / steps
    return per_step


def bench_same_net(root: str, epochs: int, warmup: int, work: Path, settings: list[str]) -> dict[str, float]:
    """(a) with train.py's config and ``settings`` in lockstep with (b_same), a plain loop over a
    copy of the same network and objective: images/s of each and their ratio."""
    run_train(
        [
            *lightning_overrides(root, epochs, work),
            *settings,
            "+callbacks.lockstep._target_=benchmarks.through_vaelab.SameNetLockstep",
            f"+callbacks.lockstep.warmup={warmup}",
        ]
    )
    speeds = SameNetLockstep.last.images_per_second()
    return {**speeds, "a_over_b_same": speeds["a"] / speeds["b_same"], "batch_size": SameNetLockstep.last.batch}


class HookDispatch(L.Callback):
    """When training ends, times the three hooks of an optimizer step (``on_before_backward``,
    ``on_after_backward``, ``on_before_optimizer_step``, each on the callbacks and then the module)
    through Lightning's own dispatch and through vaelab's (``vaelab.profiling.skip_undefined_hooks``),
    in turn: µs per optimizer step of each, in HookDispatch.last. The gradients are None by then,
    so the NaN guard's call does its check of the loss terms only, in both."""

    last: dict[str, float] = {}

    def __init__(self, calls: int = 5000, repeats: int = 5):
        self.calls, self.repeats = calls, repeats

    def on_train_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.trainer import call

        vaelab_dispatch = (call._call_callback_hooks, call._call_lightning_module_hook)
        dispatchers = {"vaelab": vaelab_dispatch, "lightning": tuple(f.lightning for f in vaelab_dispatch)}
        loss, optimizer = torch.zeros((), requires_grad=True), pl_module.optimizers()
        hooks = (("on_before_backward", (loss,)), ("on_after_backward", ()), ("on_before_optimizer_step", (optimizer,)))

        def one_step(callbacks_hook, module_hook) -> None:
            for hook, args in hooks:
                callbacks_hook(trainer, hook, *args)
                module_hook(trainer, hook, *args)

        best = dict.fromkeys(dispatchers, float("inf"))
        for _ in range(self.repeats):  # in turn, so that a slow spell of the machine hits both
            for name, dispatch in dispatchers.items():
                seconds = timeit.timeit(lambda dispatch=dispatch: one_step(*dispatch), number=self.calls)
                best[name] = min(best[name], seconds / self.calls)
        HookDispatch.last = {f"{name}_microseconds": 1e6 * s for name, s in best.items()}
        HookDispatch.last["callbacks"] = len(trainer.callbacks)


def bench_hook_dispatch(root: str, work: Path) -> dict[str, float]:
    """The three hooks of an optimizer step through Lightning's dispatch and through vaelab's, after
    a short run of train.py's config (its callbacks, and HookDispatch): µs per step of each."""
    run_train(
        [
            *lightning_overrides(root, 1, work),
            "trainer.limit_train_batches=20",
            "+callbacks.hook_dispatch._target_=benchmarks.through_vaelab.HookDispatch",
        ]
    )
    return HookDispatch.last
