"""TopK: exact largest-magnitude selection with error feedback, values + int32 indices gathered."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from horovod_powersgd.core.topk import TopK
from horovod_powersgd.reference import NumpyBackend, ThreadGroup

from tests.core.ranks import assert_identical_across_ranks, random_gradients, running_sum_gaps, simulate


def test_exact_selection_average_and_error_feedback_on_known_tensors():
    grads = [np.array([5, -1, 0.5, -7, 2, 0, 0.1, 3], np.float32),
             np.array([0, 4, -6, 1, 0, 0, 0, 0], np.float32)]
    zeros = np.zeros(8, np.float32)
    # ratio 0.25 of 8 → k = 2. Step 0: rank 0 keeps −7@3, 5@0; rank 1 keeps −6@2, 4@1.
    # Step 1 (zero gradients): the errors are sent — rank 0: 3@7, 2@4; rank 1: 1@3 (+ a zero).
    results = simulate(lambda b: TopK(b, ratio=0.25), 2,
                       lambda rank, step: {"g": grads[rank] if step == 0 else zeros})
    assert_identical_across_ranks(results)
    out = results[0][0]
    np.testing.assert_array_equal(out[0]["g"], [2.5, 2, -3, -3.5, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[1]["g"], [0, 0, 0, 0.5, 1, 0, 0, 1.5])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60), st.floats(0.01, 1.0), st.integers(0, 2 ** 32 - 1))
def test_keeps_exactly_the_k_largest_and_remembers_the_rest(d, ratio, seed):
    g = np.random.default_rng(seed).permutation(np.arange(1, d + 1)).astype(np.float32)
    g *= np.random.default_rng(seed + 1).choice([-1, 1], d)  # distinct magnitudes: no ties
    results = simulate(lambda b: TopK(b, ratio=ratio), 1, lambda rank, step: {"g": g}, size=1,
                       after=lambda c: c.state_dict())
    out, error = results[0][0][0]["g"], results[0][2]["tensors"]["g"]["slots"]["error"]
    k = max(1, min(d, round(ratio * d)))
    assert np.count_nonzero(out) == k
    assert np.abs(out[out != 0]).min() > np.abs(error).max(initial=0)
    np.testing.assert_array_equal(out + error, g)


def test_error_feedback_keeps_the_running_sum_gap_bounded():
    fixed = [random_gradients({"g": (30, 8)}, r, 0)["g"] for r in range(2)]
    results = simulate(lambda b: TopK(b, ratio=0.05), 160, lambda rank, step: {"g": fixed[rank]})
    gaps = running_sum_gaps(results[0][0], "g", (fixed[0] + fixed[1]) / 2)
    assert max(gaps[80:]) < 1.5 * max(gaps[:80]), gaps


def test_wire_bytes_are_values_indices_and_placeholder():
    shapes = {"w": (40, 10), "b": (10,)}
    results = simulate(lambda b: TopK(b, ratio=0.1), 2, lambda r, s: random_gradients(shapes, r, s))
    compressor = results[0][1]
    assert compressor.stats.last_step.sent == (40 * 8 + 4) + (1 * 8 + 4)


@pytest.mark.parametrize("ratio", [0, -0.5, 1.01, True, "0.1", None, float("nan")])
def test_bad_ratio_raises(ratio):
    with pytest.raises(ValueError, match="ratio"):
        TopK(NumpyBackend(ThreadGroup(1).communicator(0)), ratio=ratio)
