"""PowerSGD through hvd.DistributedGradientTape on every rank (run by tests/tensorflow/test_distributed.py)."""
import numpy as np
import pytest
import tensorflow as tf

from horovod_powersgd.core.powersgd import PowerSGD as CorePowerSGD
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients
from horovod_powersgd.tensorflow import PowerSGD

from tests.powersgd_schemes import SCHEMES, every_scheme, factor_numbers, max_output_rank

from tf_helpers import FixedGradients, exact_average, identical_across_ranks, local_gradients

SHAPES = {"dense": (64, 32), "conv": (8, 4, 3, 3), "bias": (32,), "small": (3, 3)}


def run_steps(hvd, compression, steps, shapes=SHAPES, gradients=None):
    run = FixedGradients(shapes).make_step(hvd, compression)
    return [run(gradients(s) if gradients else local_gradients(shapes, hvd.rank(), s))
            for s in range(steps)]




@every_scheme
def test_identical_across_ranks_low_rank_and_exact_1d(hvd, scheme):
    outs = run_steps(hvd, PowerSGD(rank=2, **SCHEMES[scheme]), 3)
    for out in outs:
        for name, g in out.items():
            assert np.isfinite(g).all()
            assert identical_across_ranks(hvd, g), name
        assert np.linalg.matrix_rank(out["dense"]) <= max_output_rank(scheme, 2)
        assert np.linalg.matrix_rank(out["conv"].reshape(8, -1)) <= max_output_rank(scheme, 2)
    last = local_gradients(SHAPES, hvd.rank(), 2)
    for name in ("bias", "small"):
        np.testing.assert_array_equal(outs[-1][name], exact_average(hvd, last[name]))


@every_scheme
def test_matches_numpy_reference_and_so_pytorch(hvd, scheme):
    """The PyTorch adapter is tested against the same reference on the same inputs
    (tests/torch/distributed/mp_powersgd.py), so agreement here means TF == PyTorch."""
    steps, shapes = 5, {"dense": (64, 32), "conv": (8, 4, 3, 3)}
    outs = run_steps(hvd, PowerSGD(rank=2, seed=3, **SCHEMES[scheme]), steps, shapes)

    def reference(comm):
        compressor = CorePowerSGD(NumpyBackend(comm), rank=2, seed=3, **SCHEMES[scheme])
        return [reduce_gradients(compressor, local_gradients(shapes, comm.rank, s))
                for s in range(steps)]

    expected = ThreadGroup(hvd.size()).run(reference)[hvd.rank()]
    for out, exp in zip(outs, expected):
        for name in shapes:
            np.testing.assert_allclose(out[name], exp[name], rtol=1e-4, atol=1e-5)


def test_same_result_as_pytorch_adapter_in_one_process(hvd):
    import horovod.torch as hvd_torch
    import torch

    from horovod_powersgd.torch import PowerSGD as TorchPowerSGD

    hvd_torch.init()
    shapes = {"dense": (48, 40)}
    tf_outs = run_steps(hvd, PowerSGD(rank=2), 3, shapes)
    weight = torch.nn.Parameter(torch.zeros(48, 40))
    opt = hvd_torch.DistributedOptimizer(torch.optim.SGD([weight], lr=0.0),
                                         named_parameters=[("dense", weight)],
                                         compression=TorchPowerSGD(rank=2))
    for step in range(3):
        opt.zero_grad()
        (weight * torch.from_numpy(local_gradients(shapes, hvd.rank(), step)["dense"])).sum().backward()
        opt.step()
        np.testing.assert_allclose(weight.grad.numpy(), tf_outs[step]["dense"], rtol=1e-4, atol=1e-5)


@every_scheme
def test_low_rank_gradients_become_exact_after_warm_start(hvd, scheme):
    shared = np.random.default_rng(7).standard_normal((64, 2)).astype(np.float32)
    v = np.random.default_rng([hvd.rank(), 99]).standard_normal((2, 32)).astype(np.float32)
    outs = run_steps(hvd, PowerSGD(rank=2, error_feedback=False, **SCHEMES[scheme]), 4,
                     {"dense": (64, 32)},
                     lambda step: {"dense": shared @ v})
    exact = exact_average(hvd, shared @ v)
    assert np.linalg.norm(outs[-1]["dense"] - exact) / np.linalg.norm(exact) < 1e-5


