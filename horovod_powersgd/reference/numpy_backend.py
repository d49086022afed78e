"""`Backend` on NumPy arrays: the reference implementation of every compressor."""
from __future__ import annotations

from typing import Dict

import numpy as np

from ..core.backend import Backend, ReduceOp, TensorIdentity


class NumpyBackend(Backend):
    """NumPy tensors plus a communicator (`ThreadGroup` rank or `MPICommunicator`).

    Horovod knows a gradient by its parameter; here the caller says which array is which with
    `name_tensor` (the reference driver does it for you).
    """

    deferred = True

    def __init__(self, communicator, op: ReduceOp = ReduceOp.AVERAGE):
        self.comm = communicator
        self.op = op
        self._names: Dict[int, str] = {}

    def name_tensor(self, array, name: str) -> None:
        self._names[id(array)] = name

    def identify(self, tensor) -> TensorIdentity:
        name = self._names.pop(id(tensor), None)
        if name is None:
            raise KeyError("NumpyBackend: name the array with name_tensor() before compressing it")
        return TensorIdentity(name, self.op, self.comm.size)

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

    def zeros(self, shape, dtype_name):
        return np.zeros(tuple(shape), dtype=_np_dtype(dtype_name))

    def sum(self, tensor):
        return np.sum(tensor)

    def sqrt(self, tensor):
        return np.sqrt(tensor)

    def columns(self, matrix):
        return [matrix[:, i] for i in range(matrix.shape[1])]

    def stack_columns(self, columns):
        return np.stack(columns, axis=1)

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


def _np_dtype(name: str):
    if name == "bfloat16":
        raise TypeError("the NumPy reference backend has no bfloat16")
    return np.dtype(name)
