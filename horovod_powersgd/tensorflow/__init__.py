"""TensorFlow 2 / Keras compressors for ``hvd.DistributedGradientTape`` and ``hvd.DistributedOptimizer``.

    import horovod.tensorflow as hvd
    from horovod_powersgd.tensorflow import PowerSGD

    compression = PowerSGD(rank=2)
    tape = hvd.DistributedGradientTape(tape, compression=compression)

Keras (``horovod.tensorflow.keras``; needs tf-keras and ``TF_USE_LEGACY_KERAS=1``):
``hvd.DistributedOptimizer(opt, compression=PowerSGD(rank=2))``.

Same classes, knobs and defaults as ``horovod_powersgd.torch`` (every class in
``horovod_powersgd.core.registry.COMPRESSORS``). State lives in ``tf.Variable``s owned by the
compressor, which is trackable: ``tf.train.Checkpoint(model=..., optimizer=..., compression=c)``
saves and restores it (also before the first step: restoration is deferred until the state exists).
"""
from __future__ import annotations

import re

import tensorflow as tf

from .. import glue
from ..core.registry import adapt_all
from ..core.stats import CompressionStats, StepBytes
from .backend import TensorFlowBackend
from .naming import VariableNamer

_Trackable = tf.__internal__.tracking.Trackable


class _TensorFlowAdapter:
    """Mixed into each core compressor: binds it to TensorFlow (`TensorFlowBackend`), names its
    gradients from ``horovod.tensorflow``'s ``allreduce_grads`` (`VariableNamer`) and tracks its
    state for ``tf.train.Checkpoint``."""

    def __init__(self, *args, **kwargs):
        self._namer = VariableNamer()
        super().__init__(TensorFlowBackend(), *args, **kwargs)
        self._graph_counts = {}  # tensor name -> (tf.Variable step count, uncompressed, sent bytes)

    # Trackable's default equality/hash are identity-based; Horovod caches its traced all-reduce
    # function keyed on the compression object, so it must stay hashable.
    __hash__ = object.__hash__

    def identify(self, tensor):
        return self._namer.identify(tensor, self)

    def _known_names(self):
        return self._namer.known_names()

    def _new_slot(self, value, key: str):
        """The backend's variable, tracked for ``tf.train.Checkpoint`` under ``grad<i>_<field>``
        (see `VariableNamer.checkpoint_key`), not under the variable's name, which a rebuilt model
        changes; state restored from ``load_state_dict`` before its variable was seen keeps its
        name."""
        variable = super()._new_slot(value, key)
        name, _, field = key.rpartition("/")
        position = self._namer.checkpoint_key(name)
        key = key if position is None else f"{position}/{field}"
        # Tracking may restore a checkpointed value into the new variable (deferred restore):
        # that must happen eagerly, not as an op of the graph being traced.
        with tf.init_scope():
            self._track_trackable(variable, name=re.sub(r"[^A-Za-z0-9_]", "_", key), overwrite=True)
        return variable

    def _unmatched_restored_names(self) -> list:
        """Also checkpointed state (``tf.train.Checkpoint``, restored before the first step) whose
        ``grad<i>`` is beyond the variables this model has: a different architecture."""
        unmatched = super()._unmatched_restored_names()
        pending = getattr(self, "_deferred_dependencies", None) or {}
        known = self._namer.checkpoint_keys()
        return unmatched + sorted(key for key in pending if key.rpartition("_")[0] not in known)

    # ------------------------------------------------------------------ stats in graph mode
    def decompress(self, tensor, ctx):
        self._window_finite = None
        out = super().decompress(tensor, ctx)
        if ctx is not None:
            # In a trace, compress/decompress of one tensor form a window of their own, so the base
            # class's last_step holds exactly this tensor's bytes, all rounds included.
            self._count(ctx.identity.name, self._stats.last_step, self._window_finite)
        return out

    def _count_nonfinite(self, finite) -> None:
        self._window_finite = finite  # a graph tensor: counted by `_count`'s variable

    def _agree(self, identity, like) -> None:
        with tf.init_scope():  # runs eagerly, once, while the first step is traced on every rank
            super()._agree(identity, like)

    def _count(self, name: str, step_bytes: StepBytes, finite=None) -> None:
        """Bytes are static per trace; how often the trace runs (and how often this tensor's
        reduced result was not finite) is counted by graph variables."""
        entry = self._graph_counts.get(name)
        if entry is None:
            with tf.init_scope():
                counter = tf.Variable(tf.constant(0, tf.int64), trainable=False)
                nonfinite = tf.Variable(tf.constant(0, tf.int64), trainable=False)
            entry = self._graph_counts[name] = [counter, None, nonfinite]
        entry[1] = step_bytes
        entry[0].assign_add(1)
        if finite is not None:
            entry[2].assign_add(tf.cast(tf.logical_not(finite), tf.int64))

    @property
    def stats(self) -> CompressionStats:
        """Bytes per step (what the current traces send) and totals from in-graph step counters.
        Host-side times are not meaningful for graph ops and are reported as NaN."""
        counts = {name: int(entry[0].numpy()) for name, entry in self._graph_counts.items()}
        stats = CompressionStats()
        stats.steps = max(counts.values(), default=0)
        last = [e[1] for name, e in self._graph_counts.items() if counts[name] == stats.steps]
        stats.last_step = StepBytes(sum(b.uncompressed for b in last), sum(b.sent for b in last))
        stats.total = StepBytes(
            sum(counts[n] * e[1].uncompressed for n, e in self._graph_counts.items()),
            sum(counts[n] * e[1].sent for n, e in self._graph_counts.items()))
        # tensors are reduced in windows of their own: a step counts if any tensor's result was not
        # finite, and an overflow reaches every tensor downstream of it, so the largest count
        stats.nonfinite_steps = max((int(e[2].numpy()) for e in self._graph_counts.values()), default=0)
        stats.compress_seconds = stats.decompress_seconds = stats.wait_seconds = float("nan")
        return stats


# Trackable last: Compressor.__init__ does not chain to it, and Trackable initializes lazily.
_CLASSES = adapt_all(_TensorFlowAdapter, __name__, extra_bases=(_Trackable,))
globals().update(_CLASSES)


def from_spec(spec: str):
    """A compressor from a string such as ``"powersgd:rank=2"``; ``"none"`` gives Horovod's
    ``Compression.none``."""
    return glue.from_spec(spec, _CLASSES, "horovod.tensorflow")


__all__ = [*_CLASSES, "from_spec", "TensorFlowBackend"]
