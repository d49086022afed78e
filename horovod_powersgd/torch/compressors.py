"""The PyTorch compressors: each core class bound to PyTorch tensors and ``horovod.torch``.

Written out one by one so that their signatures and docstrings are visible to grep, IDEs and
``help()``. Each takes the core class's arguments without its ``backend``, and
``tests/test_adapters.py`` keeps the two in step; the algorithm and what every knob does are the
core class's docstring (``horovod_powersgd.core.<module>``).
"""
from __future__ import annotations

from typing import Optional

from ..core import bf16, fp16, powersgd, randomk, signnorm, signum, topk, unbiased_lowrank
from ..core.powersgd import DEFAULTS as _D  # PowerSGD's defaults are PowerSGDConfig's
from .backend import TorchBackend
from .naming import ParameterNamer


class _TorchAdapter:
    """Mixed in front of a core compressor: binds it to PyTorch tensors (`TorchBackend`) and names
    its gradients from the calling ``horovod.torch`` optimizer (`ParameterNamer`)."""

    def __init__(self, *args, **kwargs):
        self._namer = ParameterNamer()
        super().__init__(TorchBackend(), *args, **kwargs)

    def identify(self, tensor):
        return self._namer.identify(tensor, self)

    def compress(self, tensor, identity=None):
        wire, ctx = super().compress(tensor, identity)
        # Horovod's all-reduce takes only contiguous tensors, and the gradient of a channels_last
        # weight is not, nor is what a cast or a pass-through makes of it: a copy only then
        return wire.contiguous(), ctx

    def _known_names(self):
        return self._namer.known_names(self)

    def register_parameters(self, named_parameters):
        """Name parameters for callers that are not a Horovod optimizer (e.g. ``hvd.allreduce``)."""
        self._namer.register(named_parameters)
        return self


class PowerSGD(_TorchAdapter, powersgd.PowerSGD):
    """PowerSGD for ``hvd.DistributedOptimizer(..., compression=PowerSGD(rank=2))``: rank-r
    factors with error feedback and warm start, two all-reduces per step, or one with
    ``alternate=True`` or ``two_sided=True``. Algorithm and knobs:
    `horovod_powersgd.core.powersgd.PowerSGD`."""

    def __init__(self, rank: int = _D.rank, *, power_iterations: int = _D.power_iterations,
                 warm_start: bool = _D.warm_start, error_feedback: bool = _D.error_feedback,
                 min_compression_rate: float = _D.min_compression_rate,
                 start_step: int = _D.start_step, seed: int = _D.seed,
                 orthogonalization_epsilon: float = _D.orthogonalization_epsilon,
                 wire_dtype: Optional[str] = _D.wire_dtype, alternate: bool = _D.alternate,
                 two_sided: bool = _D.two_sided):
        super().__init__(rank, power_iterations=power_iterations, warm_start=warm_start,
                         error_feedback=error_feedback, min_compression_rate=min_compression_rate,
                         start_step=start_step, seed=seed,
                         orthogonalization_epsilon=orthogonalization_epsilon,
                         wire_dtype=wire_dtype, alternate=alternate, two_sided=two_sided)


class UnbiasedLowRank(_TorchAdapter, unbiased_lowrank.UnbiasedLowRank):
    """Unbiased rank-r random projection (a fresh shared Gaussian Q per step), one all-reduce, for
    ``hvd.DistributedOptimizer``: PowerSGD's comparison baseline
    (`horovod_powersgd.core.unbiased_lowrank.UnbiasedLowRank`)."""

    def __init__(self, rank: int = 1, *, min_compression_rate: float = 2.0, seed: int = 0):
        super().__init__(rank, min_compression_rate=min_compression_rate, seed=seed)


class Signum(_TorchAdapter, signum.Signum):
    """Majority vote of the signs of each rank's local momentum, all-gathered; use it with plain SGD
    in ``hvd.DistributedOptimizer`` (`horovod_powersgd.core.signum.Signum`)."""

    def __init__(self, momentum: float = 0.9):
        super().__init__(momentum)


class SignNorm(_TorchAdapter, signnorm.SignNorm):
    """EF-signSGD — scaled signs with error feedback, all-gathered — for
    ``hvd.DistributedOptimizer`` (`horovod_powersgd.core.signnorm.SignNorm`)."""

    def __init__(self):
        super().__init__()


class TopK(_TorchAdapter, topk.TopK):
    """The largest-magnitude ``ratio`` of each gradient with error feedback, all-gathered, for
    ``hvd.DistributedOptimizer`` (`horovod_powersgd.core.topk.TopK`)."""

    def __init__(self, ratio: float = 0.01):
        super().__init__(ratio)


class RandomK(_TorchAdapter, randomk.RandomK):
    """A shared random ``ratio`` of each gradient, all-reduced, for ``hvd.DistributedOptimizer``
    (`horovod_powersgd.core.randomk.RandomK`)."""

    def __init__(self, ratio: float = 0.01, *, error_feedback: bool = True, seed: int = 0):
        super().__init__(ratio, error_feedback=error_feedback, seed=seed)


class FP16(_TorchAdapter, fp16.FP16):
    """Gradients all-reduced in float16, with this package's statistics
    (`horovod_powersgd.core.fp16.FP16`)."""

    def __init__(self):
        super().__init__()


class BF16(_TorchAdapter, bf16.BF16):
    """Gradients sent as bfloat16 by all-gather (`horovod_powersgd.core.bf16.BF16`)."""

    def __init__(self):
        super().__init__()
