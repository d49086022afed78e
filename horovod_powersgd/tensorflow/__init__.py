"""TensorFlow 2 / Keras compressors for ``hvd.DistributedGradientTape`` and ``hvd.DistributedOptimizer``.

    import horovod.tensorflow as hvd
    from horovod_powersgd.tensorflow import PowerSGD

    compression = PowerSGD(rank=2)
    tape = hvd.DistributedGradientTape(tape, compression=compression)

Keras (``horovod.tensorflow.keras``; needs tf-keras and ``TF_USE_LEGACY_KERAS=1``):
``hvd.DistributedOptimizer(opt, compression=PowerSGD(rank=2))``.

Same classes, knobs and defaults as ``horovod_powersgd.torch`` (every class in
``horovod_powersgd.core.registry.COMPRESSORS``, written out in
`horovod_powersgd.tensorflow.compressors`). State lives in ``tf.Variable``s owned by the
compressor, which is trackable: ``tf.train.Checkpoint(model=..., optimizer=..., compression=c)``
saves and restores it (also before the first step: restoration is deferred until the state exists).
"""
from __future__ import annotations

from .. import glue
from . import compressors
from .backend import TensorFlowBackend
from .compressors import BF16, FP16, PowerSGD, RandomK, SignNorm, Signum, TopK, UnbiasedLowRank


def from_spec(spec: str):
    """A compressor from a string such as ``"powersgd:rank=2"``; ``"none"`` gives Horovod's
    ``Compression.none``."""
    return glue.from_spec(spec, compressors, "horovod.tensorflow")


__all__ = ["PowerSGD", "UnbiasedLowRank", "Signum", "SignNorm", "TopK", "RandomK", "FP16", "BF16",
           "from_spec", "TensorFlowBackend"]
