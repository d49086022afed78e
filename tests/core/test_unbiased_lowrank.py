"""UnbiasedLowRank: fresh shared Gaussian Q, one all-reduce of P = MQ, Ĝ = P̄Qᵀ/r."""
import numpy as np
import pytest

from horovod_powersgd.core.unbiased_lowrank import UnbiasedLowRank
from horovod_powersgd.reference import NumpyBackend, ThreadGroup

from tests.core.ranks import assert_identical_across_ranks, random_gradients, simulate


def fixed_pair(shape):
    return [random_gradients({"g": shape}, r, 0)["g"] for r in range(2)]


def test_estimate_is_unbiased_with_the_documented_variance():
    n, m, r, steps = 5, 6, 2, 4000
    fixed = fixed_pair((n, m))
    exact = (fixed[0] + fixed[1]) / 2
    results = simulate(lambda b: UnbiasedLowRank(b, rank=r), steps, lambda rank, step: {"g": fixed[rank]})
    estimates = np.stack([o["g"] for o in results[0][0]])
    # E‖Ĝ − M̄‖² = (m+1)/r·‖M̄‖²: relative standard error of the mean ≈ sqrt((m+1)/(r·steps)) ≈ 0.03
    standard_error = np.sqrt((m + 1) / (r * steps))
    relative = np.linalg.norm(estimates.mean(0) - exact) / np.linalg.norm(exact)
    assert relative < 3 * standard_error, (relative, standard_error)
    variance = np.mean(np.sum((estimates - exact) ** 2, axis=(1, 2))) / np.sum(exact ** 2)
    assert variance == pytest.approx((m + 1) / r, rel=0.15)


def test_identical_on_all_ranks_and_fresh_every_step():
    shapes = {"w": (6, 4, 2), "b": (6,), "thin": (10, 2)}
    results = simulate(lambda b: UnbiasedLowRank(b, rank=2), 3, lambda r, s: random_gradients(shapes, r, 0))
    assert_identical_across_ranks(results)
    out = results[0][0]
    assert np.linalg.matrix_rank(out[0]["w"].reshape(6, 8)) == 2
    assert not np.allclose(out[0]["w"], out[1]["w"]), "a fresh Q each step"
    exact = {n: (random_gradients(shapes, 0, 0)[n] + random_gradients(shapes, 1, 0)[n]) / 2
             for n in ("b", "thin")}
    for name in ("b", "thin"):  # 1-D, and m = 2 < 2·r: sent as they are
        np.testing.assert_allclose(out[2][name], exact[name], rtol=1e-6)


def test_sends_n_times_r_numbers_per_compressed_matrix():
    shapes = {"w": (6, 4, 2), "b": (6,)}
    results = simulate(lambda b: UnbiasedLowRank(b, rank=2), 1, lambda r, s: random_gradients(shapes, r, s))
    compressor = results[0][1]
    assert compressor.stats.last_step.sent == 4 * (6 * 2 + 6)
    assert compressor.wire_bytes((6, 4, 2)) == 4 * 12 and compressor.wire_bytes((6,)) == 24


@pytest.mark.parametrize("kwargs", [{"rank": 0}, {"rank": 1.5}, {"rank": True}, {"seed": -3},
                                    {"min_compression_rate": 0}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        UnbiasedLowRank(NumpyBackend(ThreadGroup(1).communicator(0)), **kwargs)
