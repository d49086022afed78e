"""RandomK: shared-seed random entries, all-reduced values; unbiased without feedback."""
import numpy as np
import pytest

from horovod_powersgd.core.randomk import RandomK
from horovod_powersgd.reference import NumpyBackend, ThreadGroup

from tests.core.ranks import assert_identical_across_ranks, random_gradients, running_sum_gaps, simulate


def test_every_rank_picks_the_same_indices():
    # ranks send different constants: if the indices differed, each rank would scatter the averaged
    # values to its own positions and the outputs would differ (or have more than k non-zeros)
    results = simulate(lambda b: RandomK(b, ratio=0.25, error_feedback=False), 5,
                       lambda rank, step: {"g": np.full(64, 1.0 + 2 * rank, np.float32)}, size=3)
    assert_identical_across_ranks(results)
    supports = [np.flatnonzero(out["g"]) for out in results[0][0]]
    for out, support in zip(results[0][0], supports):
        assert len(support) == 16
        np.testing.assert_array_equal(out["g"][support], 3.0 * 64 / 16)  # average 3, rescaled d/k
    assert len({tuple(s) for s in supports}) == 5, "fresh indices every step"


def test_without_error_feedback_the_estimate_is_unbiased():
    shapes = {"g": (8, 8)}
    fixed = [random_gradients(shapes, r, 0)["g"] for r in range(2)]
    exact = (fixed[0] + fixed[1]) / 2
    steps, d, k = 3000, 64, 16
    results = simulate(lambda b: RandomK(b, ratio=0.25, error_feedback=False), steps,
                       lambda rank, step: {"g": fixed[rank]})
    mean = np.mean([o["g"] for o in results[0][0]], axis=0)
    # E‖mean − exact‖² = (d/k − 1)‖exact‖²/steps: relative error ≈ 0.032; allow 3x
    expected_relative = np.sqrt((d / k - 1) / steps)
    relative = np.linalg.norm(mean - exact) / np.linalg.norm(exact)
    assert relative < 3 * expected_relative, (relative, expected_relative)
    # ...and the test can tell: the unscaled (feedback) estimator is off by a factor k/d
    assert np.linalg.norm(mean * k / d - exact) / np.linalg.norm(exact) > 10 * expected_relative


def test_error_feedback_keeps_the_running_sum_gap_bounded():
    fixed = [random_gradients({"g": (20, 10)}, r, 0)["g"] for r in range(2)]
    results = simulate(lambda b: RandomK(b, ratio=0.1), 200, lambda rank, step: {"g": fixed[rank]})
    gaps = running_sum_gaps(results[0][0], "g", (fixed[0] + fixed[1]) / 2)
    assert max(gaps[100:]) < 1.5 * max(gaps[:100]), gaps


def test_only_the_values_travel():
    shapes = {"w": (50, 4), "b": (7,)}
    results = simulate(lambda b: RandomK(b, ratio=0.1), 1, lambda r, s: random_gradients(shapes, r, s))
    assert results[0][1].stats.last_step.sent == 4 * (20 + 1)


@pytest.mark.parametrize("kwargs, match", [({"ratio": 0}, "ratio"), ({"ratio": 2}, "ratio"),
                                           ({"ratio": 0.1, "seed": -1}, "seed"),
                                           ({"ratio": 0.1, "error_feedback": 1}, "error_feedback")])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomK(NumpyBackend(ThreadGroup(1).communicator(0)), **kwargs)
