"""`Backend` for TensorFlow tensors and ``horovod.tensorflow`` collectives (graph semantics).

Horovod traces ``compress``/``decompress`` once per ``tf.function`` trace, so every step-to-step
effect must be a graph op: state lives in ``tf.Variable``s (created outside the trace with
``tf.init_scope``), collectives return symbolic results (Horovod runs and fuses them when the graph
executes), and per-step choices are ``tf.cond``s.
"""
from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

from ..core.backend import HOROVOD_ALLREDUCE_UNSUPPORTED, Backend
from ..glue import horovod_op


class TensorFlowBackend(Backend):
    deferred = False
    allreduce_unsupported_dtypes = HOROVOD_ALLREDUCE_UNSUPPORTED

    def __init__(self):
        self._variables = {}  # key -> the variable `new_state` made for it (traces captured it)

    def shape(self, tensor):
        shape = tensor.shape
        if shape.rank is None or any(d is None for d in shape.as_list()):
            raise ValueError(f"gradient shape {shape} is not fully known while tracing; "
                             f"compression needs static gradient shapes")
        return tuple(shape.as_list())

    def dtype_name(self, tensor) -> str:
        return tf.as_dtype(tensor.dtype).name

    def cast(self, tensor, dtype_name):
        return tf.cast(tensor, dtype_name)

    def reshape(self, tensor, shape):
        return tf.reshape(tensor, tuple(shape))

    def transpose(self, matrix):
        return tf.transpose(matrix)

    def from_numpy(self, array, like=None):
        return tf.constant(array)

    def to_numpy(self, tensor):
        return tensor.numpy()

    def zeros(self, shape, dtype_name, like=None):
        return tf.zeros(tuple(shape), dtype=dtype_name)

    def sum(self, tensor):
        return tf.reduce_sum(tensor)

    def sqrt(self, tensor):
        return tf.sqrt(tensor)

    # ------------------------------------------------------------------ ops of the baselines
    def abs(self, tensor):
        return tf.abs(tensor)

    def sign(self, tensor):
        return tf.sign(tensor)

    def pack_signs(self, tensor):
        bits = tf.cast(tf.reshape(tensor, [-1]) >= 0, tf.int32)
        bits = tf.reshape(tf.pad(bits, [[0, -int(bits.shape[0]) % 8]]), [-1, 8])
        return tf.cast(tf.reduce_sum(bits * tf.constant(_BIT_WEIGHTS, tf.int32), axis=1), tf.uint8)

    def unpack_signs(self, packed, count):
        bits = tf.bitwise.bitwise_and(
            tf.bitwise.right_shift(tf.cast(packed, tf.int32)[..., None],
                                   tf.constant(_BIT_SHIFTS, tf.int32)), 1)
        bits = tf.reshape(bits, [tf.shape(packed)[0], -1])[:, :count]
        return tf.cast(bits, tf.float32) * 2 - 1

    def topk_indices(self, tensor, k):
        return tf.cast(tf.math.top_k(tf.abs(tensor), k, sorted=False).indices, tf.int64)

    def gather(self, tensor, indices):
        return tf.gather(tensor, indices)

    def scatter_add(self, indices, values, size):
        return tf.math.unsorted_segment_sum(values, indices, size)

    def bitcast(self, tensor, dtype_name):
        return tf.bitcast(tensor, dtype_name)

    def seeded_indices(self, size, k, seed, step, like=None):
        # a stateless random permutation's first k entries: determined by (seed, step) on every rank
        seeds = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
        keys = tf.random.stateless_uniform([size], seed=seeds)
        return tf.sort(tf.cast(tf.argsort(keys)[:k], tf.int64))

    def where(self, condition, a, b):
        return tf.where(condition, a, b)

    def finite_flag(self, tensor):
        return tf.reduce_all(tf.math.is_finite(tensor))

    def all_true(self, flags):
        return tf.reduce_all(tf.stack(list(flags)))

    def rows(self, matrix):
        return tf.unstack(matrix, axis=0)

    def stack_rows(self, rows):
        return tf.stack(list(rows), axis=0)

    def concat(self, tensors):
        return tf.concat(list(tensors), axis=0)

    def row_norms(self, matrix):
        return tf.norm(matrix, axis=1, keepdims=True)

    def pad(self, flat, length):
        return tf.pad(flat, [[0, length - int(flat.shape[0])]])

    def matmul(self, a, b, transpose_a=False, transpose_b=False):
        return tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)

    # ------------------------------------------------------------------ state: tf.Variables
    def new_state(self, value, key: str = ""):
        """A non-trainable variable holding ``value``, created eagerly (outside any trace); the
        TensorFlow adapter tracks it for ``tf.train.Checkpoint`` (`Compressor._new_slot`).

        A variable made earlier for the same ``key`` (same shape and dtype) is assigned ``value``
        and returned instead of a new one: Horovod keeps its trace of the compressor for the life
        of the process, and that trace reads the variables it captured, so state loaded after the
        first step (``load_state_dict``, an elastic restore or sync) must land in them."""
        if isinstance(value, (int, np.integer)):
            value = np.int64(value)
        elif tf.is_tensor(value):
            static = tf.get_static_value(value)  # zeros and seeded Q are constants even in a trace
            value = value if static is None else static
        dynamic = tf.is_tensor(value) and not hasattr(value, "numpy")  # computed in a trace
        existing = self._variables.get(key)
        if (existing is not None and existing.dtype == tf.as_dtype(value.dtype)
                and existing.shape == tuple(value.shape)):
            if dynamic:
                existing.assign(value)
            else:
                with tf.init_scope():
                    existing.assign(value)
            return existing
        with tf.init_scope():
            initial = tf.zeros(value.shape, value.dtype) if dynamic else value
            variable = tf.Variable(initial, trainable=False)
        if dynamic:
            variable.assign(value)
        if key:
            self._variables[key] = variable
        return variable

    def read_state(self, slot):
        return slot.read_value() if isinstance(slot, tf.Variable) else slot

    def write_state(self, slot, value) -> None:
        slot.assign(value)

    def export_tensor(self, tensor):
        return np.array(tensor.numpy(), copy=True)

    def import_tensor(self, value):
        return tf.constant(np.asarray(value))

    # ------------------------------------------------------------------ control flow
    def cond(self, predicate, true_fn, false_fn):
        return tf.cond(predicate, true_fn, false_fn)

    def seeded_normal(self, shape, seed, step, like=None):
        seeds = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
        return tf.random.stateless_normal(tuple(shape), seed=seeds, dtype=tf.float32)

    # ------------------------------------------------------------------ collectives
    # Collective names become op names: parameter-derived names are made op-name safe.
    def allreduce_async(self, tensor, name, identity):
        import horovod.tensorflow as hvd

        return hvd.allreduce(tensor, op=horovod_op(identity.op, hvd), process_set=identity.process_set,
                             name=_op_name(name))

    def allgather_async(self, tensor, name, identity):
        import horovod.tensorflow as hvd

        return hvd.allgather(tensor, process_set=identity.process_set, name=_op_name(name))

    def wait(self, handle):
        return handle


# Plain lists, not tf.constants: importing this module must not initialize TensorFlow's runtime
# (users configure threads and devices after importing us).
_BIT_SHIFTS = [7, 6, 5, 4, 3, 2, 1, 0]  # most significant bit first
_BIT_WEIGHTS = [128, 64, 32, 16, 8, 4, 2, 1]


def _op_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/]", "_", name)
