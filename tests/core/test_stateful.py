"""The contract every baseline compressor keeps (state keying, checkpoints, dtypes, stats)."""
import copy

import numpy as np
import pytest

from horovod_powersgd.core.backend import ReduceOp
from horovod_powersgd.core.registry import COMPRESSORS
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients

from tests.core.ranks import assert_identical_across_ranks, random_gradients, simulate

SHAPES = {"conv": (6, 3, 2, 2), "dense": (16, 10), "bias": (10,)}
OPTIONS = {"powersgd": {"rank": 2}, "unbiased_lowrank": {"rank": 2}, "signum": {}, "signnorm": {},
           "topk": {"ratio": 0.1}, "randomk": {"ratio": 0.1}, "fp16": {}, "bf16": {}}
BASELINES = sorted(set(COMPRESSORS) - {"powersgd"})


def make(name, **extra):
    return lambda backend: COMPRESSORS[name](backend, **{**OPTIONS[name], **extra})


def test_every_registered_compressor_has_options_here():
    assert set(OPTIONS) == set(COMPRESSORS)


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_identical_on_all_ranks_and_bytes_match_wire_bytes(name):
    results = simulate(make(name), 3, lambda r, s: random_gradients(SHAPES, r, s), size=3)
    assert_identical_across_ranks(results)
    compressor = results[0][1]
    assert compressor.stats.steps == 3
    assert compressor.stats.last_step.sent == sum(compressor.wire_bytes(s) for s in SHAPES.values())
    assert compressor.stats.last_step.uncompressed == 4 * sum(np.prod(s) for s in SHAPES.values())


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_state_dict_round_trip_continues_bit_identically(name):
    def rank_main(comm):
        def grads(step):
            return random_gradients(SHAPES, comm.rank, step)

        original = make(name)(NumpyBackend(comm))
        for step in range(3):
            reduce_gradients(original, grads(step))
        saved = copy.deepcopy(original.state_dict())
        expected = [reduce_gradients(original, grads(step)) for step in (3, 4)]
        restored = make(name)(NumpyBackend(comm))
        restored.load_state_dict(saved)
        return expected, [reduce_gradients(restored, grads(step)) for step in (3, 4)]

    for expected, actual in ThreadGroup(2).run(rank_main):
        for e, a in zip(expected, actual):
            for key in SHAPES:
                np.testing.assert_array_equal(e[key], a[key])


@pytest.mark.parametrize("name", BASELINES)
def test_state_from_other_config_or_compressor_is_refused(name):
    compressor = make(name)(NumpyBackend(ThreadGroup(1).communicator(0)))
    state = compressor.state_dict()
    other = "topk" if name != "topk" else "randomk"
    with pytest.raises(ValueError, match="saved by"):
        make(other)(NumpyBackend(ThreadGroup(1).communicator(0))).load_state_dict(state)
    if compressor.config():
        state["config"] = {key: "changed" for key in state["config"]}
        with pytest.raises(ValueError, match="config"):
            compressor.load_state_dict(state)


@pytest.mark.parametrize("name", ["signum", "signnorm", "topk", "randomk", "unbiased_lowrank"])
def test_a_gradient_that_changes_shape_is_refused(name):
    with pytest.raises(RuntimeError, match="changed shape"):
        simulate(make(name), 2, lambda r, s: {"g": np.ones((4, 6) if s == 0 else (6, 4), np.float32)},
                 size=1)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_gradients_come_back_in_their_own_dtype(name, dtype):
    results = simulate(make(name), 2, lambda r, s: {k: v.astype(dtype) for k, v in
                                                    random_gradients(SHAPES, r, s).items()})
    for key, shape in SHAPES.items():
        out = results[0][0][1][key]
        assert out.dtype == dtype and out.shape == shape and np.all(np.isfinite(out))


@pytest.mark.parametrize("name", ["signnorm", "topk", "randomk", "unbiased_lowrank", "fp16", "bf16"])
def test_op_sum_returns_the_sum(name):
    def run(op):
        return simulate(make(name), 2, lambda r, s: random_gradients(SHAPES, r, s), op=op)[0][0]

    for average, total in zip(run(ReduceOp.AVERAGE), run(ReduceOp.SUM)):
        for key in SHAPES:
            np.testing.assert_allclose(total[key], 2 * average[key], rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("name", BASELINES)
def test_integer_gradients_are_refused(name):
    with pytest.raises(RuntimeError, match="floating-point"):
        simulate(make(name), 1, lambda r, s: {"g": np.ones((4, 4), np.int64)}, size=1)
