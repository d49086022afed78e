"""Reliability contract of every compressor, on simulated ranks: the ranks prove they agree on the
configuration, and a non-finite step leaves all state untouched (decided identically on every rank)."""
import numpy as np
import pytest

from horovod_powersgd.core.agreement import ConfigMismatchError
from horovod_powersgd.core.registry import COMPRESSORS
from horovod_powersgd.core.wire import raw
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients

from tests.core.ranks import random_gradients
from tests.powersgd_schemes import SCHEMES, every_scheme

SHAPES = {"dense": (16, 10), "bias": (10,)}
OPTIONS = {"powersgd": {"rank": 2}, "unbiased_lowrank": {"rank": 2}, "signum": {}, "signnorm": {},
           "topk": {"ratio": 0.1}, "randomk": {"ratio": 0.1}, "fp16": {}, "bf16": {}}


def run_ranks(rank_main, size=2):
    """``rank_main(comm)`` on every simulated rank; an exception is returned, not raised."""
    def guarded(comm):
        try:
            return rank_main(comm)
        except Exception as exc:  # noqa: BLE001 — the test inspects it
            return exc
    return ThreadGroup(size, timeout=30).run(guarded)


@pytest.mark.parametrize("knob, values", [("rank", (1, 2)), ("power_iterations", (1, 2)),
                                          ("warm_start", (True, False)), ("seed", (0, 7)),
                                          ("start_step", (0, 3))])
def test_ranks_with_different_knobs_all_raise_naming_the_knob(knob, values):
    def rank_main(comm):
        compressor = COMPRESSORS["powersgd"](NumpyBackend(comm), **{knob: values[comm.rank]})
        reduce_gradients(compressor, random_gradients(SHAPES, comm.rank, 0))

    errors = run_ranks(rank_main)
    for error in errors:
        assert isinstance(error, ConfigMismatchError)
        assert f"{knob}: {values[0]!r} on rank 0, {values[1]!r} on rank 1" in str(error)


def test_ranks_with_different_compressor_classes_all_raise():
    def rank_main(comm):
        name = ["powersgd", "topk"][comm.rank]
        compressor = COMPRESSORS[name](NumpyBackend(comm), **OPTIONS[name])
        reduce_gradients(compressor, random_gradients(SHAPES, comm.rank, 0))

    for error in run_ranks(rank_main):
        assert isinstance(error, ConfigMismatchError)
        assert "PowerSGD on rank 0, TopK on rank 1" in str(error)


def test_agreement_is_checked_again_after_a_restore():
    """Rank 1 restores state saved with another seed's compressor ... refused by load_state_dict
    itself; a restore re-arms the cross-rank check, which passes for identical compressors."""
    def rank_main(comm):
        compressor = COMPRESSORS["powersgd"](NumpyBackend(comm), rank=2)
        reduce_gradients(compressor, random_gradients(SHAPES, comm.rank, 0))
        assert compressor._agreed
        compressor.load_state_dict(compressor.state_dict())
        assert not compressor._agreed
        reduce_gradients(compressor, random_gradients(SHAPES, comm.rank, 1))
        return compressor._agreed

    assert run_ranks(rank_main) == [True, True]


STATEFUL = ["powersgd", "signum", "signnorm", "topk", "randomk", "unbiased_lowrank"]


