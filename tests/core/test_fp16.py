"""FP16: float16 on the wire, all-reduced in float16."""
import numpy as np
import pytest

from horovod_powersgd.core.fp16 import FP16

from tests.core.ranks import assert_identical_across_ranks, random_gradients, simulate


def test_result_is_the_float16_average_in_the_gradients_dtype():
    shapes = {"w": (9, 7), "b": (5,)}
    results = simulate(FP16, 1, lambda r, s: random_gradients(shapes, r, s))
    assert_identical_across_ranks(results)
    for name in shapes:
        halves = [random_gradients(shapes, r, 0)[name].astype(np.float16) for r in range(2)]
        out = results[0][0][0][name]
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, ((halves[0] + halves[1]) / np.float16(2)).astype(np.float32))
    assert results[0][1].stats.last_step.sent == 2 * (63 + 5)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_magnitudes_beyond_float16_overflow_as_documented():
    results = simulate(FP16, 1, lambda r, s: {"g": np.array([1e5, 1.0], np.float32)})
    assert np.isinf(results[0][0][0]["g"][0]) and results[0][0][0]["g"][1] == 1.0