@every_scheme
@pytest.mark.parametrize("error_feedback", [True, False])
def test_error_feedback_keeps_running_sum_close(hvd, error_feedback, scheme):
    # half a power iteration per step: the single-round error settles later (~100 steps here)
    steps = 60 if scheme == "classic" else 160
    fixed = local_gradients({"dense": (48, 40)}, hvd.rank(), 0)
    outs = run_steps(hvd, PowerSGD(rank=1, error_feedback=error_feedback, **SCHEMES[scheme]), steps,
                     {"dense": (48, 40)}, lambda step: fixed)
    exact = exact_average(hvd, fixed["dense"])
    running = np.cumsum([o["dense"] for o in outs], axis=0)
    gaps = [np.linalg.norm(running[t] - (t + 1) * exact) for t in range(steps)]
    if error_feedback:
        assert max(gaps[steps // 2:]) < 1.5 * max(gaps[:steps // 2])
    else:
        assert gaps[steps - 1] > 2.5 * gaps[steps // 3]


@every_scheme
def test_start_step_sends_exact_gradients_first(hvd, scheme):
    outs = run_steps(hvd, PowerSGD(rank=1, start_step=2, **SCHEMES[scheme]), 4, {"dense": (32, 24)})
    for step, out in enumerate(outs):
        exact = exact_average(hvd, local_gradients({"dense": (32, 24)}, hvd.rank(), step)["dense"])
        if step < 2:
            np.testing.assert_allclose(out["dense"], exact, rtol=1e-6, atol=1e-6)
        else:
            assert np.linalg.matrix_rank(out["dense"]) <= max_output_rank(scheme, 1)


def test_retracing_keeps_one_state_per_variable(hvd):
    compression = PowerSGD(rank=2)
    w = tf.Variable(tf.zeros((16, 12)), name="w")
    target = tf.constant(local_gradients({"t": (12,)}, hvd.rank(), 0)["t"])

    def loss_of(x):
        return tf.reduce_sum(tf.matmul(x, w) * target)

    @tf.function
    def first(x):
        with tf.GradientTape() as tape:
            loss = loss_of(x)
        return hvd.DistributedGradientTape(tape, compression=compression).gradient(loss, [w])[0]

    @tf.function
    def second(x):
        with tf.GradientTape() as tape:
            loss = 2.0 * loss_of(x)
        return hvd.DistributedGradientTape(tape, compression=compression).gradient(loss, [w])[0]

    first(tf.ones((2, 16)))
    first(tf.ones((5, 16)))  # new input shape: retrace
    second(tf.ones((3, 16)))  # another function, same variable
    assert list(compression.state_dict()["tensors"]) == ["w"]
    assert compression.state_dict()["tensors"]["w"]["step"] == 3
    assert compression.stats.steps == 3


def test_state_is_not_mixed_up_between_variables(hvd):
    compression = PowerSGD(rank=1)
    shapes = {"a": (20, 10), "b": (20, 10)}  # same shape: only names tell them apart
    model = FixedGradients(shapes)
    run = model.make_step(hvd, compression)
    grads = local_gradients(shapes, hvd.rank(), 0)
    grads["b"] = np.zeros_like(grads["b"])
    for _ in range(3):
        out = run(grads)
    state = compression.state_dict()["tensors"]
    assert not np.any(state["b"]["error"]) and np.any(state["a"]["error"])
    assert not np.any(out["b"])


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_gradients(hvd, dtype):
    shapes = {"dense": (32, 24)}
    model = FixedGradients(shapes, dtype=dtype)
    run = model.make_step(hvd, PowerSGD(rank=2))
    for step in range(2):
        out = run(local_gradients(shapes, hvd.rank(), step))
    assert out["dense"].dtype == dtype.as_numpy_dtype
    assert np.isfinite(out["dense"].astype(np.float32)).all()
    singular = np.linalg.svd(out["dense"].astype(np.float32), compute_uv=False)
    assert singular[2] < 1e-2 * singular[0]  # rank 2 up to the output dtype's rounding


def test_indexed_slices_pass_through(hvd):
    compression = PowerSGD(rank=2)
    table = tf.Variable(tf.ones((50, 8)), name="table")
    ids = tf.constant([hvd.rank(), 3, 7])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, ids))
        return hvd.DistributedGradientTape(tape, compression=compression).gradient(loss, [table])[0]

    grad = step()
    assert isinstance(grad, tf.IndexedSlices)
    dense = tf.math.unsorted_segment_sum(grad.values, grad.indices, 50).numpy()
    local = np.zeros((50, 8), np.float32)
    np.add.at(local, ids.numpy(), 1.0)
    np.testing.assert_allclose(dense, exact_average(hvd, local))


# the alternating variant resumes before a Q-step (after 3 steps) and before a P-step (after 4)
@pytest.mark.parametrize("scheme, boundary", [("classic", 3), ("alternate", 3), ("alternate", 4),
                                              ("two_sided", 3)],
                         ids=["classic", "alternate_q_next", "alternate_p_next", "two_sided"])
def test_checkpoint_restore_continues_bit_identically(hvd, tmp_path_factory, scheme, boundary):
    shapes = {"dense": (32, 24), "bias": (24,)}
    path = str(tmp_path_factory.getbasetemp() / f"rank{hvd.rank()}-{scheme}-{boundary}" / "ckpt")
    compression = PowerSGD(rank=2, **SCHEMES[scheme])
    run = FixedGradients(shapes).make_step(hvd, compression)
    for step in range(boundary):
        run(local_gradients(shapes, hvd.rank(), step))
    saved = tf.train.Checkpoint(compression=compression).write(path)
    after = range(boundary, boundary + 3)
    uninterrupted = [run(local_gradients(shapes, hvd.rank(), step)) for step in after]

    restored = PowerSGD(rank=2, **SCHEMES[scheme])
    tf.train.Checkpoint(compression=restored).read(saved).assert_existing_objects_matched()
    run = FixedGradients(shapes).make_step(hvd, restored)  # state restored when first created
    resumed = [run(local_gradients(shapes, hvd.rank(), step)) for step in after]
    for a, b in zip(uninterrupted, resumed):
        for name in shapes:
            np.testing.assert_array_equal(a[name], b[name])


@every_scheme
def test_stats_count_the_bytes(hvd, scheme):
    compression = PowerSGD(rank=2, **SCHEMES[scheme])
    run_steps(hvd, compression, 2)
    s = compression.stats
    uncompressed = 4 * (64 * 32 + 8 * 36 + 32 + 9)
    low_rank = factor_numbers(scheme, 2, 64, 32) + factor_numbers(scheme, 2, 8, 36)
    sent = 4 * (low_rank + 32 + 9)
    assert s.steps == 2 and s.last_step.uncompressed == uncompressed and s.last_step.sent == sent
    assert s.total.sent == 2 * sent
