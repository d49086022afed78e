"""Which variable is this gradient? — for TensorFlow gradients handed to ``compress``.

Horovod's TensorFlow integration (``DistributedGradientTape``, the legacy and Keras
``DistributedOptimizer``, local gradient aggregation) reduces gradients in one function,
``allreduce_grads(grads, vars)`` — the closure ``_make_cached_allreduce_grads_fn`` builds in
``horovod/tensorflow/__init__.py`` (Horovod 0.28.1) — which calls ``compress`` for each gradient
while it is traced. We find that one frame on the call stack by its code object and read from it
what Horovod itself reduces with: ``grads`` and ``vars`` (the variable at the gradient's index owns
it) and, from its closure, ``op`` and ``process_set``. Under a ``tf.function`` AutoGraph runs a
conversion of that function instead: generated code named ``tf__allreduce_grads`` whose globals
are ``horovod.tensorflow``'s, with the same arguments and closure; that frame is matched too.

The variable's name (made unique in order of first sight) keys the state, so retracing — new input
shapes, a second ``tf.function`` — finds the same error buffer for the same variable. Nothing in
Horovod is patched.
"""
from __future__ import annotations

import functools
import inspect
import sys
import types

from ..core.backend import TensorIdentity
from ..glue import identity

_FUNCTION = "allreduce_grads"
_AUTOGRAPH_PREFIX = "tf__"  # AutoGraph's name for the conversion of a function
_READ = ("grads", "vars", "op", "process_set")  # what we read from the frame


class VariableNamer:
    """Names gradients for one compressor, which passes itself (``compression``) to `identify`."""

    def __init__(self):
        self._names = {}  # variable.ref() -> unique name
        self._taken = set()
        self._positions = {}  # unique name -> order of first sight (0, 1, ...)

    def identify(self, tensor, compression) -> TensorIdentity:
        local = _allreduce_grads_locals()
        if local is None:
            raise LookupError(
                f"{type(compression).__name__}: cannot tell which variable this gradient (shape "
                f"{tensor.shape}) belongs to: no allreduce_grads of Horovod {_horovod_version()} is "
                f"calling compress. Use it through hvd.DistributedGradientTape(..., "
                f"compression=...) or hvd.DistributedOptimizer(..., compression=...).")
        grads, variables = local["grads"], local["vars"]
        for var in variables:  # first sight in list order: checkpoint keys are positions
            self._name_of(var)
        variable = next((var for grad, var in zip(grads, variables) if grad is tensor), None)
        if variable is None:
            raise LookupError(
                f"{type(compression).__name__}: the gradient handed to compress (shape "
                f"{tensor.shape}) is none of the gradients Horovod's allreduce_grads is reducing")
        return self._identity(self._name_of(variable), local["op"], local["process_set"])

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
        local = _allreduce_grads_locals()
        return None if local is None else {self._name_of(var) for var in local["vars"]}

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


def _allreduce_grads_locals():
    """``grads``, ``vars``, ``op`` and ``process_set`` of the Horovod ``allreduce_grads`` frame on
    the call stack, or None when there is none."""
    code, module_globals = _allreduce_grads_code()
    converted = _AUTOGRAPH_PREFIX + code.co_name
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code or (frame.f_globals is module_globals
                                    and frame.f_code.co_name == converted):
            local = frame.f_locals
            return {key: local[key] for key in _READ}
        frame = frame.f_back
    return None


@functools.lru_cache(maxsize=None)
def _allreduce_grads_code():
    """The code object of Horovod's ``allreduce_grads`` and ``horovod.tensorflow``'s globals;
    a clear error, naming the installed Horovod, when that function is not where 0.28.1 has it."""
    import horovod.tensorflow as hvd

    make = getattr(hvd, "_make_cached_allreduce_grads_fn", None)
    # Horovod wraps the factory in its own cache decorator, which keeps it as the closure's ``f``
    make = inspect.getclosurevars(make).nonlocals.get("f", make) if callable(make) else None
    code = next((const for const in getattr(getattr(make, "__code__", None), "co_consts", ())
                 if isinstance(const, types.CodeType) and const.co_name == _FUNCTION), None)
    if code is None or code.co_varnames[:2] != ("grads", "vars") \
            or not {"op", "process_set"} <= set(code.co_freevars):
        raise RuntimeError(
            f"horovod_powersgd.tensorflow names gradients from the allreduce_grads(grads, vars) "
            f"closure of horovod.tensorflow._make_cached_allreduce_grads_fn (Horovod 0.28.1); "
            f"Horovod {_horovod_version()} has no such function")
    return code, vars(hvd)


def _horovod_version() -> str:
    import horovod

    return getattr(horovod, "__version__", "(unknown version)")
