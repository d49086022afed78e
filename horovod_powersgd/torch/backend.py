"""`Backend` for PyTorch tensors and ``horovod.torch`` collectives."""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..core.backend import HOROVOD_ALLREDUCE_UNSUPPORTED, Backend
from ..core.orthogonalize import no_direction_below
from ..core.selection import largest_indices
from ..glue import horovod_op
from ..machine import cpu_vendor, torch_blas

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64, "uint8": torch.uint8, "int16": torch.int16,
           "int32": torch.int32, "int64": torch.int64}
_BIT_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)  # MSB first, as numpy.packbits


@functools.lru_cache(maxsize=None)
def rank_one_updates_win() -> bool:
    """Whether the CPU outer product of r <= 2 is faster as r rank-1 updates (BLAS ger) than as one
    k = r GEMM. Into a cold n×m output, MKL's k = 2 GEMM ran at half the speed of two ``addr_`` on an
    AMD EPYC, and at twice their speed on an Intel Xeon (AVX-512 both; MKL picks its fast GEMM
    kernels on Intel CPUs only): ger on MKL with another vendor's CPU, GEMM everywhere else. A
    fact of the host, so identical hosts choose alike and write bit-identical gradients."""
    return torch_blas().startswith("mkl") and cpu_vendor() not in ("GenuineIntel", "")


