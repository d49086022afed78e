"""The TensorFlow compressors: each core class bound to TensorFlow and ``horovod.tensorflow``, and
trackable by ``tf.train.Checkpoint``.

Written out one by one so that their signatures and docstrings are visible to grep, IDEs and
``help()``. Each takes the core class's arguments without its ``backend``, and
``tests/test_adapters.py`` keeps the two in step; the algorithm and what every knob does are the
core class's docstring (``horovod_powersgd.core.<module>``). ``Trackable`` comes last in each class:
``Compressor.__init__`` does not chain to it, and it initializes lazily.
"""
from __future__ import annotations

import re
from typing import Optional

import tensorflow as tf

from ..core import bf16, fp16, powersgd, randomk, signnorm, signum, topk, unbiased_lowrank
from ..core.powersgd import DEFAULTS as _D  # PowerSGD's defaults are PowerSGDConfig's
from ..core.stats import CompressionStats, StepBytes
from .backend import TensorFlowBackend
from .naming import VariableNamer

_Trackable = tf.__internal__.tracking.Trackable


class _TensorFlowAdapter:
    """Mixed in front of a core compressor: binds it to TensorFlow (`TensorFlowBackend`), names its
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
        if self._scaled_slots() and self._loss_scale is None and self._scale_reader is None:
            # the warning of eager backends, from the graph: a host call on non-finite steps only
            tf.cond(finite, lambda: tf.constant(True),
                    lambda: tf.py_function(self._warn_from_graph, [], tf.bool))

    def _warn_from_graph(self):
        self._warn_unknown_loss_scale()
        return True

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


class PowerSGD(_TensorFlowAdapter, powersgd.PowerSGD, _Trackable):
    """PowerSGD for ``hvd.DistributedGradientTape`` and ``hvd.DistributedOptimizer``: rank-r
    factors with error feedback and warm start (in ``tf.Variable``s), two all-reduces per step, or
    one with ``alternate=True`` or ``two_sided=True``. Algorithm and knobs:
    `horovod_powersgd.core.powersgd.PowerSGD`."""

    def __init__(self, rank: int = _D.rank, *, power_iterations: int = _D.power_iterations,
                 warm_start: bool = _D.warm_start, error_feedback: bool = _D.error_feedback,
                 min_compression_rate: float = _D.min_compression_rate,
                 start_step: int = _D.start_step, seed: int = _D.seed,
                 orthogonalization_epsilon: float = _D.orthogonalization_epsilon,
                 wire_dtype: Optional[str] = _D.wire_dtype, alternate: bool = _D.alternate,
                 two_sided: bool = _D.two_sided):
        super().__init__(rank, power_iterations=power_iterations, warm_start=warm_start,
                         error_feedback=error_feedback, min_compression_rate=min_compression_rate,
                         start_step=start_step, seed=seed,
                         orthogonalization_epsilon=orthogonalization_epsilon,
                         wire_dtype=wire_dtype, alternate=alternate, two_sided=two_sided)


class UnbiasedLowRank(_TensorFlowAdapter, unbiased_lowrank.UnbiasedLowRank, _Trackable):
    """Unbiased rank-r random projection (a fresh shared Gaussian Q per step, drawn statelessly in
    the graph), one all-reduce: PowerSGD's comparison baseline
    (`horovod_powersgd.core.unbiased_lowrank.UnbiasedLowRank`)."""

    def __init__(self, rank: int = 1, *, min_compression_rate: float = 2.0, seed: int = 0):
        super().__init__(rank, min_compression_rate=min_compression_rate, seed=seed)


class Signum(_TensorFlowAdapter, signum.Signum, _Trackable):
    """Majority vote of the signs of each rank's local momentum (a ``tf.Variable``), all-gathered;
    use it with plain SGD (`horovod_powersgd.core.signum.Signum`)."""

    def __init__(self, momentum: float = 0.9):
        super().__init__(momentum)


class SignNorm(_TensorFlowAdapter, signnorm.SignNorm, _Trackable):
    """EF-signSGD — scaled signs with error feedback in a ``tf.Variable``, all-gathered
    (`horovod_powersgd.core.signnorm.SignNorm`)."""

    def __init__(self):
        super().__init__()


class TopK(_TensorFlowAdapter, topk.TopK, _Trackable):
    """The largest-magnitude ``ratio`` of each gradient with error feedback in a ``tf.Variable``,
    all-gathered (`horovod_powersgd.core.topk.TopK`)."""

    def __init__(self, ratio: float = 0.01):
        super().__init__(ratio)


class RandomK(_TensorFlowAdapter, randomk.RandomK, _Trackable):
    """A shared random ``ratio`` of each gradient (indices drawn statelessly in the graph),
    all-reduced (`horovod_powersgd.core.randomk.RandomK`)."""

    def __init__(self, ratio: float = 0.01, *, error_feedback: bool = True, seed: int = 0):
        super().__init__(ratio, error_feedback=error_feedback, seed=seed)


class FP16(_TensorFlowAdapter, fp16.FP16, _Trackable):
    """Gradients all-reduced in float16 inside the graph, with this package's statistics
    (`horovod_powersgd.core.fp16.FP16`)."""

    def __init__(self):
        super().__init__()


class BF16(_TensorFlowAdapter, bf16.BF16, _Trackable):
    """Gradients sent as bfloat16 by all-gather (`horovod_powersgd.core.bf16.BF16`)."""

    def __init__(self):
        super().__init__()
