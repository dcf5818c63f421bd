"""KL-weight schedules: functions of the optimizer's global step that return a weight in [0, 1].

They read nothing but the step, so a run resumed from a checkpoint (which restores the
global step) continues the schedule exactly where it stopped. The KL term's weight at
step t is ``model.beta * schedule(t)``.
"""

from __future__ import annotations

import math

from vaelab.errors import ConfigError


class Constant:
    """w(t) = 1: no annealing."""

    def __call__(self, step: int) -> float:
        return 1.0


class Linear:
    """Linear warm-up: w(t) = start + (1 - start) * min(1, t / warmup_steps)."""

    def __init__(self, warmup_steps: int = 10_000, start: float = 0.0):
        if warmup_steps < 1:
            raise ConfigError(f"annealing.warmup_steps must be >= 1, got {warmup_steps}")
        if not 0.0 <= start <= 1.0:
            raise ConfigError(f"annealing.start must be in [0, 1], got {start}")
        self.warmup_steps = warmup_steps
        self.start = start

    def __call__(self, step: int) -> float:
        return self.start + (1.0 - self.start) * min(1.0, step / self.warmup_steps)


class Cyclical:
    """Cyclical annealing (Fu et al. 2019, NAACL): ``cycles`` cycles over ``total_steps``.

    Within each cycle of length T/M the weight rises linearly from 0 to 1 over the first
    fraction ``ratio`` (R) of the cycle and stays at 1 for the rest. From ``total_steps`` on
    the weight is 1.
    """

    def __init__(self, total_steps: int = 20_000, cycles: int = 4, ratio: float = 0.5):
        if total_steps < 1 or cycles < 1:
            raise ConfigError(f"annealing.total_steps and annealing.cycles must be >= 1, got {total_steps}, {cycles}")
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"annealing.ratio must be in (0, 1], got {ratio}")
        self.total_steps = total_steps
        self.cycles = cycles
        self.ratio = ratio

    def __call__(self, step: int) -> float:
        if step >= self.total_steps:
            return 1.0
        period = self.total_steps / self.cycles
        tau = (step % period) / period
        return min(1.0, tau / self.ratio)


class Sigmoid:
    """Logistic warm-up (Bowman et al. 2016): w(t) = 1 / (1 + exp(-steepness * (t - midpoint_steps)))."""

    def __init__(self, midpoint_steps: int = 5_000, steepness: float = 0.002):
        if steepness <= 0:
            raise ConfigError(f"annealing.steepness must be > 0, got {steepness}")
        self.midpoint_steps = midpoint_steps
        self.steepness = steepness

    def __call__(self, step: int) -> float:
        x = -self.steepness * (step - self.midpoint_steps)
        return 0.0 if x > 700 else 1.0 / (1.0 + math.exp(x))


def capacity_target(step: int, max_nats: float, ramp_steps: int) -> float:
    """Target KL C(t) of the capacity-controlled beta-VAE (Burgess et al. 2018): 0 -> max_nats linearly."""
    return max_nats * min(1.0, step / max(ramp_steps, 1))