class TorchBackend(Backend):
    deferred = True  # Horovod's torch collectives return handles; outputs are filled in place later
    allreduce_unsupported_dtypes = HOROVOD_ALLREDUCE_UNSUPPORTED

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
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # e.g. np.frombuffer: a tensor sharing it could be written to
            array = array.copy()
        tensor = torch.from_numpy(array)
        return tensor if like is None else tensor.to(like.device)

    def to_numpy(self, tensor):
        return tensor.detach().cpu().numpy()

    def zeros(self, shape, dtype_name, like=None):
        return torch.zeros(tuple(shape), dtype=_DTYPES[dtype_name],
                           device=None if like is None else like.device)

    def sum(self, tensor):
        return tensor.sum()

    def sqrt(self, tensor):
        return tensor.sqrt()

    def where(self, condition, a, b):
        return torch.where(condition, a, b)

    def finite_flag(self, tensor):
        # min and max propagate NaN, and an inf is one of them: one pass and no boolean temporary,
        # 8x faster than isfinite(tensor).all() on a 6 MB gradient (docs, "The codec at the memory floor")
        if tensor.numel() == 0 or not tensor.is_floating_point():
            return torch.ones((), dtype=torch.bool, device=tensor.device)
        low, high = torch.aminmax(tensor)
        return torch.isfinite(low) & torch.isfinite(high)

    def all_true(self, flags):
        return torch.stack([flag.to(flags[0].device) for flag in flags]).all()

    def rows(self, matrix):
        return list(matrix.unbind(0))

    def stack_rows(self, rows):
        return torch.stack(list(rows), dim=0)

    def concat(self, tensors):
        return torch.cat(list(tensors), dim=0)

    def row_norms(self, matrix):
        return torch.linalg.vector_norm(matrix, dim=1, keepdim=True)

    # Products: the forms below are the fast ones measured with MKL (docs, "The codec at the
    # memory floor"): `P @ Q.t()` or `torch.mm(..., out=)` ran up to 2x slower than ``addmm_``.
    # `matmul` is the base class's: ``.t()`` is a view, so BLAS gets a transpose flag, not a copy.
    def outer(self, left_t, right_t, out=None):
        if out is None:
            out = torch.empty((left_t.shape[1], right_t.shape[1]), dtype=left_t.dtype,
                              device=left_t.device)
        if left_t.shape[0] > 2 or left_t.device.type != "cpu" or not rank_one_updates_win():
            return out.addmm_(left_t.t(), right_t, beta=0)  # beta=0: out's old content is ignored
        out.addr_(left_t[0], right_t[0], beta=0)
        for left, right in zip(left_t[1:], right_t[1:]):
            out.addr_(left, right)
        return out

    def orthogonalize_rows(self, factor_t, epsilon):
        # core.orthogonalize's QR form: P̂ = Q·diag(sign(R_jj)), LAPACK's geqrf + orgqr
        if factor_t.shape[0] > factor_t.shape[1]:
            return super().orthogonalize_rows(factor_t, epsilon)
        Q, R = torch.linalg.qr(factor_t.t())
        diagonal = R.diagonal()
        if bool((diagonal.abs() <= no_direction_below(self, factor_t, epsilon)).any()):
            # a (near-)zero column: see core.orthogonalize
            return super().orthogonalize_rows(factor_t, epsilon)
        return (Q * diagonal.sign()).t()

    def pad(self, flat, length):
        return torch.nn.functional.pad(flat, (0, length - flat.shape[0]))

    def add_(self, target, value):
        return target.add_(value) if _writable(target, value) else target + value

    def sub_(self, target, value):
        return target.sub_(value) if _writable(target, value) else target - value

    def lerp_(self, target, end, weight):
        return target.lerp_(end, weight) if _writable(target, end) else super().lerp_(target, end, weight)

    def sub_outer_(self, target, left_t, right_t):
        return target.addmm_(left_t.t(), right_t, alpha=-1)

    def abs(self, tensor):
        return tensor.abs()

    def sign(self, tensor):
        return tensor.sign()

    # On the CPU NumPy's packbits / unpackbits, which work a byte at a time, replace the shift-and-sum
    # below: 17x faster packing and 30x faster unpacking measured (docs, "The codec at the
    # memory floor"); both share the tensor's memory, no copy
    def pack_signs(self, tensor):
        if tensor.device.type == "cpu":
            return torch.from_numpy(np.packbits(tensor.detach().reshape(-1).numpy() >= 0))
        bits = (tensor.reshape(-1) >= 0).to(torch.uint8)
        bits = torch.nn.functional.pad(bits, (0, -bits.numel() % 8)).reshape(-1, 8)
        return (bits << _BIT_SHIFTS.to(bits.device)).sum(1, dtype=torch.uint8)

    def unpack_signs(self, packed, count):
        return _bit_rows(packed, count).to(torch.float32).mul_(2).sub_(1)

    def signed_sum(self, packed, count, weights):
        if packed.device.type != "cpu":
            return super().signed_sum(packed, count, weights)
        # Σ_i w_i·(2·bit_i − 1) = Σ_i 2·w_i·bit_i − Σ_i w_i, accumulated from the uint8 bit rows
        # into one float buffer: no (rows × count) float matrix, whose pages cost more than the sum
        bits = _bit_rows(packed, count)
        w = weights.detach().cpu().double().tolist()
        out = bits[0].to(weights.dtype).mul_(2 * w[0])
        for row, weight in zip(bits[1:], w[1:]):
            out.add_(row, alpha=2 * weight)
        return out.sub_(sum(w))

    def sign_(self, tensor):
        return tensor.sign_() if not tensor.requires_grad else tensor.sign()

    def topk_indices(self, tensor, k):
        magnitude = tensor.detach().abs()
        if magnitude.device.type == "cpu":  # sampled threshold + NumPy: 16x torch.topk here
            return torch.from_numpy(largest_indices(magnitude.numpy(), k))
        return torch.topk(magnitude, k, sorted=False).indices

    def zero_at_(self, tensor, indices):
        return (tensor if _writable(tensor, tensor) else tensor.clone()).index_fill_(0, indices.long(), 0)

    def gather(self, tensor, indices):
        return tensor[indices.long()]

    def scatter_add(self, indices, values, size):
        out = torch.zeros(size, dtype=values.dtype, device=values.device)
        return out.index_add_(0, indices.long(), values)

    def bitcast(self, tensor, dtype_name):
        return tensor.view(_DTYPES[dtype_name])

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

        return hvd.allreduce_async(tensor.contiguous(), name=name, op=horovod_op(identity.op, hvd),
                                   process_set=identity.process_set)

    def grouped_allreduce_async(self, tensors, name, identity):
        import horovod.torch as hvd

        return hvd.grouped_allreduce_async([t.contiguous() for t in tensors], name=name,
                                           op=horovod_op(identity.op, hvd),
                                           process_set=identity.process_set)

    def wait_group(self, handle):
        import horovod.torch as hvd

        return list(hvd.synchronize(handle))

    def allgather_async(self, tensor, name, identity):
        import horovod.torch as hvd

        return hvd.allgather_async(tensor.contiguous(), name=name, process_set=identity.process_set)

    def wait(self, handle):
        import horovod.torch as hvd

        return hvd.synchronize(handle)


def _bit_rows(packed, count):
    """uint8 (rows, bytes) of packed signs -> uint8 (rows, count) of their bits, MSB first."""
    if packed.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(packed.numpy(), axis=1, count=count))
    bits = (packed.unsqueeze(-1) >> _BIT_SHIFTS.to(packed.device)) & 1
    return bits.reshape(packed.shape[0], -1)[:, :count]


def _writable(target, value) -> bool:
    """Whether ``target`` may take ``value``'s result in place: not under autograd, the same dtype,
    and a plain contiguous layout (not an expanded or strided view)."""
    return not target.requires_grad and target.dtype == value.dtype and target.is_contiguous()
