import pytest

from vaelab.annealing import Constant, Cyclical, Linear, Sigmoid, capacity_target


def test_constant():
    assert [Constant()(s) for s in (0, 10, 10**6)] == [1.0, 1.0, 1.0]


def test_linear_warmup():
    schedule = Linear(warmup_steps=100)
    assert [schedule(s) for s in (0, 25, 50, 100, 1000)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert Linear(warmup_steps=100, start=0.2)(50) == pytest.approx(0.6)


def test_cyclical_follows_fu_et_al():
    # 4 cycles of 100 steps over 400 steps, rising over the first half of each cycle
    schedule = Cyclical(total_steps=400, cycles=4, ratio=0.5)
    assert [schedule(s) for s in (0, 25, 50, 75, 99)] == [0.0, 0.5, 1.0, 1.0, 1.0]
    assert [schedule(s) for s in (100, 125, 150)] == [0.0, 0.5, 1.0]
    assert schedule(325) == 0.5
    assert schedule(400) == schedule(10_000) == 1.0


def test_sigmoid_is_half_at_the_midpoint_and_monotone():
    schedule = Sigmoid(midpoint_steps=1000, steepness=0.01)
    assert schedule(1000) == 0.5
    values = [schedule(s) for s in range(0, 3000, 100)]
    assert values == sorted(values)
    assert values[0] < 1e-4 and values[-1] > 1 - 1e-4
    assert Sigmoid(midpoint_steps=10**6, steepness=1.0)(0) == 0.0  # no overflow


def test_capacity_ramp():
    assert [capacity_target(s, 25.0, 100) for s in (0, 40, 100, 500)] == [0.0, 10.0, 25.0, 25.0]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Linear(warmup_steps=0),
        lambda: Cyclical(ratio=0.0),
        lambda: Cyclical(cycles=0),
        lambda: Sigmoid(steepness=0),
    ],
)
def test_bad_parameters_are_refused(make):
    with pytest.raises(ValueError, match="annealing."):
        make()
