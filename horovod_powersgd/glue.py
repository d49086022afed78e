"""Horovod glue that the PyTorch and TensorFlow adapters share.

``horovod.torch`` and ``horovod.tensorflow`` have the same reduction constants, process sets and
``Compression.none``; what translates between them and the framework-free core lives here once:

- `identity`: a gradient's rank-consistent name and the op and process set Horovod reduces it with,
  as the core's `TensorIdentity` (the adapters' namers find the three in Horovod's optimizer);
- `horovod_op`: the inverse, for the collectives the backends start themselves;
- `from_spec`: a spec string (``"powersgd:rank=2"``) to one of an adapter's classes.

``hvd`` is the framework's Horovod module.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .core.backend import ReduceOp, TensorIdentity
from .core.registry import COMPRESSORS, parse_spec


def identity(name: str, op, process_set, hvd) -> TensorIdentity:
    """``name`` reduced with Horovod's ``op`` over ``process_set``, None meaning Horovod's defaults
    (``hvd.Average``, the global process set)."""
    if op is None or op == hvd.Average:
        reduce_op = ReduceOp.AVERAGE
    elif op == hvd.Sum:
        reduce_op = ReduceOp.SUM
    else:
        raise ValueError(f"gradient compression supports op=hvd.Average and op=hvd.Sum, got "
                         f"op={op} (Adasum is not linear: compressed factors cannot be combined by it)")
    if process_set is None:
        process_set = hvd.global_process_set
    return TensorIdentity(name, reduce_op, process_set.size(), process_set)


def horovod_op(op: ReduceOp, hvd):
    """Horovod's constant for ``op``."""
    return hvd.Average if op is ReduceOp.AVERAGE else hvd.Sum


def from_spec(spec: str, classes: ModuleType, horovod_module: str):
    """The compressor a spec names, built from the adapter module ``classes`` (the class of the core
    class's name); ``"none"`` gives ``<horovod_module>.Compression.none`` (Horovod's own: no
    compression)."""
    name, kwargs = parse_spec(spec)
    if name == "none":
        return importlib.import_module(horovod_module).Compression.none
    return getattr(classes, COMPRESSORS[name].__name__)(**kwargs)
