"""Horovod Elastic: a compressor is part of ``hvd.elastic.TorchState``.

    state = hvd.elastic.TorchState(model=model, optimizer=opt, compression=compression, epoch=0)

Importing ``horovod_powersgd.torch`` registers `CompressorStateHandler` for every compressor in
Horovod's handler registry, so the state commits, restores and syncs it like the model:

* ``commit()`` keeps a copy of this process's `state_dict` (host memory);
* ``restore()`` (after a failed collective) rolls back to the last commit;
* ``sync()`` (at start and after every reset) applies `Compressor.synchronized_state`: configuration,
  step counters and warm-start factors from rank 0, this process's own error buffers kept (zero for
  a process that just joined). The next step checks again that every rank's compressor agrees.
"""
from __future__ import annotations

import copy

from ..core.compressor import Compressor


def _handler_class():
    from horovod.torch.elastic.state import StateHandler

    class CompressorStateHandler(StateHandler):
        def __init__(self, compressor):
            super().__init__(compressor)
            self._saved = copy.deepcopy(compressor.state_dict())

        def save(self):
            self._saved = copy.deepcopy(self.value.state_dict())

        def restore(self):
            self.value.load_state_dict(copy.deepcopy(self._saved))

        def sync(self):
            import horovod.torch as hvd

            root = hvd.broadcast_object(self.value.state_dict() if hvd.rank() == 0 else None,
                                        root_rank=0, name="horovod_powersgd.elastic.sync")
            self.value.load_state_dict(self.value.synchronized_state(root))

    return CompressorStateHandler


def register() -> None:
    """Add the compressor handler to horovod.torch's elastic registry (idempotent)."""
    from horovod.torch.elastic.state import get_handler_registry

    registry = get_handler_registry()
    if not any(kind is Compressor for kind, _ in registry):
        registry.append((Compressor, _handler_class()))
