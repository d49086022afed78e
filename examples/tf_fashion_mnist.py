"""The Fashion-MNIST CNN in TensorFlow 2: tf.GradientTape + hvd.DistributedGradientTape in a tf.function.

    horovodrun -np 2 python -m examples.tf_fashion_mnist --compression powersgd:rank=2

The compressor (``horovod_powersgd.tensorflow.from_spec``) runs inside the traced step: its state
lives in tf.Variables, so it checkpoints with tf.train.Checkpoint next to the model and optimizer
(one checkpoint per rank). Same network, data split and report as examples/torch_fashion_mnist.py.
"""
from __future__ import annotations

import time

from . import _tf_common as tfc  # first: sets TF_USE_LEGACY_KERAS before TensorFlow loads
import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf
import tf_keras as keras

from . import _report


def main(argv=None):
    args = tfc.parse_args(__doc__, argv)
    x_train, y_train, x_test, y_test, my_rows = tfc.start(hvd, args)

    model = tfc.fashion_cnn(args.hidden)
    optimizer = keras.optimizers.SGD(args.lr, momentum=args.momentum)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps_done = tf.Variable(0, dtype=tf.int64, trainable=False)
    compression, stats_source = tfc.compression_from_spec(args.compression, model, steps_done)
    epoch_var = tf.Variable(-1, dtype=tf.int64, trainable=False)
    ckpt = tfc.checkpoint(model, optimizer, compression, epoch_var, steps_done)
    if args.resume:
        ckpt.read(tfc.rank_prefix(args.checkpoint, hvd.rank())).expect_partial()

    @tf.function
    def train_step(x, y, first: bool):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        tape = hvd.DistributedGradientTape(tape, compression=compression)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        steps_done.assign_add(1)
        if first and not args.resume:  # start every rank from rank 0's weights and optimizer state
            hvd.broadcast_variables(model.variables, root_rank=0)
            hvd.broadcast_variables(optimizer.variables(), root_rank=0)
        return loss

    reporter = _report.Reporter(hvd, args, "fashion_mnist_tf", "test_accuracy")
    steps_per_epoch = len(my_rows) // args.batch_size
    if args.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, args.max_batches)
    record, first = None, True
    for epoch in range(int(epoch_var.numpy()) + 1, args.epochs):
        order = my_rows[np.random.default_rng(args.seed + epoch).permutation(len(my_rows))]
        loss_sum, t0 = 0.0, time.perf_counter()
        bar = _report.progress(range(steps_per_epoch), enabled=hvd.rank() == 0 and not args.no_progress,
                               desc=f"epoch {epoch}", total=steps_per_epoch)
        for i in bar:
            b = order[i * args.batch_size:(i + 1) * args.batch_size]
            loss = float(train_step(tf.constant(x_train[b]), tf.constant(y_train[b]), first))
            first = False
            loss_sum += loss
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss:.3f}")
        reporter.train_seconds += time.perf_counter() - t0
        train_loss = float(hvd.allreduce(tf.constant(loss_sum / max(1, steps_per_epoch)), name="train.loss"))
        record = reporter.epoch(epoch, train_loss, tfc.accuracy(hvd, model, x_test, y_test), stats_source,
                                int(steps_done.numpy()))
        if args.checkpoint is not None:
            epoch_var.assign(epoch)
            args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write(tfc.rank_prefix(args.checkpoint, hvd.rank()))
    if record is not None:
        reporter.final(record)


if __name__ == "__main__":
    main()
