"""Shared pieces of the multi-process TensorFlow tests."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def local_gradients(shapes: dict, rank: int, step: int, seed: int = 0) -> dict:
    """The same per-rank, per-step gradients as tests/torch/distributed/helpers.py."""
    rng = np.random.default_rng([seed, rank, step])
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


class FixedGradients:
    """Variables whose gradients are exactly the arrays we feed: loss = Σ_k ⟨W_k, C_k⟩."""

    def __init__(self, shapes: dict, dtype=tf.float32):
        self.names = list(shapes)
        self.variables = [tf.Variable(tf.zeros(shape, dtype), name=name) for name, shape in shapes.items()]

    def make_step(self, hvd, compression, **tape_kwargs):
        variables = self.variables

        @tf.function
        def step(*gradients):
            with tf.GradientTape() as tape:
                loss = tf.add_n([tf.reduce_sum(v * tf.cast(g, v.dtype))
                                 for v, g in zip(variables, gradients)])
            tape = hvd.DistributedGradientTape(tape, compression=compression, **tape_kwargs)
            return tape.gradient(loss, variables)

        def run(gradients: dict) -> dict:
            outputs = step(*[tf.constant(gradients[n]) for n in self.names])
            return {n: o.numpy() for n, o in zip(self.names, outputs)}

        return run


def identical_across_ranks(hvd, array) -> bool:
    copies = hvd.allgather(tf.constant(array)[None]).numpy()
    return all(np.array_equal(copies[0], c) for c in copies[1:])


def exact_average(hvd, array):
    return hvd.allreduce(tf.constant(array), op=hvd.Average).numpy()
