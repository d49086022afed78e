"""The small interface every compressor is written against.

A compressor needs two things from a framework: a handful of tensor operations, and Horovod's
collectives. `Backend` lists both, and nothing else. The PyTorch, TensorFlow and NumPy (reference)
adapters implement it; nothing under `horovod_powersgd.core` imports a framework. Which gradient a
tensor is (its `TensorIdentity`) is not a backend's business: the framework adapters learn it from
Horovod's optimizer and hand it to `Compressor.compress`.

Arithmetic between tensors (``+``, ``-``, ``*``, ``/``, ``@``) is used directly: NumPy arrays, torch
tensors and TensorFlow tensors all overload these operators in the same way.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
from typing import Any, Sequence, Tuple

import numpy as np

from .orthogonalize import gram_schmidt


#: dtypes stock Horovod 0.28.1 cannot all-reduce: it has no bfloat16 reduction (``horovod.torch``
#: raises "Tensor type torch.BFloat16Tensor is not supported"). The one statement of that limit.
HOROVOD_ALLREDUCE_UNSUPPORTED = frozenset({"bfloat16"})


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
    process_set: Any = None  # the framework's Horovod process set (None: the reference's ranks)


class Backend(abc.ABC):
    """Tensor operations and collectives for one framework.

    ``deferred`` says how collectives behave. True (PyTorch, NumPy): ``allreduce_async`` returns a
    handle and ``wait`` blocks until the result is there, so a compressor may hand Horovod an output
    tensor that it fills in place later. False (TensorFlow graphs): ``allreduce_async`` returns a
    symbolic result, ``wait`` is the identity, and ordering is the graph's business.
    """

    deferred: bool = True
    #: dtypes the all-reduce cannot carry (`HOROVOD_ALLREDUCE_UNSUPPORTED` for Horovod's backends)
    allreduce_unsupported_dtypes: frozenset = frozenset()

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
    def zeros(self, shape: Sequence[int], dtype_name: str, like=None):
        """Zeros, on ``like``'s device when given."""

    @abc.abstractmethod
    def sum(self, tensor):
        """Sum of all elements (a scalar tensor)."""

    @abc.abstractmethod
    def sqrt(self, tensor):
        ...

    @abc.abstractmethod
    def where(self, condition, a, b):
        """Elementwise ``a`` where ``condition`` (a boolean tensor, broadcast) holds, else ``b``."""

    @abc.abstractmethod
    def rows(self, matrix) -> list:
        """The rows of a 2-D tensor as a list of 1-D tensors."""

    @abc.abstractmethod
    def stack_rows(self, rows: Sequence) -> Any:
        """Inverse of `rows`: a 2-D tensor, one row per element."""

    @abc.abstractmethod
    def concat(self, tensors: Sequence) -> Any:
        """The tensors joined along their first axis (1-D: end to end; 2-D: rows after rows)."""

    # ------------------------------------------------------------------ products for the low-rank codecs
    # PowerSGD keeps its factors as r×n and r×m row-major tensors ("transposed factors"): every
    # product then has the r-row factor on the left, the shape for which the BLAS kernels measured
    # here run at memory speed (``M @ Q`` with Q m×r took 6x longer than ``(Qᵀ Mᵀ)ᵀ``). Methods
    # ending in ``_`` may write into their first argument; callers use the returned value, which on
    # functional backends (TensorFlow) is a new tensor.
    def matmul(self, a, b, transpose_a: bool = False, transpose_b: bool = False):
        """``op(a) @ op(b)`` where op transposes when asked (no copy of the transposed operand where
        the framework can pass the flag to BLAS)."""
        return (self.transpose(a) if transpose_a else a) @ (self.transpose(b) if transpose_b else b)

    def outer(self, left_t, right_t, out=None):
        """``left_tᵀ @ right_t`` (r×n, r×m -> n×m), written into ``out`` (an n×m tensor whose content
        is ignored) where the framework can, to spare an allocation."""
        return self.matmul(left_t, right_t, transpose_a=True)

    def orthogonalize_rows(self, factor_t, epsilon: float):
        """`horovod_powersgd.core.orthogonalize`: the rows of an r×n tensor made orthonormal, zero
        where none is left. Default: Gram–Schmidt on the ops above; a backend with a QR
        decomposition may use the identity stated there instead."""
        return gram_schmidt(self, factor_t, epsilon)

    def row_norms(self, matrix):
        """The Euclidean norm of each row of a 2-D tensor, as an r×1 column (broadcasts against the
        matrix). Default: one `sum` per row."""
        norms = [self.sqrt(self.sum(row * row)) for row in self.rows(matrix)]
        return self.reshape(self.stack_rows(norms), (-1, 1))

    def pad(self, flat, length: int):
        """A 1-D tensor zero-padded at the end to ``length`` elements."""
        raise NotImplementedError(f"{type(self).__name__} has no pad")

    def add_(self, target, value):
        """``target + value``, in place into ``target`` where the framework can."""
        return target + value

    def sub_(self, target, value):
        """``target − value``, in place into ``target`` where the framework can."""
        return target - value

    def lerp_(self, target, end, weight: float):
        """``target + weight·(end − target)``, in place into ``target`` where the framework can."""
        return target + weight * (end - target)

    def sub_outer_(self, target, left_t, right_t):
        """``target − left_tᵀ @ right_t``, in place into ``target`` where the framework can."""
        return target - self.outer(left_t, right_t)

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
    def new_state(self, value, key: str = ""):
        """A mutable slot for per-tensor state (error buffer, Q, counters) holding ``value``.

        ``key`` is a stable, rank-independent name for the slot (``<tensor name>/<field>``);
        compressors create slots through `Compressor._new_slot`, which adapters extend."""
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

    # ------------------------------------------------------------------ non-finite steps
    def finite_flag(self, tensor):
        """A boolean scalar *tensor* (no host round trip, usable in ``where``): no element is inf or
        NaN. Default from the abstract ops (x·0 is 0 for finite x, NaN otherwise)."""
        return self.sum(tensor * 0) == 0

    def all_true(self, flags: Sequence):
        """Logical AND of boolean scalar tensors (at least one)."""
        result = flags[0]
        for flag in flags[1:]:
            result = result & flag
        return result

    # ------------------------------------------------------------------ control flow
    def cond(self, predicate, true_fn, false_fn):
        """``true_fn()`` if ``predicate`` else ``false_fn()``; graph backends build both branches."""
        return true_fn() if predicate else false_fn()

    def seeded_normal(self, shape: Sequence[int], seed: int, step, like=None):
        """Standard normal float32 tensor determined by (seed, step) alone: the same on every rank,
        without touching any global RNG. ``step`` may be a tensor on graph backends."""
        rng = np.random.default_rng([seed, int(step)])
        return self.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32), like=like)

    def seeded_indices(self, size: int, k: int, seed: int, step, like=None):
        """``k`` distinct indices into ``range(size)``, sorted, int64, determined by (seed, step)
        alone: the same on every rank, without touching any global RNG (Random-k's shared choice)."""
        rng = np.random.default_rng([seed, int(step)])
        indices = np.sort(rng.choice(size, size=k, replace=False)).astype(np.int64)
        return self.from_numpy(indices, like=like)

    # ------------------------------------------------------------------ sign and sparse ops
    # Used by the baseline compressors (Signum, SignNorm, TopK, RandomK, BF16). Not abstract: a
    # backend without them still runs PowerSGD.
    def abs(self, tensor):
        raise NotImplementedError(f"{type(self).__name__} has no abs")

    def sign(self, tensor):
        """Elementwise sign in {-1, 0, +1} (0 for 0)."""
        raise NotImplementedError(f"{type(self).__name__} has no sign")

    def pack_signs(self, tensor):
        """The signs of a 1-D float tensor as bits, 1 where the element is >= 0, most significant
        bit first, zero-padded to whole bytes: a uint8 tensor of ceil(len / 8) elements."""
        raise NotImplementedError(f"{type(self).__name__} has no pack_signs")

    def unpack_signs(self, packed, count: int):
        """Inverse of `pack_signs` row by row: uint8 (rows, bytes) -> float32 (rows, count) of ±1."""
        raise NotImplementedError(f"{type(self).__name__} has no unpack_signs")

    def signed_sum(self, packed, count: int, weights):
        """Σ_i weights[i]·s_i for the rows s_i ∈ {−1, +1}^count of `unpack_signs` (``packed``:
        uint8 (rows, bytes); ``weights``: a 1-D float tensor, one per row): a 1-D tensor of
        ``weights``' dtype. Default: the (1, rows) @ (rows, count) product."""
        signs = self.cast(self.unpack_signs(packed, count), self.dtype_name(weights))
        return self.reshape(self.reshape(weights, (1, -1)) @ signs, (-1,))

    def sign_(self, tensor):
        """`sign`, in place into ``tensor`` where the framework can."""
        return self.sign(tensor)

    def topk_indices(self, tensor, k: int):
        """Indices (int64, any order) of the ``k`` largest-magnitude elements of a 1-D tensor."""
        raise NotImplementedError(f"{type(self).__name__} has no topk_indices")

    def gather(self, tensor, indices):
        """``tensor[indices]`` for a 1-D tensor and integer indices."""
        raise NotImplementedError(f"{type(self).__name__} has no gather")

    def scatter_add(self, indices, values, size: int):
        """A 1-D tensor of ``size`` zeros (``values``' dtype and device) with each ``values[i]``
        added at ``indices[i]``; repeated indices add up."""
        raise NotImplementedError(f"{type(self).__name__} has no scatter_add")

    def zero_at_(self, tensor, indices):
        """A 1-D ``tensor`` with the entries at (distinct) ``indices`` set to zero, in place where
        the framework can. Default: ``tensor − scatter_add(indices, tensor[indices])``."""
        return tensor - self.scatter_add(indices, self.gather(tensor, indices), self.shape(tensor)[0])

    def bitcast(self, tensor, dtype_name: str):
        """The same bits viewed as another dtype of the same width (bfloat16 <-> int16)."""
        raise NotImplementedError(f"{type(self).__name__} has no bitcast")

    # ------------------------------------------------------------------ collectives
    @abc.abstractmethod
    def allreduce_async(self, tensor, name: str, identity: TensorIdentity):
        """Start an all-reduce of ``tensor`` with the same op and process set as ``identity``."""

    @abc.abstractmethod
    def wait(self, handle):
        """The result of a collective started by this backend."""

    def grouped_allreduce_async(self, tensors: Sequence, name: str, identity: TensorIdentity):
        """Start an all-reduce of several tensors that runs as *one* fused round (Horovod's grouped
        all-reduce: no tensor of the group waits for, or is split from, the others). Every rank
        must pass the same tensors in the same order. Default: one all-reduce each."""
        return [self.allreduce_async(t, f"{name}.{i}", identity) for i, t in enumerate(tensors)]

    def wait_group(self, handle) -> list:
        """The results of `grouped_allreduce_async`, in order."""
        return [self.wait(h) for h in handle]

    def allgather_async(self, tensor, name: str, identity: TensorIdentity):
        """Start an all-gather (concatenation along dim 0, in rank order)."""
        raise NotImplementedError(f"{type(self).__name__} has no all-gather")

    # ------------------------------------------------------------------ timing
    def clock(self) -> float:
        """Seconds, for the compressor's own time accounting."""
        import time

        return time.perf_counter()


class TrafficOnly:
    """The backend of a compressor built only to describe its traffic (``transfers``,
    ``wire_bytes``: functions of the configuration and the shape alone), as the advisor builds
    them: Horovod's facts, and no tensor operation or collective."""

    deferred = True
    allreduce_unsupported_dtypes = HOROVOD_ALLREDUCE_UNSUPPORTED

    def __getattr__(self, name):
        raise TypeError(f"this compressor was built to describe its traffic only (no backend); "
                        f"it cannot run {name!r}: build it from horovod_powersgd.torch or .tensorflow")


class _Slot:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def compute_dtype(dtype_name: str) -> str:
    """Low-precision gradients are compressed in float32 and returned in their own dtype."""
    return "float32" if dtype_name in ("float16", "bfloat16") else dtype_name


def itemsize(dtype_name: str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int16": 2, "int32": 4, "int64": 8,
            "uint8": 1, "int8": 1, "bool": 1}[dtype_name]
