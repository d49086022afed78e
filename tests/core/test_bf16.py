"""BF16: bfloat16 bit patterns all-gathered (Horovod 0.28.1 has no bfloat16 all-reduce)."""
import ml_dtypes
import numpy as np

from horovod_powersgd.core.backend import ReduceOp
from horovod_powersgd.core.bf16 import BF16

from tests.core.ranks import assert_identical_across_ranks, random_gradients, simulate

SHAPES = {"w": (9, 7), "b": (5,)}


def rounded(rank, name):
    return random_gradients(SHAPES, rank, 0)[name].astype(ml_dtypes.bfloat16).astype(np.float32)


def test_result_is_the_float32_average_of_bfloat16_roundings():
    results = simulate(BF16, 1, lambda r, s: random_gradients(SHAPES, r, s))
    assert_identical_across_ranks(results)
    for name in SHAPES:
        exact = [random_gradients(SHAPES, r, 0)[name] for r in range(2)]
        out = results[0][0][0][name]
        np.testing.assert_array_equal(out, (rounded(0, name) + rounded(1, name)) / 2)
        # each rounding is within 2⁻⁸ relative (8 significant bits)
        bound = 2 ** -8 * np.maximum(np.abs(exact[0]), np.abs(exact[1]))
        assert np.all(np.abs(out - (exact[0] + exact[1]) / 2) <= bound)
    assert results[0][1].stats.last_step.sent == (2 * 63 + 4) + (2 * 5 + 4)


def test_op_sum_adds_the_copies():
    results = simulate(BF16, 1, lambda r, s: random_gradients(SHAPES, r, s), op=ReduceOp.SUM)
    np.testing.assert_array_equal(results[0][0][0]["w"], rounded(0, "w") + rounded(1, "w"))
