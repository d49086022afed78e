"""`Backend` on NumPy arrays: the reference implementation of every compressor."""
from __future__ import annotations

import numpy as np

from ..core.backend import Backend


class NumpyBackend(Backend):
    """NumPy tensors plus a communicator (`ThreadGroup` rank or `MPICommunicator`).

    Horovod knows a gradient by its parameter; here the caller says which array is which by passing
    its identity to ``compress`` (the reference driver, `reduce_gradients`, does it for you).
    """

    deferred = True

    def __init__(self, communicator):
        self.comm = communicator

    def shape(self, tensor):
        return tuple(np.shape(tensor))

    def dtype_name(self, tensor) -> str:
        dtype = np.asarray(tensor).dtype
        return "bfloat16" if dtype.name == "bfloat16" else dtype.name

    def cast(self, tensor, dtype_name):
        return np.asarray(tensor).astype(_np_dtype(dtype_name), copy=False)

    def reshape(self, tensor, shape):
        return np.reshape(tensor, tuple(shape))

    def transpose(self, matrix):
        return np.transpose(matrix)

    def from_numpy(self, array, like=None):
        return np.array(array, copy=True)

    def to_numpy(self, tensor):
        return np.asarray(tensor)

    def zeros(self, shape, dtype_name, like=None):
        return np.zeros(tuple(shape), dtype=_np_dtype(dtype_name))

    def sum(self, tensor):
        return np.sum(tensor)

    def sqrt(self, tensor):
        return np.sqrt(tensor)

    def where(self, condition, a, b):
        return np.where(condition, a, b)

    def finite_flag(self, tensor):
        return np.isfinite(tensor).all()

    def rows(self, matrix):
        return [matrix[i] for i in range(matrix.shape[0])]

    def stack_rows(self, rows):
        return np.stack(rows, axis=0)

    def concat(self, tensors):
        return np.concatenate(list(tensors), axis=0)

    def row_norms(self, matrix):
        return np.linalg.norm(matrix, axis=1, keepdims=True)

    # In place like PyTorch, so the reference exercises the same buffer reuse as the fast path.
    def outer(self, left_t, right_t, out=None):
        return np.matmul(np.transpose(left_t), right_t, out=out)

    def pad(self, flat, length):
        return np.pad(flat, (0, length - np.shape(flat)[0]))

    def add_(self, target, value):
        return np.add(target, value, out=target) if _writable(target, value) else target + value

    def lerp_(self, target, end, weight):
        if not _writable(target, end):
            return super().lerp_(target, end, weight)
        target += weight * (end - target)
        return target

    def sub_(self, target, value):
        return np.subtract(target, value, out=target) if _writable(target, value) else target - value

    def sub_outer_(self, target, left_t, right_t):
        product = np.transpose(left_t) @ right_t
        return np.subtract(target, product, out=target) if _writable(target, product) \
            else target - product

    def abs(self, tensor):
        return np.abs(tensor)

    def sign(self, tensor):
        return np.sign(tensor)

    def pack_signs(self, tensor):
        return np.packbits(np.asarray(tensor) >= 0)  # big-endian bit order: MSB first

    def unpack_signs(self, packed, count):
        bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1, count=count)
        return bits.astype(np.float32) * 2 - 1

    def topk_indices(self, tensor, k):
        magnitude = np.abs(tensor)
        return np.argpartition(-magnitude, k - 1)[:k].astype(np.int64)

    def gather(self, tensor, indices):
        return np.asarray(tensor)[np.asarray(indices)]

    def zero_at_(self, tensor, indices):
        out = tensor if _writable(tensor, tensor) else np.array(tensor)
        out[np.asarray(indices, dtype=np.int64)] = 0
        return out

    def scatter_add(self, indices, values, size):
        out = np.zeros(size, dtype=np.asarray(values).dtype)
        np.add.at(out, np.asarray(indices, dtype=np.int64), values)  # unbuffered: repeats add up
        return out

    def bitcast(self, tensor, dtype_name):
        return np.asarray(tensor).view(_np_dtype(dtype_name))

    def empty(self, shape, dtype_name, like=None):
        return np.empty(tuple(shape), dtype=_np_dtype(dtype_name))

    def fill(self, out, value):
        np.copyto(out, value)

    def allreduce_async(self, tensor, name, identity):
        return self.comm.allreduce_async(np.asarray(tensor), name, identity.op)

    def allgather_async(self, tensor, name, identity):
        return self.comm.allgather_async(np.asarray(tensor), name)

    def wait(self, handle):
        return self.comm.wait(handle)


def _writable(target, value) -> bool:
    return isinstance(target, np.ndarray) and target.flags.writeable \
        and np.result_type(target, value) == target.dtype


def _np_dtype(name: str):
    if name == "bfloat16":  # NumPy has none; ml_dtypes (a TensorFlow/JAX dependency) adds a real one
        try:
            import ml_dtypes
        except ImportError as exc:
            raise TypeError("the NumPy reference backend needs the ml_dtypes package for bfloat16 "
                            "(pip install ml_dtypes)") from exc
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