def without_counters(state):
    """State that a non-finite step must leave untouched: buffers and warm starts, not step counters."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "step"}
        return value
    return strip(state)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif a[key] is None or isinstance(a[key], (str, int, float, bool, list)):
            assert a[key] == b[key], key
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("bad", ["inf", "nan"])
@pytest.mark.parametrize("name", STATEFUL)
def test_a_nonfinite_step_leaves_state_untouched_and_hands_the_overflow_on(name, bad):
    """Rank 1 alone overflows at step 3. Every rank: the step's result for that tensor is not
    finite, every buffer is exactly what it was before the step, the step is counted, and training
    goes on finite afterwards."""
    def rank_main(comm):
        compressor = COMPRESSORS[name](NumpyBackend(comm), **OPTIONS[name])
        outputs, before = [], None
        for step in range(6):
            grads = random_gradients(SHAPES, comm.rank, step)
            if step == 3:
                before = without_counters(compressor.state_dict())
                if comm.rank == 1:
                    grads["dense"][2, 3] = float(bad)
            outputs.append(reduce_gradients(compressor, grads))
            if step == 3:
                after = without_counters(compressor.state_dict())
        return outputs, before, after, compressor.stats.nonfinite_steps

    for outputs, before, after, nonfinite in run_ranks(rank_main):
        assert not np.isfinite(outputs[3]["dense"]).all()
        assert_same_state(before, after)
        assert nonfinite == 1
        for step in (0, 1, 2, 4, 5):
            assert all(np.isfinite(v).all() for v in outputs[step].values()), step


@pytest.mark.parametrize("name", ["signnorm", "topk", "randomk", "signum"])
def test_rescale_state_multiplies_the_buffers(name):
    def rank_main(comm):
        compressor = COMPRESSORS[name](NumpyBackend(comm), **OPTIONS[name])
        reduce_gradients(compressor, random_gradients(SHAPES, comm.rank, 0))
        before = compressor.state_dict()
        compressor.set_loss_scale(1024.0)
        compressor.set_loss_scale(512.0)  # the scaler halved its scale: buffers follow
        return before, compressor.state_dict()

    for before, after in run_ranks(rank_main):
        for tensor, state in before["tensors"].items():
            for field, value in state["slots"].items():
                expected = value if field == "step" else np.asarray(value) * 0.5
                np.testing.assert_array_equal(after["tensors"][tensor]["slots"][field], expected)


@every_scheme
def test_rescale_state_multiplies_powersgd_error_buffers_not_its_factors(scheme):
    def rank_main(comm):
        compressor = COMPRESSORS["powersgd"](NumpyBackend(comm), rank=2, **SCHEMES[scheme])
        for step in range(3):
            reduce_gradients(compressor, random_gradients(SHAPES, comm.rank, step))
        before = compressor.state_dict()
        compressor.set_loss_scale(1024.0)
        compressor.set_loss_scale(512.0)  # the scaler halved its scale: the errors follow
        return before, compressor.state_dict()

    for before, after in run_ranks(rank_main):
        state_before, state_after = before["tensors"]["dense"], after["tensors"]["dense"]
        assert np.abs(state_before["error"]).max() > 0
        np.testing.assert_array_equal(state_after["error"], np.asarray(state_before["error"]) * 0.5)
        for field in ("q", "p", "step"):  # warm-start factors are scale-free
            np.testing.assert_array_equal(np.asarray(state_after[field], dtype=float),
                                          np.asarray(state_before[field], dtype=float))


@pytest.mark.parametrize("name", ["powersgd", "topk"])
def test_elastic_sync_takes_shared_state_from_rank_0_and_keeps_own_error_buffers(name):
    """The documented rule for a reset: config, step counters and warm-start factors from rank 0;
    this process's own error buffers kept; zero (or none yet) for a process that just joined."""
    def rank_main(comm):
        compressor = COMPRESSORS[name](NumpyBackend(comm), **OPTIONS[name])
        for step in range(3):
            reduce_gradients(compressor, random_gradients(SHAPES, comm.rank, step))
        return compressor.state_dict(), compressor

    (root, _), (own, survivor) = run_ranks(rank_main)
    merged = survivor.synchronized_state(root)
    joiner = COMPRESSORS[name](NumpyBackend(None), **OPTIONS[name]).synchronized_state(root)
    for tensor, state in merged["tensors"].items():
        if name == "powersgd":
            assert state["step"] == root["tensors"][tensor]["step"]
            for field in ("q", "p"):
                assert_same_state({field: root["tensors"][tensor][field]}, {field: state[field]})
            assert_same_state({"e": own["tensors"][tensor]["error"]}, {"e": state["error"]})
            assert joiner["tensors"][tensor]["error"] is None
        else:
            np.testing.assert_array_equal(state["slots"]["error"], own["tensors"][tensor]["slots"]["error"])
            assert not np.any(joiner["tensors"][tensor]["slots"]["error"])
    survivor.load_state_dict(merged)  # accepted, and the ranks' agreement is checked again
    assert not survivor._agreed


EMPTY = {"placeholder": (0,), "width 0": (0, 6), "conv of 0 channels": (3, 0, 2, 2)}


@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_a_gradient_with_no_elements_goes_as_it_is_and_leaves_the_others_alone(name):
    """Placeholder parameters (``nn.Parameter(torch.empty(0))``) and layers of width 0: every
    compressor sends them as they are (0 bytes, Horovod's round) and reduces the step's other
    tensors exactly as it would without them — no NaN from a mean over 0 elements, no k ≥ 1 of 0."""
    def rank_main(comm, with_empty):
        compressor = COMPRESSORS[name](NumpyBackend(comm), **OPTIONS[name])
        outputs = []
        for step in range(4):
            grads = random_gradients(SHAPES, comm.rank, step)
            if with_empty:
                grads.update({key: np.zeros(shape, np.float32) for key, shape in EMPTY.items()})
            outputs.append(reduce_gradients(compressor, grads))
        return outputs, compressor.stats.nonfinite_steps

    plain = ThreadGroup(2, timeout=30).run(lambda comm: rank_main(comm, False))
    mixed = ThreadGroup(2, timeout=30).run(lambda comm: rank_main(comm, True))
    for (plain_outputs, _), (mixed_outputs, nonfinite) in zip(plain, mixed):
        assert nonfinite == 0
        for plain_step, mixed_step in zip(plain_outputs, mixed_outputs):
            for key, shape in EMPTY.items():
                assert mixed_step[key].shape == shape
            for key in SHAPES:
                np.testing.assert_array_equal(mixed_step[key], plain_step[key], err_msg=key)
    compressor = COMPRESSORS[name](NumpyBackend(None), **OPTIONS[name])
    for shape in EMPTY.values():
        assert compressor.transfers(shape) == raw(shape) and compressor.wire_bytes(shape) == 0
