"""The momentum probe's gradient delay line (`benchmarks.momentum_probe.Delay`)."""
import pytest
import torch

from benchmarks.momentum_probe import Delay


def test_no_delay_hands_each_gradient_straight_back():
    line, gradient = Delay(0), [torch.ones(3)]
    assert line.push(gradient) is gradient


def test_a_delay_of_two_applies_zeros_then_each_gradient_two_steps_late():
    line = Delay(2)
    pushed = [[torch.full((2, 2), float(step)), torch.full((3,), -float(step))] for step in range(1, 6)]
    applied = [line.push(gradients) for gradients in pushed]
    for step in (0, 1):
        assert [g.shape for g in applied[step]] == [(2, 2), (3,)]
        assert all(torch.count_nonzero(g) == 0 for g in applied[step])
    for step in range(2, 5):
        assert applied[step] is pushed[step - 2]


def test_a_negative_delay_is_refused():
    with pytest.raises(ValueError, match="delay must be >= 0"):
        Delay(-1)
