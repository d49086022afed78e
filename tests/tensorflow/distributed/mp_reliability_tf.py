"""Reliability on 2 real ranks (TensorFlow): mismatched compressors are refused on every rank, a
non-finite step leaves state untouched, and checkpoints follow the model, not its variable names."""
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from horovod_powersgd.tensorflow import PowerSGD, TopK

from tf_helpers import FixedGradients, local_gradients

SHAPES = {"dense": (32, 24), "bias": (24,)}


def test_a_knob_that_differs_between_ranks_is_refused_on_every_rank(hvd):
    run = FixedGradients(SHAPES).make_step(hvd, PowerSGD(rank=2, seed=[0, 7][hvd.rank()]))
    # raised while the first step is traced: AutoGraph re-raises it as a StagingError with our message
    with pytest.raises(Exception, match="ConfigMismatchError: .*seed: 0 on rank 0, 7 on rank 1"):
        run(local_gradients(SHAPES, hvd.rank(), 0))


def state_values(compression):
    """Every buffer of the state as one flat dict (step counters left out: they advance anyway)."""
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key not in ("step", "shape"):
                    walk(f"{prefix}/{key}", item)
        elif value is not None:
            flat[prefix] = np.asarray(value)

    walk("", compression.state_dict()["tensors"])
    return flat


@pytest.mark.parametrize("make", [lambda: PowerSGD(rank=2), lambda: TopK(ratio=0.1)],
                         ids=["powersgd", "topk"])
def test_a_nonfinite_step_leaves_state_untouched(hvd, make):
    """Horovod reduces each TensorFlow gradient in a tf.cond of its own, so the decision is per
    tensor: the overflowed tensor's state stays exactly as it was (the finite bias's moves on)."""
    compression = make()
    run = FixedGradients(SHAPES).make_step(hvd, compression)
    for step in range(3):
        run(local_gradients(SHAPES, hvd.rank(), step))
    before = state_values(compression)
    grads = local_gradients(SHAPES, hvd.rank(), 3)
    if hvd.rank() == 1:
        grads["dense"][1, 2] = np.inf
    out = run(grads)
    assert not np.isfinite(out["dense"]).all()  # handed on: a loss scaler skips the step
    after = state_values(compression)
    assert before.keys() == after.keys() and before
    for key in before:
        if key.startswith("/dense/"):
            np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert compression.stats.nonfinite_steps == 1
    later = run(local_gradients(SHAPES, hvd.rank(), 4))
    assert all(np.isfinite(v).all() for v in later.values())


def make_train_step(hvd, model, compression):
    opt = keras.optimizers.SGD(0.05)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        tape = hvd.DistributedGradientTape(tape, compression=compression)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))

    return opt, step


def data(hvd, step):
    rng = np.random.default_rng([hvd.rank(), step])
    return rng.standard_normal((16, 16)).astype(np.float32), rng.standard_normal((16, 8)).astype(np.float32)


def build_model():
    """The same architecture every time; Keras gives its layers new names each time."""
    tf.random.set_seed(0)
    return keras.Sequential([keras.layers.Dense(24, activation="relu", input_shape=(16,)),
                             keras.layers.Dense(8)])


