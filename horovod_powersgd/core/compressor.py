"""What every compressor shares: Horovod's interface, per-tensor state, step bookkeeping, stats.

Horovod calls ``compress(tensor) -> (tensor, ctx)`` before its all-reduce and ``decompress(tensor,
ctx)`` on the result. Subclasses implement the algorithm in `_compress` / `_decompress` and, when they
need a collective of their own after Horovod's, `_finish_step`, which runs once the last tensor of a
step has been decompressed (deferred backends) — the place where a second round is waited for.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

from .backend import FLOAT_DTYPES, Backend, TensorIdentity, itemsize
from .stats import CompressionStats


@dataclasses.dataclass
class Ctx:
    """What `compress` hands `decompress` through Horovod for one tensor."""

    identity: TensorIdentity
    shape: tuple
    dtype: str
    compressed: bool  # False: the tensor went over the wire as it is
    payload: Any = None


class Compressor:
    """Base class: Horovod's Compression interface over a `Backend`.

    Instances are stateful (error buffers, warm starts, counters, keyed by the rank-consistent
    parameter name) and hashable by identity, which TensorFlow's Horovod needs.
    """

    #: the first-round collective Horovod runs on what `compress` returns (for tables and docs)
    collective = "allreduce"

    def __init__(self, backend: Backend):
        self.backend = backend
        self._tensors: Dict[str, Any] = {}
        self._in_flight: set = set()
        self._stats = CompressionStats()

    @property
    def stats(self) -> CompressionStats:
        """Bytes saved and time spent (see `CompressionStats`)."""
        return self._stats

    # ------------------------------------------------------------------ Horovod's interface
    def compress(self, tensor):
        """Compress a gradient; returns (tensor for Horovod's collective, ctx)."""
        start = self.backend.clock()
        identity = self.backend.identify(tensor)
        dtype = self.backend.dtype_name(tensor)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{type(self).__name__}: gradient {identity.name!r} has dtype {dtype}; "
                            f"only floating-point gradients can be compressed")
        if identity.name in self._in_flight:
            raise RuntimeError(
                f"{type(self).__name__}: gradient {identity.name!r} was compressed again before the "
                f"previous result was decompressed (a step was abandoned halfway, or two optimizers "
                f"share one compressor object); use one compressor per optimizer")
        if not self._in_flight:
            self._stats.begin_step()
        self._in_flight.add(identity.name)
        shape = tuple(self.backend.shape(tensor))
        wire, ctx = self._compress(tensor, Ctx(identity, shape, dtype, compressed=True))
        self._stats.add(uncompressed=self._nbytes(tensor), sent=self._nbytes(wire),
                       compressed_tensor=ctx.compressed)
        self._stats.compress_seconds += self.backend.clock() - start
        return wire, ctx

    def decompress(self, tensor, ctx):
        """Turn Horovod's reduced tensor back into a gradient of the original shape and dtype."""
        if ctx is None:  # Horovod passes sparse gradients through without compressing them
            return tensor
        start = self.backend.clock()
        out = self._decompress(tensor, ctx) if ctx.compressed else tensor
        self._in_flight.discard(ctx.identity.name)
        self._stats.decompress_seconds += self.backend.clock() - start
        if not self._in_flight:
            self._finish_step()
            self._stats.end_step()
        return out

    # ------------------------------------------------------------------ for subclasses
    def _compress(self, tensor, ctx: Ctx):
        raise NotImplementedError

    def _decompress(self, tensor, ctx: Ctx):
        raise NotImplementedError

    def _finish_step(self) -> None:
        """Runs after the last in-flight tensor of a step was decompressed."""

    def _nbytes(self, tensor) -> int:
        numel = 1
        for d in self.backend.shape(tensor):
            numel *= int(d)
        return numel * itemsize(self.backend.dtype_name(tensor))

    def _sent(self, tensor) -> None:
        """Account for a tensor this compressor puts on the wire itself (second rounds)."""
        self._stats.add(sent=self._nbytes(tensor))

    # ------------------------------------------------------------------ checkpointing
    def config(self) -> dict:
        """The hyper-parameters; restored state must come from a compressor with the same ones."""
        return {}

    def state_dict(self) -> dict:
        """Per-tensor state of *this rank* (error buffers differ between ranks: save one per rank)."""
        if self._in_flight:
            raise RuntimeError("state_dict() called in the middle of a step (tensors in flight)")
        return {"compressor": type(self).__name__, "config": self.config(),
                "tensors": {name: self._export_tensor_state(state)
                            for name, state in sorted(self._tensors.items())}}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("compressor") != type(self).__name__:
            raise ValueError(f"state was saved by {state_dict.get('compressor')!r}, "
                             f"not by {type(self).__name__}")
        if state_dict.get("config") != self.config():
            raise ValueError(f"state was saved with config {state_dict.get('config')}, this "
                             f"compressor has {self.config()}")
        self._tensors = {name: self._import_tensor_state(name, value)
                         for name, value in state_dict["tensors"].items()}
        self._in_flight.clear()

    def _export_tensor_state(self, state) -> dict:
        raise NotImplementedError

    def _import_tensor_state(self, name: str, value: dict):
        raise NotImplementedError


def export_value(backend: Backend, slot):
    """A slot's value in checkpoint form (None stays None)."""
    value = backend.read_state(slot)
    return None if value is None else backend.export_tensor(value)
