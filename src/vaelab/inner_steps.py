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

import math
from dataclasses import dataclass

from vaelab.errors import ConfigError


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
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop")
    if not fit_loop:
        return
    automatic = fit_loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
    manual_steps = fit_loop.get("epoch_loop.manual_optimization.optim_step_progress")
    if not automatic or manual_steps is None:
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
