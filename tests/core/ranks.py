"""Simulated ranks for the core tests: run a compressor through Horovod's pattern on NumPy arrays."""
from __future__ import annotations

import numpy as np

from horovod_powersgd.core.backend import ReduceOp
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients


def random_gradients(shapes: dict, rank: int, step: int, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, rank, step])
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def simulate(make, steps: int, gradients, size: int = 2, op=ReduceOp.AVERAGE, after=None):
    """Run ``make(backend)`` on ``size`` simulated ranks for ``steps`` steps.

    ``gradients(rank, step) -> {name: array}``. Returns, per rank, (list of reduced gradients per
    step, compressor, ``after(compressor)`` or None).
    """

    def rank_main(comm):
        compressor = make(NumpyBackend(comm))
        outputs = [reduce_gradients(compressor, gradients(comm.rank, step), op) for step in range(steps)]
        return outputs, compressor, after(compressor) if after else None

    return ThreadGroup(size).run(rank_main)


def outputs_of(results, rank: int = 0):
    return results[rank][0]


def assert_identical_across_ranks(results):
    for rank_outputs, _, _ in results[1:]:
        for mine, theirs in zip(results[0][0], rank_outputs):
            assert mine.keys() == theirs.keys()
            for name in mine:
                np.testing.assert_array_equal(mine[name], theirs[name])


def running_sum_gaps(outputs, name, exact):
    """‖Σ_{s≤t} output_s − (t+1)·exact‖ for every step t."""
    running = np.cumsum(np.stack([o[name] for o in outputs]), axis=0)
    return [float(np.linalg.norm(running[t] - (t + 1) * exact)) for t in range(len(outputs))]
