"""What the TensorFlow examples share: environment, the compressor from its spec, the Fashion-MNIST
CNN (tf-keras), per-rank checkpoints and the distributed accuracy.

Horovod 0.28.1 needs tf-keras (Keras 2) variables: ``TF_USE_LEGACY_KERAS=1`` is set here before
TensorFlow is imported (docs/design.md, "Building Horovod"), so import this module first.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from horovod_powersgd.core.stats import CompressionStats, StepBytes  # noqa: E402


def init_threads(local_size: int) -> None:
    """One share of the cores per local rank (2 ranks × all cores would oversubscribe)."""
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, (os.cpu_count() or 1) // local_size)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def parse_args(description: str, argv=None):
    """The flags of both TensorFlow Fashion-MNIST examples (GradientTape and Keras)."""
    import argparse

    from . import _flags

    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _flags.add_common_flags(parser, epochs=3, batch_size=64, lr=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=1024)
    return parser.parse_args(argv)


def start(hvd, args):
    """Horovod up, one compute thread per rank, seeded; Fashion-MNIST as NHWC arrays
    (x_train, y_train, x_test, y_test) and the rows of the training set that are this rank's."""
    from .datasets import fashion_mnist, shard

    hvd.init()
    init_threads(hvd.local_size())
    tf.keras.utils.set_random_seed(args.seed)
    x_train, y_train = fashion_mnist("train", args.train_limit)
    x_test, y_test = fashion_mnist("test", args.test_limit)
    rows = shard(len(x_train), hvd.rank(), hvd.size())
    return nhwc(x_train), y_train, nhwc(x_test), y_test, rows


def nhwc(x: np.ndarray) -> np.ndarray:
    """(N, 1, 28, 28) from `examples.datasets` → (N, 28, 28, 1), TensorFlow's CPU layout."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def fashion_cnn(hidden: int = 1024) -> keras.Model:
    """The same network as examples/torch_fashion_mnist.py (1.63M parameters, FC-heavy)."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 5, padding="same", activation="relu"), keras.layers.MaxPool2D(),
        keras.layers.Conv2D(32, 5, padding="same", activation="relu"), keras.layers.MaxPool2D(),
        keras.layers.Flatten(), keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(10)])


class _NoneStats:
    """Byte accounting for Horovod's own ``Compression.none``: every gradient goes as it is."""

    def __init__(self, model, counter):
        self.model, self.counter = model, counter

    @property
    def stats(self) -> CompressionStats:
        per_step = sum(int(np.prod(v.shape)) * v.dtype.size for v in self.model.trainable_variables)
        s = CompressionStats()
        s.steps = int(self.counter.numpy())
        s.total = StepBytes(per_step * s.steps, per_step * s.steps)
        s.last_step = StepBytes(per_step, per_step)
        s.compress_seconds = s.decompress_seconds = s.wait_seconds = 0.0
        return s


def compression_from_spec(spec: str, model, step_counter):
    """(compression for Horovod, object with ``.stats``) for a spec of horovod_powersgd.tensorflow."""
    from horovod_powersgd.tensorflow import from_spec

    compression = from_spec(spec)
    reporter = compression if hasattr(compression, "stats") else _NoneStats(model, step_counter)
    return compression, reporter


def checkpoint(model, optimizer, compression, epoch, steps) -> tf.train.Checkpoint:
    """Model, optimizer, compressor state (our compressors are trackable), the epoch and step counters."""
    parts = {"model": model, "optimizer": optimizer, "epoch": epoch, "steps": steps}
    if isinstance(compression, tf.__internal__.tracking.Trackable):
        parts["compression"] = compression
    return tf.train.Checkpoint(**parts)


def rank_prefix(path, rank: int) -> str:
    """One checkpoint per rank: the error buffers are this rank's own."""
    return f"{path}.rank{rank}"


def accuracy(hvd, model, x, y, batch_size: int = 500) -> float:
    """Test accuracy over all ranks' shards (counts summed with Horovod)."""
    idx = np.arange(hvd.rank(), len(x) // hvd.size() * hvd.size(), hvd.size())
    correct = 0
    for start in range(0, len(idx), batch_size):
        b = idx[start:start + batch_size]
        correct += int(np.sum(np.argmax(model(x[b], training=False).numpy(), 1) == y[b]))
    totals = hvd.allreduce(tf.constant([correct, len(idx)], tf.float64), op=hvd.Sum, name="eval.counts")
    return float(totals[0] / totals[1])
