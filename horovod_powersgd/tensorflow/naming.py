"""Which variable is this gradient? — for TensorFlow gradients handed to ``compress``.

Horovod's TensorFlow integration (``DistributedGradientTape``, the legacy and Keras
``DistributedOptimizer``, local gradient aggregation) reduces gradients in one function,
``allreduce_grads(grads, vars)``, which calls ``compress`` for each gradient inside a ``tf.cond``
branch while it is traced. We find that frame on the call stack and match the gradient by identity in
``grads``: the variable at the same index owns it. The variable's name (made unique in order of first
sight) keys the state, so retracing — new input shapes, a second ``tf.function`` — finds the same error
buffer for the same variable. ``op`` and ``process_set`` come from the ``allreduce`` call that invoked
us. Nothing in Horovod is patched.
"""
from __future__ import annotations

import sys

from ..core.backend import TensorIdentity
from ..glue import identity

_MAX_FRAMES = 80  # tf.cond tracing and AutoGraph put ~30 frames between allreduce_grads and us


class VariableNamer:
    """Names gradients for one compressor, which passes itself (``compression``) to `identify`."""

    def __init__(self):
        self._names = {}  # variable.ref() -> unique name
        self._taken = set()
        self._positions = {}  # unique name -> order of first sight (0, 1, ...)

    def identify(self, tensor, compression) -> TensorIdentity:
        op = process_set = variable = None
        frame = sys._getframe(2)
        for _ in range(_MAX_FRAMES):
            if frame is None:
                break
            local = frame.f_locals
            if op is None and local.get("compression") is compression and "op" in local:
                op, process_set = local["op"], local.get("process_set")
            grads, variables = local.get("grads"), local.get("vars")
            if variables is not None and isinstance(grads, (list, tuple)):
                for var in variables:  # first sight in list order: checkpoint keys are positions
                    self._name_of(var)
                for grad, var in zip(grads, variables):
                    if grad is tensor:
                        variable = var
                        break
                if variable is not None:
                    break
            frame = frame.f_back
        if variable is None:
            raise LookupError(
                f"{type(compression).__name__}: cannot tell which variable this gradient (shape "
                f"{tensor.shape}) belongs to. Use it through hvd.DistributedGradientTape(..., "
                f"compression=...) or hvd.DistributedOptimizer(..., compression=...).")
        return self._identity(self._name_of(variable), op, process_set)

    def checkpoint_key(self, name: str):
        """The key a ``tf.train.Checkpoint`` stores ``name``'s state under: ``grad<i>``, i being the
        variable's position among the variables Horovod reduces (first sight). Positions survive
        rebuilding the model — Keras renames ``dense_3`` to ``dense_6`` — as the object graph
        matches the model's own variables; names do not. None for a name never seen."""
        position = self._positions.get(name)
        return None if position is None else f"grad{position}"

    def checkpoint_keys(self) -> set:
        return {f"grad{position}" for position in self._positions.values()}

    def known_names(self):
        """Names of every variable of the calling ``allreduce_grads(grads, vars)`` (named in list
        order, so first sight is the list's order), or None outside it."""
        frame = sys._getframe(1)
        for _ in range(_MAX_FRAMES):
            if frame is None:
                return None
            variables = frame.f_locals.get("vars")
            if variables is not None and isinstance(frame.f_locals.get("grads"), (list, tuple)):
                return {self._name_of(var) for var in variables}
            frame = frame.f_back
        return None

    def _name_of(self, variable) -> str:
        ref = variable.ref()
        name = self._names.get(ref)
        if name is None:
            base = variable.name.split(":")[0]
            name, suffix = base, 1
            while name in self._taken:  # two variables with one name: keep them apart, in order
                name, suffix = f"{base}_{suffix}", suffix + 1
            self._taken.add(name)
            self._names[ref] = name
            self._positions[name] = len(self._positions)
        return name

    @staticmethod
    def _identity(name, op, process_set) -> TensorIdentity:
        import horovod.tensorflow as hvd

        return identity(name, op, process_set, hvd)