def test_checkpoint_restores_into_a_rebuilt_model_bit_identically(hvd, tmp_path_factory):
    """The issue's case: the model is built again in the same process, so Keras names its layers
    dense_2/dense_3 instead of dense/dense_1. Before: the compressor started fresh silently (weights
    off by ~1e-2 after 4 steps); now the resumed run equals the uninterrupted one exactly."""
    path = str(tmp_path_factory.getbasetemp() / f"keras_rank{hvd.rank()}" / "ckpt")
    model, compression = build_model(), PowerSGD(rank=2)
    opt, step = make_train_step(hvd, model, compression)
    for s in range(6):
        step(*data(hvd, s))
    saved = tf.train.Checkpoint(model=model, optimizer=opt, compression=compression).write(path)
    for s in range(6, 10):
        step(*data(hvd, s))
    uninterrupted = [w.numpy() for w in model.weights]

    rebuilt, restored = build_model(), PowerSGD(rank=2)
    assert rebuilt.weights[0].name != model.weights[0].name  # Keras renamed the layers
    opt, step = make_train_step(hvd, rebuilt, restored)
    status = tf.train.Checkpoint(model=rebuilt, optimizer=opt, compression=restored).read(saved)
    for s in range(6, 10):
        step(*data(hvd, s))
    status.assert_consumed()
    for a, b in zip(uninterrupted, rebuilt.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_checkpoint_restored_into_a_smaller_model_fails_loudly(hvd, tmp_path_factory):
    path = str(tmp_path_factory.getbasetemp() / f"small_rank{hvd.rank()}" / "ckpt")
    deep = keras.Sequential([keras.layers.Dense(24, input_shape=(16,)), keras.layers.Dense(24),
                             keras.layers.Dense(24), keras.layers.Dense(8)])
    compression = PowerSGD(rank=2)
    _, step = make_train_step(hvd, deep, compression)
    x, _ = data(hvd, 0)
    step(x, np.zeros((16, 8), np.float32))
    saved = tf.train.Checkpoint(compression=compression).write(path)

    shallow, restored = build_model(), PowerSGD(rank=2)
    tf.train.Checkpoint(compression=restored).read(saved)
    _, step = make_train_step(hvd, shallow, restored)
    with pytest.raises(Exception, match=r"grad4_.* match no parameter"):
        step(*data(hvd, 0))


def scaled_training(hvd, make, schedule, follow=True, resume_at=None):
    """Weights after every finite step of a run whose loss is scaled by Keras' LossScaleOptimizer
    (the scale doubles after every 2 finite steps and halves after an overflow), and the scale of
    each step; ``schedule`` marks with True the steps where rank 1's loss overflows. ``follow=None``:
    an unscaled plain-SGD run of the finite steps' data, the reference. ``resume_at``: before that
    step, a new compressor continues from the old one's `state_dict`."""
    model = build_model()
    rng = np.random.default_rng(0)  # the same weights in every run of the test
    model.set_weights([rng.uniform(-0.3, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    if follow is None:
        opt = keras.optimizers.SGD(0.05)
    else:
        opt = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD(0.05),
                                                       initial_scale=2.0 ** 10, dynamic_growth_steps=2)

    def train_step(compression):
        if follow:
            compression.follow_loss_scale(opt)

        @tf.function
        def step(x, y, factor):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x) - y)) * factor
                if follow is not None:
                    loss = opt.get_scaled_loss(loss)
            tape = hvd.DistributedGradientTape(tape, compression=compression)
            grads = tape.gradient(loss, model.trainable_variables)
            if follow is not None:
                grads = opt.get_unscaled_gradients(grads)
            opt.apply_gradients(zip(grads, model.trainable_variables))

        return step

    compression = make()
    step = train_step(compression)
    weights = [np.concatenate([v.numpy().ravel() for v in model.trainable_variables])]
    scales, finite_step = [], 0
    for index, overflows in enumerate(schedule):
        if overflows and follow is None:
            continue  # the reference has no such step
        if index == resume_at:
            saved = compression.state_dict()
            assert saved["loss_scale"] == float(opt.loss_scale)  # the next step's scale
            compression = make()
            compression.load_state_dict(saved)
            step = train_step(compression)
        x, y = data(hvd, finite_step)
        scales.append(None if follow is None else float(opt.loss_scale))
        step(x, y, np.float32(np.inf if overflows and hvd.rank() == 1 else 1.0))
        if not overflows:
            weights.append(np.concatenate([v.numpy().ravel() for v in model.trainable_variables]))
            finite_step += 1
    return weights, scales


def assert_same_run(expected, actual):
    travelled = np.abs(expected[-1] - expected[0]).max()
    assert len(expected) == len(actual)
    for k, (a, b) in enumerate(zip(expected, actual)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * travelled, err_msg=f"finite step {k}")


SCALED_TF = {"powersgd": lambda: PowerSGD(rank=2), "powersgd-two_sided": lambda: PowerSGD(rank=2, two_sided=True),
             "topk": lambda: TopK(ratio=0.2)}


