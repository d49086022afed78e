"""A zero-initialised head on 2 real ranks (TensorFlow ``DistributedGradientTape``, in a
``tf.function``): the kernel below it gets an exactly zero gradient at step 0. Compared with the same
training under ``hvd.Compression.none``: equal at a lossless rank, at least half as far at rank 2."""
import numpy as np
import pytest
import tensorflow as tf

from horovod_powersgd.tensorflow import PowerSGD

from tf_helpers import identical_across_ranks
from tests.powersgd_schemes import SCHEMES, every_scheme

WIDTH, STEPS = 8, 12


def train(hvd, compression, scale=1.0, zero_head=True):
    """The hidden kernel after every step of plain SGD (on ``scale`` times the loss, at a learning
    rate ``scale`` times smaller)."""
    rng = np.random.default_rng(0)
    hidden = tf.Variable(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) / 3, name="hidden")
    head = tf.Variable(tf.zeros((WIDTH, WIDTH)) if zero_head
                       else rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) / 3, name="head")
    variables = [hidden, head]

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = scale * tf.reduce_mean((tf.tanh(x @ hidden) @ head - y) ** 2)
        tape = hvd.DistributedGradientTape(tape, compression=compression)
        for v, g in zip(variables, tape.gradient(loss, variables)):
            v.assign_sub((0.1 / scale) * g)

    trajectory = [hidden.numpy()]
    for t in range(STEPS):
        data = np.random.default_rng([hvd.rank(), t])
        step(tf.constant(data.standard_normal((16, WIDTH)), tf.float32),
             tf.constant(data.standard_normal((16, WIDTH)), tf.float32))
        trajectory.append(hidden.numpy())
    assert identical_across_ranks(hvd, hidden.numpy()) and identical_across_ranks(hvd, head.numpy())
    return trajectory


def moved_after(trajectory, first=6):
    return float(np.linalg.norm(trajectory[-1] - trajectory[first]))


@every_scheme
def test_at_a_lossless_rank_the_kernel_below_trains_as_uncompressed(hvd, scheme):
    exact = train(hvd, hvd.Compression.none)
    compressed = train(hvd, PowerSGD(rank=WIDTH, min_compression_rate=0.01, **SCHEMES[scheme]))
    assert moved_after(exact) > 1e-4  # the kernel does train uncompressed
    for step, (a, b) in enumerate(zip(exact, compressed)):
        np.testing.assert_allclose(b, a, atol=1e-5, err_msg=f"step {step}")


@every_scheme
def test_gradients_of_1e_12_at_a_lossless_rank_train_as_uncompressed(hvd, scheme):
    """A layer far from the loss: every "no direction left" floor is relative, so tiny gradients
    are delivered exactly at a lossless rank, not taken for empty."""
    exact = train(hvd, hvd.Compression.none, scale=1e-12, zero_head=False)
    compressed = train(hvd, PowerSGD(rank=WIDTH, min_compression_rate=0.01, **SCHEMES[scheme]),
                       scale=1e-12, zero_head=False)
    assert moved_after(exact) > 1e-4
    for step, (a, b) in enumerate(zip(exact, compressed)):
        np.testing.assert_allclose(b, a, atol=1e-5, err_msg=f"step {step}")


@pytest.mark.parametrize("rank", [2])
@every_scheme
def test_at_rank_2_the_kernel_below_moves_at_least_half_as_far(hvd, scheme, rank):
    exact = train(hvd, hvd.Compression.none)
    compressed = train(hvd, PowerSGD(rank=rank, min_compression_rate=0.01, **SCHEMES[scheme]))
    assert moved_after(compressed) >= 0.5 * moved_after(exact), (moved_after(compressed),
                                                                 moved_after(exact))


@pytest.mark.parametrize("spec", ["powersgd:rank=2", "signnorm", "randomk"])
def test_variables_with_no_elements_train_the_rest_as_without_them(hvd, spec):
    """A kernel of width 0 (its empty output joins the hidden one) and an empty placeholder go as
    they are; the other variables train exactly as without them, in a ``tf.function``."""
    from horovod_powersgd.tensorflow import from_spec

    def train(with_empty: bool):
        rng = np.random.default_rng(0)
        hidden = tf.Variable(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) / 3, name="hidden")
        head = tf.Variable(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) / 3, name="head")
        empty = [tf.Variable(tf.zeros((WIDTH, 0)), name="none_wide"),
                 tf.Variable(tf.zeros((0,)), name="placeholder")] if with_empty else []
        variables = [hidden, head, *empty]
        compression = from_spec(spec)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                h = tf.tanh(x @ hidden)
                if with_empty:
                    h = tf.concat([h, x @ empty[0]], 1) + tf.reduce_sum(empty[1])
                loss = tf.reduce_mean((h @ head - y) ** 2)
            tape = hvd.DistributedGradientTape(tape, compression=compression)
            for v, g in zip(variables, tape.gradient(loss, variables)):
                v.assign_sub(0.1 * g)

        for t in range(6):
            data = np.random.default_rng([hvd.rank(), t])
            step(tf.constant(data.standard_normal((16, WIDTH)), tf.float32),
                 tf.constant(data.standard_normal((16, WIDTH)), tf.float32))
        return [v.numpy() for v in variables]

    plain, mixed = train(False), train(True)
    assert [v.shape for v in mixed[2:]] == [(WIDTH, 0), (0,)]
    for a, b in zip(plain, mixed[:2]):
        assert np.isfinite(b).all()
        np.testing.assert_array_equal(b, a)
