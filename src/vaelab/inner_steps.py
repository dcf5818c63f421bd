"""Several optimizer steps per Lightning training step (``steps_per_fetch``).

Lightning spends a fixed time on every training step whatever its size: the loop, hook dispatch,
the fetcher, optimizer wrapping (about 1.5 ms on a CPU, docs/benchmarks.md). Where the maths is
cheap that is a third of the step. With ``steps_per_fetch=K`` the data module hands over K
batches at once (one (K*B, C, H, W) tensor, the same images in the same order as K batches of B)
and the module takes an optimizer step on each in turn under Lightning's manual optimization;
the fixed cost is then paid once per K steps.

Every Trainer setting keeps its meaning in batches and optimizer steps. Lightning leaves
``accumulate_grad_batches`` and ``gradient_clip_val`` (and ``_algorithm``) to a manually
optimized module, so ``plan`` takes them off the Trainer's arguments and the module applies
them; a ``limit_train_batches`` count is translated into fetches; ``max_steps`` stops inside a
fetch. ``global_step`` counts optimizer steps and so does the loggers' step axis, and the
train/ metrics are logged at the steps they would be (``log_every_n_steps``) as long as the
fetches line up with them; from an epoch whose start they do not, at the end of the fetch that
holds the logging step. With the same data order and random draws, K steps per fetch and one
give the same weights bit for bit (tests/test_inner_steps.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vaelab.errors import ConfigError

if TYPE_CHECKING:  # read by config validation before torch is imported: annotations only
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InnerSteps:
    """What the module needs to take several optimizer steps per Lightning step.

    steps_per_fetch: optimizer steps per fetched batch (K).
    accumulate: batches per optimizer step (the Trainer's accumulate_grad_batches).
    batch_size: images per batch (B); a fetch holds up to K * accumulate * B images.
    clip_val, clip_algorithm: the Trainer's gradient clipping (None: off).
    batches_per_epoch: the Trainer's limit_train_batches when it is a count, else None.
    log_every_n_steps: the optimizer steps between the steps whose train/ metrics are logged.
    """

    steps_per_fetch: int
    accumulate: int
    batch_size: int
    clip_val: float | None
    clip_algorithm: str | None
    batches_per_epoch: int | None
    log_every_n_steps: int

    @property
    def batches_per_fetch(self) -> int:
        return self.steps_per_fetch * self.accumulate


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plan(steps_per_fetch, trainer: dict, batch_size: int) -> tuple[InnerSteps | None, dict, str]:
    """(the InnerSteps, the arguments to give the Trainer instead of ``trainer``'s, a note) for
    ``steps_per_fetch`` and the Trainer's arguments; (None, {}, note) for one step per fetch.

    ``steps_per_fetch`` is a most: the steps per fetch divide ``trainer.log_every_n_steps`` (so
    that the logging steps are as without it), and are 1 under a ``val_check_interval`` (counted
    in fetches it would move the validations) and under float16 clipping (Lightning unscales
    float16 gradients inside the optimizer step, after vaelab could clip them). The note says
    which setting lowered it ("" when none did). Anything but an integer >= 1 is a ConfigError."""
    if not is_count(steps_per_fetch) or steps_per_fetch < 1:
        raise ConfigError(f"steps_per_fetch={steps_per_fetch} is not allowed: an integer >= 1")
    log_every = int(trainer.get("log_every_n_steps", 50))
    clip_val = float(trainer.get("gradient_clip_val") or 0) or None
    precision = str(trainer.get("precision", "32-true"))
    interval = trainer.get("val_check_interval")
    steps, reason = math.gcd(steps_per_fetch, log_every), f"trainer.log_every_n_steps={log_every}"
    if interval is not None and interval != 1.0:
        steps, reason = 1, f"trainer.val_check_interval={interval}"
    elif clip_val and precision.startswith("16"):
        steps, reason = 1, f"trainer.gradient_clip_val with trainer.precision={precision}"
    note = f"steps_per_fetch={steps_per_fetch} lowered to {steps} by {reason}" if steps < steps_per_fetch else ""
    if steps == 1:
        return None, {}, note
    accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    instead: dict = {
        "accumulate_grad_batches": 1,
        "gradient_clip_val": None,
        "log_every_n_steps": 1,  # vaelab picks the logging steps (InnerSteps.log_every_n_steps)
    }
    if "gradient_clip_algorithm" in trainer:
        instead["gradient_clip_algorithm"] = None
    limit = trainer.get("limit_train_batches")
    if is_count(limit):
        instead["limit_train_batches"] = math.ceil(limit / (steps * accumulate))
    inner = InnerSteps(
        steps_per_fetch=steps,
        accumulate=accumulate,
        batch_size=batch_size,
        clip_val=clip_val,
        clip_algorithm=trainer.get("gradient_clip_algorithm") if clip_val else None,
        batches_per_epoch=limit if is_count(limit) else None,
        log_every_n_steps=log_every,
    )
    return inner, instead, note


def crosses_logging_step(first_step: int, last_step: int, every: int) -> bool:
    """Whether optimizer steps first_step..last_step (0-based, inclusive) hold one that Lightning
    would log at (a step s with (s + 1) % every == 0)."""
    return (last_step + 1) // every > first_step // every


def carry_step_count(checkpoint: dict, manual: bool) -> None:
    """Let a run continue a checkpoint written with the other loop (one step per fetch against
    several): Lightning counts the optimizer steps of automatic and manual optimization apart and
    would start ``global_step`` again at 0, so copy the count into the loop this run uses."""
    try:
        fit_loop = checkpoint["loops"]["fit_loop"]
        automatic = fit_loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
        manual_steps = fit_loop["epoch_loop.manual_optimization.optim_step_progress"]
        automatic["step"]["total"]["completed"], manual_steps["total"]["completed"]  # noqa: B018 - present?
    except (KeyError, TypeError):  # not Lightning's layout: left to Lightning's own restore to refuse
        return
    step = automatic["step"]
    if manual and not manual_steps["total"]["completed"] and step["total"]["completed"]:
        for part in ("total", "current"):
            manual_steps[part] = {key: step[part][key] for key in ("ready", "completed")}
    elif not manual and manual_steps["total"]["completed"] and not step["total"]["completed"]:
        for part in ("total", "current"):
            counts = {key: manual_steps[part][key] for key in ("ready", "completed")}
            step[part] = dict(counts)
            automatic["zero_grad"][part] = {**counts, "started": counts["completed"]}


def take_steps(module, batch, batch_idx: int) -> torch.Tensor | None:
    """The training step of ``module`` (a VAELitModule after ``use_inner_steps``): optimizer steps
    on the batches of one fetch (x: (K * A * B, C, H, W), y: (K * A * B,)), in order, each over
    ``accumulate`` batches of ``batch_size`` images, as Lightning's automatic optimization would
    take them one Lightning step at a time: the loss scaled by 1 / accumulate, the clipping in
    ``on_before_optimizer_step`` (after the NaN guard's check), step-interval schedulers stepped
    after each optimizer step. Stops at trainer.max_steps and at a limit_train_batches count.
    Returns the last batch's loss (nats per image, detached), or None when no step was taken."""
    inner, trainer = module.inner, module.trainer
    x, y = batch
    chunks = list(zip(x.split(inner.batch_size), y.split(inner.batch_size), strict=True))
    if inner.batches_per_epoch is not None:  # limit_train_batches counts batches, not fetches
        chunks = chunks[: max(0, inner.batches_per_epoch - batch_idx * inner.batches_per_fetch)]
    optimizer = module.optimizers()
    schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.interval == "step"]
    first_step, steps, images, terms = module.global_step, 0, 0, None
    for index, chunk in enumerate(chunks):
        if 0 <= trainer.max_steps <= module.global_step:
            break
        terms = module.batch_terms(chunk, "train")
        module.last_terms = terms
        images += len(chunk[0])
        loss = terms["loss"] / inner.accumulate if inner.accumulate > 1 else terms["loss"]
        module.manual_backward(loss)
        if (index + 1) % inner.accumulate and index + 1 < len(chunks):
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for scheduler in schedulers:
            scheduler.step()
        steps += 1
    module.images_last_step = images * trainer.world_size
    module.fetch_ended_epoch = batch_idx + 1 >= trainer.num_training_batches  # epoch schedulers step then
    if steps > 1:  # Lightning adds the last one: its logging step counts optimizer steps
        advance_logging_step(trainer, steps - 1)
    last_step = first_step + max(steps, 1) - 1
    module.inner_logs_now = bool(
        trainer.fast_dev_run
        or trainer.should_stop
        or crosses_logging_step(first_step, last_step, inner.log_every_n_steps)
    )
    if terms is None:
        return None
    if module.inner_logs_now:
        module.log_train_metrics({f"train/{name}": value for name, value in terms.items()})
    return terms["loss"].detach()


def advance_logging_step(trainer, steps: int) -> int:
    """Count ``steps`` more optimizer steps in the step that Lightning logs at and decides the
    logging steps by (``fit_loop.epoch_loop._batches_that_stepped``, a private counter that
    Lightning saves in the checkpoint and advances by one per Lightning step), and return it; an
    upgrade that removes it stops here with a message saying so."""
    epoch_loop = trainer.fit_loop.epoch_loop
    if not isinstance(getattr(epoch_loop, "_batches_that_stepped", None), int):
        import lightning

        raise RuntimeError(
            f"Lightning {lightning.__version__} has no fit_loop.epoch_loop._batches_that_stepped, which vaelab "
            "advances under steps_per_fetch > 1 (vaelab/inner_steps.py)"
        )
    epoch_loop._batches_that_stepped += steps
    return epoch_loop._batches_that_stepped


def warn_if_an_epoch_logs_nothing(module) -> None:
    """Lightning's warning that an epoch has fewer batches than the logging interval, which it
    cannot give under steps_per_fetch: it sees fetches, and vaelab has it log every one."""
    batches = math.ceil(
        len(module.trainer.train_dataloader.dataset) / (module.inner.batch_size * module.trainer.world_size)
    )
    if module.inner.batches_per_epoch is not None:
        batches = min(batches, module.inner.batches_per_epoch)
    if batches < module.inner.log_every_n_steps:
        log.warning(
            "The number of training batches (%d) is smaller than the logging interval "
            "trainer.log_every_n_steps=%d: set a lower value to see the train/ metrics of every epoch",
            batches, module.inner.log_every_n_steps,
        )  # fmt: skip
