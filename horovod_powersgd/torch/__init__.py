"""PyTorch compressors for ``hvd.DistributedOptimizer(..., compression=...)``.

    import horovod.torch as hvd
    from horovod_powersgd.torch import PowerSGD

    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                   compression=PowerSGD(rank=2))

Every class in ``horovod_powersgd.core.registry.COMPRESSORS`` is exported here under its own name,
taking the same keyword arguments as the core class (without the backend); the classes are written
out in `horovod_powersgd.torch.compressors`.
"""
from __future__ import annotations

from .. import glue
from . import compressors
from .backend import TorchBackend
from .compressors import BF16, FP16, PowerSGD, RandomK, SignNorm, Signum, TopK, UnbiasedLowRank

try:  # hvd.elastic.TorchState(..., compression=c) commits, restores and syncs the compressor
    from . import elastic as _elastic

    _elastic.register()
except ImportError:  # Horovod without PyTorch elastic support
    pass


def from_spec(spec: str):
    """A compressor from a string such as ``"powersgd:rank=2"``; ``"none"`` gives Horovod's
    ``Compression.none``."""
    return glue.from_spec(spec, compressors, "horovod.torch")


__all__ = ["PowerSGD", "UnbiasedLowRank", "Signum", "SignNorm", "TopK", "RandomK", "FP16", "BF16",
           "from_spec", "TorchBackend"]
