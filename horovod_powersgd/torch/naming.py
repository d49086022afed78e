"""Which parameter is this gradient? — rank-consistent names for PyTorch gradients.

Horovod's PyTorch optimizer calls ``compress(p.grad)`` without the parameter's name, and ``p.grad`` is
a new tensor every step (``zero_grad(set_to_none=True)``), so neither ``id(grad)`` nor call order can
key per-tensor state. Two ways to learn the parameter:

1. The Horovod optimizer calling us: its ``_parameter_names`` maps each parameter to the name Horovod
   itself all-reduces it under (from ``named_parameters``, or ``allreduce.noname.<group>.<index>``
   when none were given) — consistent across ranks by Horovod's own contract. We find that optimizer
   on the call stack (the frame whose ``self`` holds this compressor) and match the gradient by
   identity among its parameters' ``.grad``. Nothing in Horovod is patched.
2. Parameters registered explicitly with ``register_parameters(named_parameters)``, for callers that
   are not a Horovod optimizer (e.g. ``hvd.allreduce(t, compression=...)`` on a parameter's grad).
"""
from __future__ import annotations

import sys

from ..core.backend import TensorIdentity
from ..glue import identity

_MAX_FRAMES = 12


class ParameterNamer:
    """Names gradients for one compressor, which passes itself (``compression``) to every lookup:
    the Horovod optimizer calling us is the one whose ``_compression`` it is."""

    def __init__(self):
        self._registered = {}  # parameter -> name (explicit registration)
        self._grad_index = {}  # id(optimizer) -> {id(p.grad): parameter}

    def register(self, named_parameters) -> None:
        for item in named_parameters:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise ValueError("register_parameters() takes (name, parameter) pairs, "
                                 "e.g. model.named_parameters()")
            self._registered[item[1]] = item[0]

    def identify(self, tensor, compression) -> TensorIdentity:
        optimizer = self._calling_optimizer(compression)
        if optimizer is not None:
            return self._identify_with_optimizer(optimizer, tensor, compression)
        for parameter, name in self._registered.items():
            if parameter.grad is tensor:
                return self._identity(name, op=None, process_set=None)
        raise LookupError(
            f"{type(compression).__name__}: cannot tell which parameter this gradient "
            f"(shape {tuple(tensor.shape)}) belongs to. Pass the compressor to "
            f"hvd.DistributedOptimizer(..., compression=...), or call "
            f"compression.register_parameters(model.named_parameters()) first.")

    def known_names(self, compression):
        """Every name state may be keyed by: the calling Horovod optimizer's parameter names (or the
        registered ones); None when neither is known."""
        optimizer = self._calling_optimizer(compression)
        if optimizer is not None:
            return set(optimizer._parameter_names.values())
        return set(self._registered.values()) or None

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _calling_optimizer(compression):
        frame = sys._getframe(2)
        for _ in range(_MAX_FRAMES):
            if frame is None:
                return None
            candidate = frame.f_locals.get("self")
            if candidate is not None and getattr(candidate, "_compression", None) is compression \
                    and hasattr(candidate, "_parameter_names"):
                return candidate
            frame = frame.f_back
        return None

    def _identify_with_optimizer(self, optimizer, tensor, compression) -> TensorIdentity:
        if hasattr(optimizer, "_starting_models"):  # horovod.torch.optimizer._DistributedAdasumOptimizer
            raise ValueError(
                f"{type(compression).__name__} cannot be used with op=hvd.Adasum: Horovod's Adasum "
                f"optimizer compresses parameter deltas, not gradients, and Adasum is not linear, so "
                f"low-rank factors cannot be combined by it. Use op=hvd.Average or hvd.Sum.")
        index = self._grad_index.get(id(optimizer))
        parameter = index.get(id(tensor)) if index else None
        if parameter is None or parameter.grad is not tensor:
            index = {id(p.grad): p for p in optimizer._parameter_names if p.grad is not None}
            self._grad_index[id(optimizer)] = index
            parameter = index.get(id(tensor))
        if parameter is None:
            raise LookupError(
                f"{type(compression).__name__}: the tensor handed to compress() is not the .grad of "
                f"any parameter of the calling Horovod optimizer (sparse_as_dense=True densifies "
                f"gradients into new tensors; PowerSGD does not support that option)")
        return self._identity(optimizer._parameter_names[parameter], optimizer.op, optimizer.process_set)

    @staticmethod
    def _identity(name, op, process_set) -> TensorIdentity:
        import horovod.torch as hvd

        return identity(name, op, process_set, hvd)
