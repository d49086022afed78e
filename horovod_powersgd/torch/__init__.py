"""PyTorch compressors for ``hvd.DistributedOptimizer(..., compression=...)``.

    import horovod.torch as hvd
    from horovod_powersgd.torch import PowerSGD

    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                   compression=PowerSGD(rank=2))

Every class in ``horovod_powersgd.core.registry.COMPRESSORS`` is exported here under its own name,
taking the same keyword arguments as the core class (without the backend).
"""
from __future__ import annotations

from .. import glue
from ..core.registry import adapt_all
from .backend import TorchBackend
from .naming import ParameterNamer


class _TorchAdapter:
    """Mixed into each core compressor: binds it to PyTorch tensors (`TorchBackend`) and names its
    gradients from the calling ``horovod.torch`` optimizer (`ParameterNamer`)."""

    def __init__(self, *args, **kwargs):
        self._namer = ParameterNamer()
        super().__init__(TorchBackend(), *args, **kwargs)

    def identify(self, tensor):
        return self._namer.identify(tensor, self)

    def _known_names(self):
        return self._namer.known_names(self)

    def register_parameters(self, named_parameters):
        """Name parameters for callers that are not a Horovod optimizer (e.g. ``hvd.allreduce``)."""
        self._namer.register(named_parameters)
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
    return glue.from_spec(spec, _CLASSES, "horovod.torch")


__all__ = [*_CLASSES, "from_spec", "TorchBackend"]
