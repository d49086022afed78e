"""Drive a compressor the way Horovod's optimizer does, on NumPy arrays."""
from __future__ import annotations

from typing import Dict

import numpy as np

from ..core.backend import ReduceOp, TensorIdentity


def reduce_gradients(compressor, gradients: Dict[str, np.ndarray],
                     op: ReduceOp = ReduceOp.AVERAGE) -> Dict[str, np.ndarray]:
    """One step of Horovod's pattern for every named gradient: compress all, all-reduce each result
    with ``op`` (Horovod's optimizers only ever all-reduce what ``compress`` returns; all-gather
    compressors start their all-gathers inside ``compress``), then decompress all in the same order.

    ``compressor.backend`` must be a `NumpyBackend`. Returns the reduced gradients by name.
    """
    backend = compressor.backend
    submitted = []
    for name, grad in gradients.items():
        grad = np.array(grad, copy=True)  # the compressor may use it as scratch, as Horovod's may
        wire, ctx = compressor.compress(grad, TensorIdentity(name, op, backend.comm.size))
        handle = backend.comm.allreduce_async(wire, f"horovod.{name}", ctx.identity.op)
        submitted.append((name, handle, ctx))
    results = {}
    for name, handle, ctx in submitted:
        results[name] = compressor.decompress(backend.comm.wait(handle), ctx)
    # Deferred outputs are filled once the last tensor is decompressed: copy only now.
    return {name: np.array(value, copy=True) for name, value in results.items()}
