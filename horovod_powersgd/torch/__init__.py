"""PyTorch compressors for ``hvd.DistributedOptimizer(..., compression=...)``.

    import horovod.torch as hvd
    from horovod_powersgd.torch import PowerSGD

    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                   compression=PowerSGD(rank=2))
"""
from __future__ import annotations

from ..core import powersgd as _powersgd
from .backend import TorchBackend


class _TorchAdapter:
    """Mixed into each core compressor: binds it to PyTorch + horovod.torch."""

    def register_parameters(self, named_parameters):
        """Tell the compressor parameter names when it is not called by a Horovod optimizer."""
        self.backend.namer.register(named_parameters)
        return self


class PowerSGD(_TorchAdapter, _powersgd.PowerSGD):
    __doc__ = _powersgd.PowerSGD.__doc__

    def __init__(self, rank: int = 1, **kwargs):
        super().__init__(TorchBackend(self), rank, **kwargs)


__all__ = ["PowerSGD", "TorchBackend"]
