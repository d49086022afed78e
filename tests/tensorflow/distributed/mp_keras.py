"""Keras model.fit with horovod.tensorflow.keras on every rank (tf-keras, TF_USE_LEGACY_KERAS=1)."""
import numpy as np

from examples.datasets import fashion_mnist


def fit(compression, x, y, epochs):
    import horovod.tensorflow.keras as hvd_keras
    import tensorflow as tf
    import tf_keras as keras

    tf.keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Flatten(input_shape=(1, 28, 28)),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    # decayed to zero, so that both runs settle (at a constant 0.1, round-off alone moved the final
    # accuracy by ±2 points: see the PyTorch band test)
    steps = epochs * -(-len(x) // 64)
    schedule = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=steps)
    opt = hvd_keras.DistributedOptimizer(keras.optimizers.SGD(schedule, momentum=0.9),
                                         compression=compression)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    # Horovod 0.28.1 hands MetricAverageCallback standalone Keras 3's backend (no `constant`);
    # with tf-keras the callback needs tf-keras's backend (the workaround the TensorFlow guide documents).
    metric_average = hvd_keras.callbacks.MetricAverageCallback()
    metric_average.backend = keras.backend
    model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0), metric_average])
    return model


def test_model_fit_reaches_the_uncompressed_accuracy_band(hvd):
    import horovod.tensorflow.keras as hvd_keras

    from horovod_powersgd.tensorflow import PowerSGD

    x, y = fashion_mnist("train", limit=8192)
    x, y = x[hvd.rank()::hvd.size()], y[hvd.rank()::hvd.size()]
    x_test, y_test = fashion_mnist("test", limit=2000)
    baseline = fit(hvd_keras.Compression.none, x, y, epochs=6)
    compression = PowerSGD(rank=4)
    compressed = fit(compression, x, y, epochs=6)
    weights = [w for w in compressed.get_weights()]
    gathered = [hvd.allgather(w[None]).numpy() for w in weights]
    assert all(np.array_equal(g[0], g[1]) for g in gathered), "ranks disagree on the weights"
    acc = [np.mean(m.predict(x_test, verbose=0).argmax(1) == y_test) for m in (baseline, compressed)]
    print(f"rank {hvd.rank()}: Keras test accuracy uncompressed {acc[0]:.4f}, PowerSGD rank 4 "
          f"{acc[1]:.4f}; {compression.stats}")
    assert acc[0] > 0.84
    assert abs(acc[1] - acc[0]) < 0.015
    assert compression.stats.steps == 6 * (len(x) // 64 + (len(x) % 64 > 0))
    assert compression.stats.last_step.ratio > 20


def fit_scaled(hvd, compression, follow):
    """model.fit of a small model on random data with Keras' LossScaleOptimizer around Horovod's
    DistributedOptimizer (the order Horovod 0.28.1 can build; the other raises in its
    ``from_config``): Horovod reduces the *scaled* gradients, growing from 2**10 every 2 steps.
    ``follow=None``: plain SGD on the unscaled loss, the reference. Returns the weights."""
    import horovod.tensorflow.keras as hvd_keras
    import tensorflow as tf
    import tf_keras as keras

    tf.keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(32, activation="tanh", input_shape=(16,)),
                              keras.layers.Dense(8)])
    opt = hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.05), compression=compression)
    if follow is not None:
        opt = keras.mixed_precision.LossScaleOptimizer(opt, initial_scale=2.0 ** 10,
                                                       dynamic_growth_steps=2)
    if follow:
        compression.follow_loss_scale(opt)
    model.compile(opt, "mse")
    rng = np.random.default_rng(hvd.rank())
    x = rng.standard_normal((192, 16)).astype(np.float32)
    y = rng.standard_normal((192, 8)).astype(np.float32)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0)])
    if follow is not None:
        assert float(opt.loss_scale) == 2.0 ** 16  # 12 steps: grown 6 times
    return np.concatenate([w.ravel() for w in model.get_weights()])


def test_model_fit_with_loss_scale_optimizer_follows_the_scale(hvd):
    """Powers of two scale exactly: following the optimizer's scale, the scaled run is the unscaled
    one; ignoring it, the error buffers meet gradients of twice their scale and the runs part."""
    from horovod_powersgd.tensorflow import PowerSGD

    reference = fit_scaled(hvd, PowerSGD(rank=2), follow=None)
    followed = fit_scaled(hvd, PowerSGD(rank=2), follow=True)
    ignored = fit_scaled(hvd, PowerSGD(rank=2), follow=False)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(followed, reference, rtol=0, atol=1e-5 * scale)
    assert np.abs(ignored - reference).max() > 1e-3 * scale
