"""The all-gather pattern on Horovod's one-all-reduce hook.

Horovod's optimizers only ever all-REDUCE what ``compress`` returns, but sign and top-k messages
cannot be summed: every rank needs every other rank's message. Without patching Horovod the only way
is for ``compress`` to start the all-gather itself (asynchronously, named after the parameter, so
ranks match it by name and Horovod fuses it with the step's other collectives) and to hand Horovod a
1-element float32 placeholder, whose all-reduce result is ignored; ``decompress`` then waits for the
all-gather and decodes. The placeholder's 4 bytes per tensor are counted as sent.

The gathered tensor is the ranks' messages concatenated in rank order; messages have the same shape
on every rank, so row i of ``reshape(gathered, (N, -1))`` is rank i's.
"""
from __future__ import annotations

import numpy as np

from .backend import ReduceOp, TensorIdentity
from .compressor import poison
from .wire import PLACEHOLDER, PLACEHOLDER_BYTES, Transfer


def placeholder(backend, like):
    """What an all-gather compressor returns to Horovod's all-reduce: one float32 that is 0 when
    every element of the local input ``like`` is finite and NaN otherwise. Its reduced value tells
    every rank identically whether any rank's input was non-finite (a sign or a top-k message could
    not: a NaN has a sign bit and may not be among the top k)."""
    return backend.reshape(backend.cast(poison(backend, like), "float32"), (1,))


def gathered(*messages) -> list:
    """The `Transfer`s of an all-gather compressor for one gradient: the placeholder Horovod
    all-reduces and each ``(what, bytes)`` message all-gathered, all in round 0 (`compress` starts
    them during backprop, next to Horovod's own all-reduce)."""
    return [Transfer("allreduce", PLACEHOLDER_BYTES, 0, PLACEHOLDER)] + [
        Transfer("allgather", int(nbytes), 0, what) for what, nbytes in messages]


def start_allgather(compressor, tensor, tag: str, identity: TensorIdentity):
    """Submit the all-gather of ``tensor`` under ``<tag>.<parameter name>`` and count its bytes."""
    compressor._sent(tensor)
    return compressor.backend.allgather_async(tensor, f"{tag}.{identity.name}", identity)


def per_rank(backend, gathered, identity: TensorIdentity):
    """The gathered messages as a (N, message size) matrix, row i from rank i."""
    return backend.reshape(gathered, (identity.group_size, -1))


def combine(backend, rows, weights, like):
    """Σ_i weights[i] · rows[i] as a 1-D tensor (a (1, N) @ (N, d) product: one kernel, any
    framework)."""
    weights = backend.from_numpy(np.asarray(weights, dtype=np.float32).reshape(1, -1), like=like)
    return backend.reshape(backend.cast(weights, backend.dtype_name(rows)) @ rows, (-1,))


def mean_weight(identity: TensorIdentity) -> float:
    """Factor turning the sum over ranks into what Horovod's op would have produced."""
    return 1.0 / identity.group_size if identity.op is ReduceOp.AVERAGE else 1.0
