"""PyTorch compressors for ``hvd.DistributedOptimizer(..., compression=...)``.

    import horovod.torch as hvd
    from horovod_powersgd.torch import PowerSGD

    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                   compression=PowerSGD(rank=2))

Every class in ``horovod_powersgd.core.registry.COMPRESSORS`` is exported here under its own name,
taking the same keyword arguments as the core class (without the backend).
"""
from __future__ import annotations

from ..core.registry import adapt_all, build_from_spec
from .backend import TorchBackend


class _TorchAdapter:
    """Mixed into each core compressor: binds it to PyTorch tensors and horovod.torch."""

    def __init__(self, *args, **kwargs):
        super().__init__(TorchBackend(self), *args, **kwargs)

    def register_parameters(self, named_parameters):
        """Name parameters for callers that are not a Horovod optimizer (e.g. ``hvd.allreduce``)."""
        self.backend.namer.register(named_parameters)
        return self


_CLASSES = adapt_all(_TorchAdapter, __name__)
globals().update(_CLASSES)

try:  # hvd.elastic.TorchState(..., compression=c) commits, restores and syncs the compressor
    from . import elastic as _elastic

    _elastic.register()
except ImportError:  # Horovod without PyTorch elastic support
    pass


def from_spec(spec: str):
    """A compressor from a string such as ``"powersgd:rank=2"``; ``"none"`` gives Horovod's
    ``Compression.none``."""
    return build_from_spec(spec, _CLASSES, "horovod.torch")


__all__ = [*_CLASSES, "from_spec", "TorchBackend"]
