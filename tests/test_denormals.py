"""Subnormal floats flushed to zero while training (vaelab/denormals.py): on every thread torch
computes with, with the weights Adam gives unchanged, and the flags as before once training ends."""

import lightning as L
import pytest
import torch
from helpers import FAST, compose, python_cli

from vaelab.denormals import flush_denormals, flushed_share
from vaelab.training import train

pytestmark = pytest.mark.skipif(
    not torch.set_flush_denormal(False), reason="torch cannot set this CPU's flush-to-zero mode"
)


def subnormals(values: torch.Tensor) -> int:
    """How many entries are subnormal, read from the bits (a float comparison would flush them)."""
    exponent_bits = values.view(torch.int32) & 0x7F800000
    return int(((exponent_bits == 0) & (values.view(torch.int32) & 0x7FFFFFFF != 0)).sum())


THREADS_STARTED_FIRST = """
import torch
torch.set_num_threads(2)
torch.ones(1_000_000).mul(2)  # torch's OpenMP threads start before any flag is set
from vaelab.denormals import flush_denormals, flushed_share
torch.set_flush_denormal(True)
main_thread_only = flushed_share()
torch.set_flush_denormal(False)
with flush_denormals():
    inside = flushed_share()
    moments = torch.full((313600,), 2.0 ** -126)
    moments.mul_(0.9)  # each result is subnormal, or zero where the thread flushes
    left = int((moments.view(torch.int32) != 0).sum())
print(main_thread_only, inside, left, flushed_share())
"""


def test_every_intra_op_thread_flushes_and_the_flags_come_back():
    result = python_cli("-c", THREADS_STARTED_FIRST, timeout=120)
    assert result.returncode == 0, result.stderr
    main_thread_only, inside, left, after = result.stdout.split()
    assert float(main_thread_only) < 1.0  # torch.set_flush_denormal alone misses the worker thread
    assert float(inside) == 1.0 and int(left) == 0
    assert float(after) == 0.0


def adam_weights_and_moments(flush: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A (100, 100) weight after 900 fused Adam steps in which half its entries get no gradient
    after the first step: their first moments shrink by 0.9 per step into the subnormal range."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(0.05 * torch.randn(100, 100, generator=generator))
    optimizer = torch.optim.Adam([weight], lr=1e-3, fused=True)
    used = torch.arange(100) < 50
    with flush_denormals(flush):
        for step in range(900):
            gradient = torch.randn(100, 100, generator=generator)
            weight.grad = gradient if step == 0 else gradient * used.unsqueeze(1)
            optimizer.step()
    return weight.detach().clone(), optimizer.state[weight]["exp_avg"].clone()


def test_adam_steps_from_subnormal_moments_move_no_weight():
    kept_weight, kept_moments = adam_weights_and_moments(flush=False)
    flushed_weight, flushed_moments = adam_weights_and_moments(flush=True)
    assert subnormals(kept_moments[50:]) > 4000  # the unused half is in the subnormal range
    assert subnormals(flushed_moments) == 0 and torch.equal(flushed_moments[:50], kept_moments[:50])
    assert torch.equal(flushed_weight, kept_weight)  # the same weights, bit for bit
    assert flushed_share() == 0.0


class FlagsProbe(L.Callback):
    """Records, at each training batch, the share of threads that flush subnormal floats."""

    seen: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        FlagsProbe.seen.append(flushed_share())


@pytest.mark.parametrize("setting, expected", [([], 1.0), (["callbacks.flush_denormals=null"], 0.0)])
def test_training_flushes_subnormals_unless_switched_off(setting, expected, tmp_path, data_root):
    FlagsProbe.seen = []
    overrides = [*FAST, "logger=csv", "callbacks.image_panels=null", "test=false", *setting]
    train(
        compose(
            [*overrides, "+callbacks.probe._target_=test_denormals.FlagsProbe"],
            output_dir=tmp_path,
            data_root=data_root,
        )
    )
    assert FlagsProbe.seen and set(FlagsProbe.seen) == {expected}
    assert flushed_share() == 0.0  # as before the run