@pytest.mark.parametrize("name", list(SCALED_TF))
def test_follow_loss_scale_in_a_graph_equals_the_unscaled_run(hvd, name):
    """``follow_loss_scale(opt)`` with Keras' LossScaleOptimizer inside ``tf.function``: with scales
    that are powers of two, scaling is exact in floating point, so the run equals plain SGD on the
    unscaled loss without the overflowed steps, through growth every 2 steps and two backoffs. Without
    following the scale, the error buffers meet gradients of another scale and the runs part."""
    schedule = [False] * 5 + [True] + [False] * 4 + [True] + [False] * 3
    reference, _ = scaled_training(hvd, SCALED_TF[name], schedule, follow=None)
    followed, scales = scaled_training(hvd, SCALED_TF[name], schedule)
    ignored, _ = scaled_training(hvd, SCALED_TF[name], schedule, follow=False)
    assert len(set(scales)) >= 3  # the scale grew and backed off
    assert_same_run(reference, followed)
    travelled = np.abs(reference[-1] - reference[0]).max()
    assert np.abs(ignored[-1] - reference[-1]).max() > 1e-3 * travelled


def test_follow_loss_scale_in_a_graph_resumes_from_state_dict(hvd):
    """`state_dict` between steps brings the buffers into the next step's scale (here just grown to
    2**11) and saves it as ``loss_scale``: a compressor restored from it continues the same run."""
    schedule = [False] * 3 + [True] + [False] * 3
    uninterrupted, _ = scaled_training(hvd, lambda: PowerSGD(rank=2), schedule)
    resumed, scales = scaled_training(hvd, lambda: PowerSGD(rank=2), schedule, resume_at=2)
    assert scales[2] == 2 * scales[1]
    assert_same_run(uninterrupted, resumed)


def test_follow_loss_scale_in_a_graph_refuses_a_python_number(hvd):
    run = FixedGradients(SHAPES).make_step(hvd, PowerSGD(rank=2).follow_loss_scale(lambda: 8.0))
    with pytest.raises(Exception, match="Python number 8.0"):
        run(local_gradients(SHAPES, hvd.rank(), 0))


def test_a_nonfinite_step_without_a_loss_scale_warns_once(hvd):
    run = FixedGradients(SHAPES).make_step(hvd, PowerSGD(rank=2))
    run(local_gradients(SHAPES, hvd.rank(), 0))
    overflowed = local_gradients(SHAPES, hvd.rank(), 1)
    if hvd.rank() == 1:
        overflowed["dense"][0, 0] = np.inf
    with pytest.warns(RuntimeWarning, match=r"follow_loss_scale\(scaler\)"):
        run(overflowed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(overflowed)  # once


def test_keras_loss_scale_optimizer_with_mixed_precision(hvd):
    """mixed_float16 + Keras' LossScaleOptimizer in a custom loop, the compressor following the
    optimizer's scale: rank 1's loss overflows at step 10 of 24, every rank skips that step (the
    scale halves, the error buffers follow it inside the graph), the 13 later steps are finite and
    applied, and the weights are identical on both ranks after every step."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.layers.Dense(32, activation="tanh", input_shape=(16,)),
                                  keras.layers.Dense(8, dtype="float32")])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    hvd.broadcast_variables(model.variables, root_rank=0)
    opt = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD(0.05))
    compression = PowerSGD(rank=2).follow_loss_scale(opt)

    @tf.function
    def step(x, y, factor):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y)) * factor
            scaled = opt.get_scaled_loss(loss)
        tape = hvd.DistributedGradientTape(tape, compression=compression)
        grads = opt.get_unscaled_gradients(tape.gradient(scaled, model.trainable_variables))
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return grads

    finite, scales = [], []
    for s in range(24):
        x, y = data(hvd, s)
        grads = step(x, y, np.float32(np.inf if (s == 10 and hvd.rank() == 1) else 1.0))
        finite.append(all(np.isfinite(g.numpy()).all() for g in grads))
        scales.append(float(opt.loss_scale))
        weights = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
        copies = hvd.allgather(tf.constant(weights[None])).numpy()
        assert np.array_equal(copies[0], copies[1]), f"step {s}"
    assert [s for s, ok in enumerate(finite) if not ok] == [10]
    assert scales[9] == 2 * scales[10] == 2 * scales[-1]
    assert compression.stats.nonfinite_steps == 1
    assert compression.stats.last_step.sent < compression.stats.last_step.uncompressed
