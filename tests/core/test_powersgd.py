"""PowerSGD's algorithm on the NumPy reference backend, with simulated ranks in one process."""
import numpy as np
import pytest

from horovod_powersgd.core.backend import ReduceOp, TensorIdentity
from horovod_powersgd.core.powersgd import PowerSGD
from horovod_powersgd.core.shapes import matrix_shape
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients


def run(size, make, gradients_of, steps, op=ReduceOp.AVERAGE):
    """Per rank: the list of reduced gradients of each step, and the compressor."""
    def body(comm):
        compressor = make(NumpyBackend(comm))
        outs = [reduce_gradients(compressor, gradients_of(comm.rank, s), op) for s in range(steps)]
        return outs, compressor

    return ThreadGroup(size).run(body)


def gaussian(shapes, rank, step, seed=0):
    rng = np.random.default_rng([seed, rank, step])
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def exact(size, shapes, step):
    return {n: sum(gaussian(shapes, r, step)[n] for r in range(size)) / size for n in shapes}


@pytest.mark.parametrize("size", [1, 2, 3])
def test_ranks_agree_and_rank_is_bounded(size):
    shapes = {"w": (30, 20), "conv": (6, 3, 3, 3), "b": (20,)}
    results = run(size, lambda b: PowerSGD(b, rank=2), lambda r, s: gaussian(shapes, r, s), 3)
    for step in range(3):
        for r in range(1, size):
            for n in shapes:
                np.testing.assert_array_equal(results[0][0][step][n], results[r][0][step][n])
        out = results[0][0][step]
        assert np.linalg.matrix_rank(out["w"]) <= 2
        assert np.linalg.matrix_rank(out["conv"].reshape(6, -1)) <= 2
        np.testing.assert_allclose(out["b"], exact(size, shapes, step)["b"], rtol=1e-6)


def test_error_is_local_matrix_minus_averaged_approximation():
    shapes = {"w": (12, 10)}
    results = run(2, lambda b: PowerSGD(b, rank=1), lambda r, s: gaussian(shapes, r, 0), 1)
    for rank in range(2):
        outs, compressor = results[rank]
        error = compressor.state_dict()["tensors"]["w"]["error"]
        np.testing.assert_allclose(error, gaussian(shapes, rank, 0)["w"] - outs[0]["w"], atol=1e-6)


def test_sum_op_returns_the_sum_and_keeps_average_errors():
    shapes = {"w": (16, 12)}
    avg = run(2, lambda b: PowerSGD(b, rank=2), lambda r, s: gaussian(shapes, r, s), 3)
    summed = run(2, lambda b: PowerSGD(b, rank=2), lambda r, s: gaussian(shapes, r, s), 3,
                 op=ReduceOp.SUM)
    for step in range(3):
        np.testing.assert_allclose(summed[0][0][step]["w"], 2 * avg[0][0][step]["w"], rtol=1e-4,
                                   atol=1e-5)


def test_more_power_iterations_approximate_better():
    shapes = {"w": (40, 30)}
    errors = []
    for k in (1, 4):
        res = run(2, lambda b: PowerSGD(b, rank=2, power_iterations=k, warm_start=False,
                                        error_feedback=False),
                  lambda r, s: gaussian(shapes, r, 0), 1)
        target = exact(2, shapes, 0)["w"]
        errors.append(np.linalg.norm(res[0][0][0]["w"] - target))
    best = np.linalg.svd(exact(2, shapes, 0)["w"], compute_uv=False)
    optimal = np.sqrt((best[2:] ** 2).sum())  # Eckart–Young: best rank-2 error
    assert errors[1] < errors[0]
    assert errors[1] < 1.05 * optimal


def test_small_and_one_dimensional_tensors_go_uncompressed():
    shapes = {"tiny": (3, 3), "wide_but_short": (2, 500), "bias": (7,)}
    results = run(2, lambda b: PowerSGD(b, rank=2), lambda r, s: gaussian(shapes, r, s), 1)
    outs, compressor = results[0]
    for n in shapes:
        np.testing.assert_allclose(outs[0][n], exact(2, shapes, 0)[n], rtol=1e-6)
    assert compressor.stats.compressed_tensors_last_step == 0
    assert compressor.stats.last_step.ratio == 1.0


