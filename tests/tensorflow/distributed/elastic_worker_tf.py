"""One process of the end-to-end Horovod Elastic test for TensorFlow (tests/tensorflow/test_elastic.py).

Not a pytest file: the test launches it with ``horovodrun --gloo --min-np 1 --max-np 2
--host-discovery-script ...`` and judges what every process wrote (the job, the membership changes
and the log are tests/elastic_job.py's). A small Keras MLP trains under ``hvd.elastic.run`` in a
``tf.function`` step with ``hvd.DistributedGradientTape(tape, compression=c)``, committing after every
step, its state one of horovod_powersgd.tensorflow.elastic's:

* ``keras``: ``TensorFlowKerasState(model, optimizer, compression=c, ...)``;
* ``variables``: ``TensorFlowState(model.variables + optimizer.variables(), compression=c, ...)``.

    python elastic_worker_tf.py RESULTS_DIR HOSTS_FILE KIND SPEC
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests.elastic_job import train_elastically  # noqa: E402

LAYERS = (16, 32, 8)  # both kernels compressed
BATCH = 32


def mlp(seed: int):
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential([tf.keras.layers.Dense(LAYERS[1], activation="tanh"),
                                 tf.keras.layers.Dense(LAYERS[2])])
    model.build((None, LAYERS[0]))
    return model


def batch(step: int, rank: int, teacher):
    """This rank's deterministic batch for ``step``: inputs and a teacher network's targets."""
    x = np.random.default_rng(1000 * step + rank).standard_normal((BATCH, LAYERS[0])).astype(np.float32)
    return tf.constant(x), teacher(x)


def main(results_dir, hosts_file, kind, spec):
    import horovod.tensorflow as hvd

    from horovod_powersgd.tensorflow import from_spec
    from horovod_powersgd.tensorflow.elastic import TensorFlowKerasState, TensorFlowState

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    hvd.init()
    teacher = mlp(seed=1)
    model = mlp(seed=2 + hvd.rank())  # different on purpose: the first sync must make them equal
    compression = from_spec(spec)
    optimizer = tf.keras.optimizers.SGD(0.1)
    # the optimizer's variables must exist alike in every process, the joiner's included: Horovod
    # broadcasts them in sync()
    optimizer.build(model.trainable_variables)
    if kind == "keras":
        state = TensorFlowKerasState(model, optimizer, compression=compression, step=0,
                                     initial_loss=None)
    else:
        state = TensorFlowState(model.variables + optimizer.variables(), compression=compression,
                                step=0, initial_loss=None)
    mse = tf.keras.losses.MeanSquaredError()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = mse(y, model(x))
        tape = hvd.DistributedGradientTape(tape, compression=compression)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return gradients, loss

    def step(n):
        gradients, loss = train_step(*batch(n, hvd.rank(), teacher))
        return gradients, model.trainable_variables, loss

    def gathered(values):
        return hvd.allgather(tf.constant([values], tf.int64),
                             name=f"elastic_test.gather.{len(values)}").numpy().tolist()

    def evaluation_loss():
        x, y = batch(10**6, 0, teacher)
        return float(mse(y, model(x)))

    train_elastically(hvd, state, compression, step, evaluation_loss, gathered, results_dir,
                      hosts_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
