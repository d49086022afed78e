"""Fixtures for TensorFlow tests that run on every rank under horovodrun / mpirun."""
import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


@pytest.fixture(scope="session", autouse=True)
def hvd():
    import horovod.tensorflow as hvd
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    hvd.init()
    assert hvd.size() >= 2, "multi-process tests need at least 2 ranks (Horovod skips compression on 1)"
    return hvd
