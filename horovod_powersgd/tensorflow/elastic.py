"""Horovod Elastic for TensorFlow: the compressor as part of the elastic state.

    from horovod_powersgd.tensorflow.elastic import TensorFlowKerasState

    state = TensorFlowKerasState(model, optimizer, compression=compression, epoch=0)

Drop-in subclasses of Horovod's ``horovod.tensorflow.elastic.TensorFlowKerasState`` and
``TensorFlowState`` and of ``horovod.tensorflow.keras.elastic.KerasState`` that take
``compression=``. Horovod's own classes have no handler registry (PyTorch's ``TorchState`` has one,
see `horovod_powersgd.torch.elastic`): they pickle and broadcast extra arguments as plain attributes,
so a compressor there fails at the first ``sync()`` (``cannot pickle 'weakref.ReferenceType'``) —
and a picklable one would be swapped for a copy that the traced training step never reads.

Here the compressor follows the same rule as in PyTorch:

* ``commit()`` keeps a copy of this process's `state_dict` (host memory);
* ``restore()`` (after a failed collective) rolls back to it. Tensors the commit had not seen yet
  keep their current state: a traced step cannot go back to not having it;
* ``sync()`` (at start and after every reset) applies `Compressor.synchronized_state` to rank 0's
  state: configuration, step counters and warm-start factors from rank 0, this process's own error
  buffers kept (zero for a process that just joined); the result counts as committed, like the
  model's variables that Horovod broadcasts there.

Two things differ from PyTorch because Horovod traces the compressor once per process and keeps the
trace. State lands in the variables that trace captured (see ``TensorFlowBackend.new_state``). And
the ranks' agreement on class and configuration, which a compressor checks with a collective while
its first step is traced, is checked in ``sync()`` instead, on every rank: survivors never trace
again, so a joiner checking alone at its first trace would wait forever. (That first-trace check also
refuses restored state whose tensor names match no variable; a joiner's names come from rank 0,
which runs the same script, and are not checked again.)

Horovod's own stateless compressors (``hvd.Compression.fp16``) are accepted and need nothing.
"""
from __future__ import annotations

import copy

from horovod.tensorflow.elastic import TensorFlowKerasState as _HorovodKerasState
from horovod.tensorflow.elastic import TensorFlowState as _HorovodState

from ..core.agreement import ConfigMismatchError, description, explain
from ..core.compressor import Compressor
from .backend import TensorFlowBackend

_SYNC_NAME = "horovod_powersgd.tensorflow.elastic.sync"
_AGREE_NAME = "horovod_powersgd.tensorflow.elastic.agree"


def _checked(compression):
    if isinstance(compression, Compressor) and not isinstance(compression.backend, TensorFlowBackend):
        raise TypeError(f"compression={type(compression).__module__}.{type(compression).__name__} "
                        f"is not a TensorFlow compressor; use horovod_powersgd.tensorflow's")
    return compression


def _sync_compressor(compression) -> None:
    """Every rank: check that all built ``compression`` alike (`ConfigMismatchError` on every rank
    otherwise, before anything is loaded), then take rank 0's shared state and keep its own errors."""
    import horovod.tensorflow as hvd

    described = hvd.allgather_object(description(compression), name=_AGREE_NAME)
    if any(d != described[0] for d in described[1:]):
        raise ConfigMismatchError(explain(described))
    root = hvd.broadcast_object(compression.state_dict() if hvd.rank() == 0 else None,
                                root_rank=0, name=_SYNC_NAME)
    compression.load_state_dict(compression.synchronized_state(root))
    # Agreement is proven: the first trace of a process that just joined must not check it again
    # (load_state_dict re-arms the check, which would be a collective of that process alone).
    compression._agreed = True


class _CompressorState:
    """Mixed in before a Horovod TensorFlow state class: adds the compressor to commit, restore and
    sync. ``compression`` is exposed as ``state.compression`` (never pickled)."""

    def __init__(self, *args, compression=None, **kwargs):
        self.compression = _checked(compression)
        self._committed_compression = self._compression_state()
        super().__init__(*args, **kwargs)

    def _stateful(self) -> bool:
        return isinstance(self.compression, Compressor)

    def _compression_state(self):
        return copy.deepcopy(self.compression.state_dict()) if self._stateful() else None

    def save(self):
        super().save()
        self._committed_compression = self._compression_state()

    def restore(self):
        super().restore()
        if self._stateful():
            committed = copy.deepcopy(self._committed_compression)
            current = self.compression.state_dict()["tensors"]
            self.compression.load_state_dict(
                {**committed, "tensors": {**current, **committed["tensors"]}})

    def sync(self):
        super().sync()
        if self._stateful():
            _sync_compressor(self.compression)
            self._committed_compression = self._compression_state()


class TensorFlowKerasState(_CompressorState, _HorovodKerasState):
    """``horovod.tensorflow.elastic.TensorFlowKerasState(model, optimizer=None, backend=None,
    **kwargs)`` with ``compression=`` (a horovod_powersgd.tensorflow compressor) in its state."""


class TensorFlowState(_CompressorState, _HorovodState):
    """``horovod.tensorflow.elastic.TensorFlowState(variables=None, session=None, **kwargs)`` with
    ``compression=`` in its state (TF2: a custom loop with ``hvd.DistributedGradientTape``)."""


def __getattr__(name):
    # KerasState imports horovod.tensorflow.keras (tf-keras): only when asked for.
    if name == "KerasState":
        from horovod.tensorflow.keras.elastic import KerasState as _HorovodKeras

        cls = type("KerasState", (_CompressorState, _HorovodKeras), {
            "__doc__": "``horovod.tensorflow.keras.elastic.KerasState(model, optimizer=None, "
                       "**kwargs)`` with ``compression=`` in its state (``model.fit`` with "
                       "Horovod's elastic Keras callbacks).",
            "__module__": __name__})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TensorFlowKerasState", "TensorFlowState", "KerasState"]
