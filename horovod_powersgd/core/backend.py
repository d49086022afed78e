"""The small interface every compressor is written against.

A compressor needs two things from a framework: a handful of tensor operations, and Horovod's
collectives. `Backend` lists both. The PyTorch, TensorFlow and NumPy (reference) adapters implement it;
nothing under `horovod_powersgd.core` imports a framework.

Arithmetic between tensors (``+``, ``-``, ``*``, ``/``, ``@``) is used directly: NumPy arrays, torch
tensors and TensorFlow tensors all overload these operators in the same way.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
from typing import Any, Sequence, Tuple

import numpy as np


class ReduceOp(enum.Enum):
    """How Horovod combines the first-round tensors across ranks."""

    AVERAGE = "average"
    SUM = "sum"


@dataclasses.dataclass(frozen=True)
class TensorIdentity:
    """Which gradient a tensor handed to ``compress`` is, and how Horovod will reduce it.

    ``name`` is identical on every rank for the same parameter (derived from the parameter, never
    from call order): per-tensor state is keyed by it and the second-round collectives are named
    after it. ``group_size`` is the number of ranks taking part (the process set's size).
    """

    name: str
    op: ReduceOp
    group_size: int
    process_set: Any = None


class Backend(abc.ABC):
    """Tensor operations and collectives for one framework.

    ``deferred`` says how collectives behave. True (PyTorch, NumPy): ``allreduce_async`` returns a
    handle and ``wait`` blocks until the result is there, so a compressor may hand Horovod an output
    tensor that it fills in place later. False (TensorFlow graphs): ``allreduce_async`` returns a
    symbolic result, ``wait`` is the identity, and ordering is the graph's business.
    """

    deferred: bool = True

    # ------------------------------------------------------------------ identification
    @abc.abstractmethod
    def identify(self, tensor) -> TensorIdentity:
        """Name the gradient ``tensor`` is (rank-consistent) and how it will be reduced."""

    # ------------------------------------------------------------------ tensor facts
    @abc.abstractmethod
    def shape(self, tensor) -> Tuple[int, ...]:
        ...

    @abc.abstractmethod
    def dtype_name(self, tensor) -> str:
        """Canonical dtype name: 'float32', 'float16', 'bfloat16', 'float64', 'int64', 'bool', ..."""

    # ------------------------------------------------------------------ tensor ops
    @abc.abstractmethod
    def cast(self, tensor, dtype_name: str):
        ...

    @abc.abstractmethod
    def reshape(self, tensor, shape: Sequence[int]):
        ...

    @abc.abstractmethod
    def transpose(self, matrix):
        ...

    @abc.abstractmethod
    def from_numpy(self, array: np.ndarray, like=None):
        """A tensor holding ``array`` (dtype kept), on ``like``'s device when given."""

    @abc.abstractmethod
    def to_numpy(self, tensor) -> np.ndarray:
        ...

    @abc.abstractmethod
    def zeros(self, shape: Sequence[int], dtype_name: str):
        ...

    @abc.abstractmethod
    def sum(self, tensor):
        """Sum of all elements (a scalar tensor)."""

    @abc.abstractmethod
    def sqrt(self, tensor):
        ...

    @abc.abstractmethod
    def columns(self, matrix) -> list:
        """The columns of a 2-D tensor as a list of 1-D tensors."""

    @abc.abstractmethod
    def stack_columns(self, columns: Sequence) -> Any:
        """Inverse of `columns`."""

    # ------------------------------------------------------------------ deferred outputs
    def empty(self, shape: Sequence[int], dtype_name: str, like):
        """An output tensor on ``like``'s device that `fill` completes later (deferred backends)."""
        raise NotImplementedError

    def fill(self, out, value) -> None:
        """Copy ``value`` into ``out`` in place (deferred backends only)."""
        raise NotImplementedError

    def to_device_of(self, tensor, like):
        """``tensor`` on ``like``'s device (restored checkpoints start on the host)."""
        return tensor

    # ------------------------------------------------------------------ state
    def new_state(self, value):
        """A mutable slot for per-tensor state (error buffer, Q, counters) holding ``value``."""
        return _Slot(value)

    def read_state(self, slot):
        return slot.value

    def write_state(self, slot, value) -> None:
        slot.value = value

    def export_tensor(self, tensor):
        """Checkpoint form of a state tensor (exact: no rounding)."""
        return self.to_numpy(tensor).copy()

    def import_tensor(self, value):
        """Inverse of `export_tensor`."""
        return self.from_numpy(np.asarray(value))

    # ------------------------------------------------------------------ collectives
    @abc.abstractmethod
    def allreduce_async(self, tensor, name: str, identity: TensorIdentity):
        """Start an all-reduce of ``tensor`` with the same op and process set as ``identity``."""

    @abc.abstractmethod
    def wait(self, handle):
        """The result of a collective started by this backend."""

    def allgather_async(self, tensor, name: str, identity: TensorIdentity):
        """Start an all-gather (concatenation along dim 0, in rank order)."""
        raise NotImplementedError(f"{type(self).__name__} has no all-gather")

    # ------------------------------------------------------------------ timing
    def clock(self) -> float:
        """Seconds, for the compressor's own time accounting."""
        import time

        return time.perf_counter()


class _Slot:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def compute_dtype(dtype_name: str) -> str:
    """Low-precision gradients are compressed in float32 and returned in their own dtype."""
    return "float32" if dtype_name in ("float16", "bfloat16") else dtype_name


def itemsize(dtype_name: str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int32": 4, "int64": 8,
            "uint8": 1, "int8": 1, "bool": 1}[dtype_name]
