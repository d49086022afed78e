"""The Fashion-MNIST CNN with Keras ``model.fit`` and horovod.tensorflow.keras.

    TF_USE_LEGACY_KERAS=1 horovodrun -np 2 python -m examples.keras_fashion_mnist --compression powersgd:rank=2

``hvd.DistributedOptimizer(opt, compression=...)`` all-reduces (compressed) gradients inside
``model.fit``; BroadcastGlobalVariablesCallback starts every rank from rank 0's weights and
MetricAverageCallback averages the logged metrics over ranks. Needs tf-keras (Keras 2): Horovod
0.28.1 cannot handle Keras 3 variables; ``_tf_common`` sets ``TF_USE_LEGACY_KERAS=1``. Keras draws its
own progress bar (rank 0). Checkpoints: one tf.train.Checkpoint per rank (compressor state included).
"""
from __future__ import annotations

import time

from . import _tf_common as tfc  # first: sets TF_USE_LEGACY_KERAS before TensorFlow loads
import horovod.tensorflow.keras as hvd
import tensorflow as tf
import tf_keras as keras

from . import _report


class EpochEnd(keras.callbacks.Callback):
    """After each epoch: test accuracy over all ranks, the report line, and the per-rank checkpoint."""

    def __init__(self, args, reporter, stats_source, x_test, y_test, ckpt, epoch_var, steps):
        super().__init__()
        self.args, self.reporter, self.stats_source = args, reporter, stats_source
        self.x_test, self.y_test, self.ckpt, self.epoch_var, self.steps = x_test, y_test, ckpt, epoch_var, steps
        self.record, self.t0 = None, None

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps.assign_add(1)

    def on_epoch_end(self, epoch, logs=None):
        self.reporter.train_seconds += time.perf_counter() - self.t0
        accuracy = tfc.accuracy(hvd, self.model, self.x_test, self.y_test)
        self.record = self.reporter.epoch(epoch, float(logs["loss"]), accuracy, self.stats_source,
                                          int(self.steps.numpy()))
        if self.args.checkpoint is not None:
            self.epoch_var.assign(epoch)
            self.args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            self.ckpt.write(tfc.rank_prefix(self.args.checkpoint, hvd.rank()))


def main(argv=None):
    args = tfc.parse_args(__doc__, argv)
    x_train, y_train, x_test, y_test, rows = tfc.start(hvd, args)
    x_train, y_train = x_train[rows], y_train[rows]
    if args.max_batches is not None:
        x_train, y_train = x_train[:args.max_batches * args.batch_size], y_train[:args.max_batches * args.batch_size]

    model = tfc.fashion_cnn(args.hidden)
    steps_done = tf.Variable(0, dtype=tf.int64, trainable=False)
    compression, stats_source = tfc.compression_from_spec(args.compression, model, steps_done)
    optimizer = hvd.DistributedOptimizer(keras.optimizers.SGD(args.lr, momentum=args.momentum),
                                         compression=compression)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    epoch_var = tf.Variable(-1, dtype=tf.int64, trainable=False)
    ckpt = tfc.checkpoint(model, optimizer, compression, epoch_var, steps_done)
    if args.resume:
        ckpt.read(tfc.rank_prefix(args.checkpoint, hvd.rank())).expect_partial()

    # Horovod 0.28.1 gives MetricAverageCallback standalone Keras 3's backend (no `constant`);
    # with tf-keras it needs tf-keras's backend.
    metric_average = hvd.callbacks.MetricAverageCallback()
    metric_average.backend = keras.backend
    reporter = _report.Reporter(hvd, args, "fashion_mnist_keras", "test_accuracy")
    epoch_end = EpochEnd(args, reporter, stats_source, x_test, y_test, ckpt, epoch_var, steps_done)
    callbacks = [metric_average, epoch_end]
    if not args.resume:  # resumed ranks already hold the same (checkpointed) weights
        callbacks.insert(0, hvd.callbacks.BroadcastGlobalVariablesCallback(0))
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              initial_epoch=int(epoch_var.numpy()) + 1, shuffle=True, callbacks=callbacks,
              verbose=1 if hvd.rank() == 0 and not args.no_progress else 0)
    if epoch_end.record is not None:
        reporter.final(epoch_end.record)


if __name__ == "__main__":
    main()
