"""Compressor state in TensorFlow after the first traced step, and the elastic state classes'
commit / restore / sync, on 2 ranks without an elastic launcher (run by
tests/tensorflow/test_elastic.py; the end-to-end elastic job is there too).

Horovod traces the compressor once and keeps that trace for the life of the process, so state
loaded later must land in the variables the trace captured: these tests check that the next steps
see it (bit-identical to an uninterrupted run).
"""
import numpy as np
import pytest
import tensorflow as tf

from horovod_powersgd.core.agreement import ConfigMismatchError
from horovod_powersgd.tensorflow import PowerSGD
from horovod_powersgd.tensorflow import elastic
from horovod_powersgd.tensorflow.elastic import TensorFlowKerasState, TensorFlowState

from tf_helpers import FixedGradients, identical_across_ranks, local_gradients

SHAPES = {"dense": (32, 24), "bias": (24,)}
ALTERNATE = pytest.mark.parametrize("alternate", [False, True], ids=["classic", "single_round"])


def steps(run, hvd, span):
    return [run(local_gradients(SHAPES, hvd.rank(), step)) for step in span]


def assert_same(a, b):
    for x, y in zip(a, b):
        for name in SHAPES:
            np.testing.assert_array_equal(x[name], y[name])


def tensors(compression):
    return compression.state_dict()["tensors"]


def matrix_entry(compression):
    """(name, state) of the compressed matrix ("dense")."""
    return next((name, entry) for name, entry in tensors(compression).items()
                if entry["shape"] == list(SHAPES["dense"]))


@ALTERNATE
def test_load_state_dict_after_the_first_step_reaches_the_traced_step(hvd, alternate):
    """A state_dict loaded once the step is traced is what the next steps use (its variables are
    assigned in place; new ones would be invisible to the trace)."""
    compression = PowerSGD(rank=2, alternate=alternate)
    run = FixedGradients(SHAPES).make_step(hvd, compression)
    steps(run, hvd, range(3))
    saved = compression.state_dict()
    uninterrupted = steps(run, hvd, range(3, 6))
    compression.load_state_dict(saved)
    assert_same(uninterrupted, steps(run, hvd, range(3, 6)))


def keras_state(compression, state_class=TensorFlowKerasState):
    model = tf.keras.Sequential([tf.keras.layers.Dense(4, input_shape=(8,))])
    return state_class(model, tf.keras.optimizers.SGD(0.1), compression=compression, step=0)


@pytest.mark.parametrize("kind", ["TensorFlowKerasState", "TensorFlowState", "KerasState"])
@ALTERNATE
def test_restore_rolls_the_compressor_back_to_the_last_commit(hvd, kind, alternate):
    compression = PowerSGD(rank=2, alternate=alternate)
    fixed = FixedGradients(SHAPES)
    run = fixed.make_step(hvd, compression)
    if kind == "TensorFlowState":
        state = TensorFlowState(fixed.variables, compression=compression, step=0)
    else:  # KerasState (for model.fit) is imported on demand: it needs horovod.tensorflow.keras
        state = keras_state(compression, getattr(elastic, kind))
    steps(run, hvd, range(3))
    state.commit()
    committed = compression.state_dict()
    uninterrupted = steps(run, hvd, range(3, 6))
    state.restore()
    assert tensors(compression).keys() == committed["tensors"].keys()
    assert_same(uninterrupted, steps(run, hvd, range(3, 6)))


def test_restore_to_a_commit_before_the_first_step_keeps_the_traced_state(hvd):
    """A traced step cannot go back to not having state: tensors the commit had not seen keep
    theirs (and the state_dict still reports them)."""
    compression = PowerSGD(rank=2)
    run = FixedGradients(SHAPES).make_step(hvd, compression)
    state = keras_state(compression)  # commits an empty compressor
    steps(run, hvd, range(2))
    before = compression.state_dict()
    state.restore()
    after = compression.state_dict()
    assert after["tensors"].keys() == before["tensors"].keys() and after["tensors"]
    for name, entry in after["tensors"].items():
        assert entry["step"] == before["tensors"][name]["step"]
    for out in steps(run, hvd, range(2, 4)):
        assert all(identical_across_ranks(hvd, out[name]) for name in SHAPES)


@ALTERNATE
def test_sync_shares_rank_0s_factors_and_counters_and_keeps_own_errors(hvd, alternate):
    """Rank 1's step counter and factor are put off (in its traced step); sync() brings rank 0's
    back and keeps each rank's error buffer: the next steps are those of an undisturbed run."""
    compression = PowerSGD(rank=2, alternate=alternate)
    run = FixedGradients(SHAPES).make_step(hvd, compression)
    state = keras_state(compression)
    steps(run, hvd, range(4))
    state.commit()
    undisturbed = steps(run, hvd, range(4, 7))
    state.restore()
    if hvd.rank() == 1:
        name, entry = matrix_entry(compression)
        entry["step"] += 5
        entry["q"] = entry["q"] + 1.0
        compression.load_state_dict({**compression.state_dict(), "tensors": {
            **tensors(compression), name: entry}})
    own_error = matrix_entry(compression)[1]["error"]
    state.sync()
    mine = matrix_entry(compression)[1]
    assert identical_across_ranks(hvd, mine["q"]) and identical_across_ranks(hvd, mine["step"])
    assert not identical_across_ranks(hvd, mine["error"])  # each rank's own
    np.testing.assert_array_equal(mine["error"], own_error)
    assert_same(undisturbed, steps(run, hvd, range(4, 7)))


def test_a_process_that_joins_gets_rank_0s_state_and_zero_errors(hvd):
    """Rank 1 stands for a joiner: a fresh compressor that has not traced a step yet."""
    compression = PowerSGD(rank=2)
    fixed = FixedGradients(SHAPES)
    run = fixed.make_step(hvd, compression)
    if hvd.rank() == 0:
        steps(run, hvd, range(3))  # rank 1 runs them with another compressor: the same collectives
    else:
        steps(FixedGradients(SHAPES).make_step(hvd, PowerSGD(rank=2)), hvd, range(3))
    state = TensorFlowState(fixed.variables, compression=compression, step=0)
    state.sync()
    root = hvd.broadcast_object(compression.state_dict() if hvd.rank() == 0 else None, root_rank=0,
                                name="test.root_state")
    mine = tensors(compression)
    assert mine.keys() == root["tensors"].keys()
    for name, entry in mine.items():
        assert entry["step"] == root["tensors"][name]["step"]
        if entry["q"] is not None:
            np.testing.assert_array_equal(entry["q"], root["tensors"][name]["q"])
        if hvd.rank() == 1:
            assert entry["error"] is None  # starts at zero
    outputs = steps(run, hvd, range(3, 5))
    for out in outputs:
        for name in SHAPES:
            assert identical_across_ranks(hvd, out[name])


def test_sync_refuses_compressors_built_differently_on_every_rank(hvd):
    state = TensorFlowState([tf.Variable(0.0)], compression=PowerSGD(rank=2 + hvd.rank()))
    with pytest.raises(ConfigMismatchError, match="rank: 2 on rank 0, 3 on rank 1"):
        state.sync()


def test_horovods_own_compressors_need_no_state(hvd):
    state = keras_state(hvd.Compression.fp16)
    state.commit()
    state.sync()
    state.restore()
    assert state.compression is hvd.Compression.fp16


def test_a_torch_compressor_is_refused(hvd):
    torch_adapter = pytest.importorskip("horovod_powersgd.torch")
    with pytest.raises(TypeError, match="horovod_powersgd.tensorflow"):
        keras_state(torch_adapter.PowerSGD(rank=2))