def test_min_compression_rate_decides():
    # 20×20 at rank 2: 400 numbers vs 80 -> 5x
    shapes = {"w": (20, 20)}
    for rate, compressed in ((4.9, 1), (5.1, 0)):
        _, compressor = run(1, lambda b: PowerSGD(b, rank=2, min_compression_rate=rate),
                            lambda r, s: gaussian(shapes, r, s), 1)[0]
        assert compressor.stats.compressed_tensors_last_step == compressed


def test_start_step_sends_exact_gradients_first():
    shapes = {"w": (16, 12)}
    results = run(2, lambda b: PowerSGD(b, rank=1, start_step=2), lambda r, s: gaussian(shapes, r, s), 4)
    outs = results[0][0]
    for step in (0, 1):
        np.testing.assert_allclose(outs[step]["w"], exact(2, shapes, step)["w"], rtol=1e-6)
    assert np.linalg.matrix_rank(outs[3]["w"]) == 1


def test_initial_factor_is_seeded_and_leaves_global_rng_alone():
    backend = NumpyBackend(ThreadGroup(1).communicator(0))
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    a = PowerSGD(backend, rank=2, seed=5).initial_factor(10, 2)
    b = PowerSGD(backend, rank=2, seed=5).initial_factor(10, 2)
    assert np.random.random() == before
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, PowerSGD(backend, rank=2, seed=6).initial_factor(10, 2))


def test_checkpoint_resume_is_bit_identical():
    shapes = {"w": (16, 12), "b": (12,)}

    def body(comm):
        c = PowerSGD(NumpyBackend(comm), rank=2)
        for s in range(3):
            reduce_gradients(c, gaussian(shapes, comm.rank, s))
        state = c.state_dict()
        after = [reduce_gradients(c, gaussian(shapes, comm.rank, s)) for s in range(3, 6)]
        resumed = PowerSGD(NumpyBackend(comm), rank=2)
        resumed.load_state_dict(state)
        again = [reduce_gradients(resumed, gaussian(shapes, comm.rank, s)) for s in range(3, 6)]
        return after, again

    for after, again in ThreadGroup(2).run(body):
        for x, y in zip(after, again):
            for n in shapes:
                np.testing.assert_array_equal(x[n], y[n])


def test_matrix_shape_of_conv_weights():
    assert matrix_shape((64, 3, 7, 7)) == (64, 147)
    assert matrix_shape((10, 20)) == (10, 20)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, "rank"), ({"rank": 1.5}, "rank"), ({"rank": True}, "rank"),
    ({"power_iterations": 0}, "power_iterations"), ({"start_step": -1}, "start_step"),
    ({"min_compression_rate": 0}, "min_compression_rate"), ({"warm_start": "yes"}, "warm_start"),
    ({"orthogonalization_epsilon": -1.0}, "orthogonalization_epsilon"),
    ({"wire_dtype": "int8"}, "wire_dtype"),
])
def test_bad_arguments_are_named(kwargs, message):
    backend = NumpyBackend(ThreadGroup(1).communicator(0))
    args = {"rank": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        PowerSGD(backend, **args)


def test_integer_gradients_are_refused():
    def body(comm):
        c = PowerSGD(NumpyBackend(comm), rank=1)
        with pytest.raises(TypeError, match="int64"):
            reduce_gradients(c, {"w": np.ones((8, 8), dtype=np.int64)})
        return True

    assert ThreadGroup(1).run(body) == [True]


def test_abandoned_step_is_detected():
    c = PowerSGD(NumpyBackend(ThreadGroup(1).communicator(0)), rank=1)
    g = np.ones((8, 8), np.float32)
    c.compress(g, TensorIdentity("w", ReduceOp.AVERAGE, 1))
    with pytest.raises(RuntimeError, match="compressed again"):
        c.compress(g, TensorIdentity("w", ReduceOp.AVERAGE, 1))


def test_loading_other_config_is_refused():
    backend = NumpyBackend(ThreadGroup(1).communicator(0))
    with pytest.raises(ValueError, match="config"):
        PowerSGD(backend, rank=4).load_state_dict(PowerSGD(backend, rank=2).state_dict())
