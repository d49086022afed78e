"""`Backend` for PyTorch tensors and ``horovod.torch`` collectives."""
from __future__ import annotations

import numpy as np
import torch

from ..core.backend import Backend, ReduceOp, TensorIdentity
from .naming import ParameterNamer

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}


class TorchBackend(Backend):
    deferred = True  # Horovod's torch collectives return handles; outputs are filled in place later

    def __init__(self, owner):
        self.namer = ParameterNamer(owner)

    def identify(self, tensor) -> TensorIdentity:
        return self.namer.identify(tensor)

    def shape(self, tensor):
        return tuple(tensor.shape)

    def dtype_name(self, tensor) -> str:
        return str(tensor.dtype).replace("torch.", "")

    def cast(self, tensor, dtype_name):
        return tensor.to(_DTYPES[dtype_name])

    def reshape(self, tensor, shape):
        return tensor.reshape(tuple(shape))

    def transpose(self, matrix):
        return matrix.t()

    def from_numpy(self, array, like=None):
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor if like is None else tensor.to(like.device)

    def to_numpy(self, tensor):
        return tensor.detach().cpu().numpy()

    def zeros(self, shape, dtype_name):
        return torch.zeros(tuple(shape), dtype=_DTYPES[dtype_name])

    def sum(self, tensor):
        return tensor.sum()

    def sqrt(self, tensor):
        return tensor.sqrt()

    def columns(self, matrix):
        return list(matrix.unbind(1))

    def stack_columns(self, columns):
        return torch.stack(list(columns), dim=1)

    def empty(self, shape, dtype_name, like):
        return torch.empty(tuple(shape), dtype=_DTYPES[dtype_name], device=like.device)

    def fill(self, out, value):
        out.copy_(value)

    def to_device_of(self, tensor, like):
        return tensor if tensor.device == like.device else tensor.to(like.device)

    def export_tensor(self, tensor):
        # torch tensors (not NumPy arrays) so that torch.load(weights_only=True) accepts the state
        return tensor.detach().cpu().clone()

    def import_tensor(self, value):
        return torch.as_tensor(value).clone()

    def allreduce_async(self, tensor, name, identity):
        import horovod.torch as hvd

        op = hvd.Average if identity.op is ReduceOp.AVERAGE else hvd.Sum
        return hvd.allreduce_async(tensor.contiguous(), name=name, op=op,
                                   process_set=identity.process_set)

    def allgather_async(self, tensor, name, identity):
        import horovod.torch as hvd

        return hvd.allgather_async(tensor.contiguous(), name=name, process_set=identity.process_set)

    def wait(self, handle):
        import horovod.torch as hvd

        return hvd.synchronize(handle)
