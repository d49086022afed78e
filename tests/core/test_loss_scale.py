"""Buffers follow the loss scale (`Compressor.follow_loss_scale`), on simulated ranks. With scales
that are powers of two, scaling is exact in floating point, so a correct run under any schedule is
the constant-scale run without its overflowed steps, divided by each step's scale."""
import warnings

import numpy as np
import pytest

from horovod_powersgd.core.registry import COMPRESSORS
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients

from tests.core.ranks import random_gradients

SHAPES = {"dense": (16, 10), "bias": (10,)}
SCALED = {"powersgd": {"rank": 2}, "powersgd-alternate": {"rank": 2, "alternate": True},
          "powersgd-two_sided": {"rank": 2, "two_sided": True}, "signnorm": {},
          "topk": {"ratio": 0.2}, "randomk": {"ratio": 0.2}}
# scale of each step's gradients; None marks a step where rank 1's scaled loss overflowed
SCHEDULES = {
    "changes at the first update": [2.0 ** 10, 2.0 ** 9, 2.0 ** 9, 2.0 ** 11, 2.0 ** 11, 2.0 ** 12],
    "growth every 3 steps": [2.0 ** 4] * 3 + [2.0 ** 5] * 3 + [2.0 ** 6] * 2,
    "triangle wave": [2.0 ** k for k in (3, 5, 7, 5, 3, 5, 7, 5)],
    "overflows and backoff": [2.0 ** 10, None, 2.0 ** 9, 2.0 ** 9, None, 2.0 ** 8, 2.0 ** 8],
}


def make(name, backend):
    return COMPRESSORS[name.split("-")[0]](backend, **SCALED[name])


def run(name, schedule, follow=True):
    """Per rank: the outputs of the finite steps, divided by their scale."""
    def rank_main(comm):
        compressor = make(name, NumpyBackend(comm))
        current = {"scale": 1.0}
        if follow:
            compressor.follow_loss_scale(lambda: current["scale"])
        outputs, finite_step = [], 0
        for scale in schedule:
            grads = random_gradients(SHAPES, comm.rank, finite_step)
            if scale is None:  # overflowed: the reference run has no such step
                current["scale"] = 2.0 ** 20
                grads = {k: v * current["scale"] for k, v in grads.items()}
                if comm.rank == 1:
                    grads["dense"][0, 0] = np.inf
                reduce_gradients(compressor, grads)
                continue
            current["scale"] = scale
            out = reduce_gradients(compressor, {k: v * scale for k, v in grads.items()})
            outputs.append({k: v / scale for k, v in out.items()})
            finite_step += 1
        return outputs

    return ThreadGroup(2).run(rank_main)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", list(SCALED))
def test_any_schedule_equals_the_constant_scale_run(name, schedule):
    if name == "randomk" and None in SCHEDULES[schedule]:
        pytest.skip("random-k draws its shared indices per step attempted: an overflowed step "
                    "shifts them, so the run without it is another run")
    steps = sum(scale is not None for scale in SCHEDULES[schedule])
    expected = run(name, [1.0] * steps, follow=False)
    for got, want in zip(run(name, SCHEDULES[schedule]), expected):
        assert len(got) == len(want) == steps
        for step, (a, b) in enumerate(zip(got, want)):
            for key in SHAPES:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6,
                                           err_msg=f"{key}, step {step}")


def test_a_scaler_object_is_read_through_get_scale():
    class Scaler:
        def get_scale(self):
            return 8.0

    compressor = make("powersgd", NumpyBackend(None)).follow_loss_scale(Scaler())
    compressor._read_loss_scale()
    assert compressor._loss_scale == 8.0
    with pytest.raises(TypeError, match="callable returning the loss scale"):
        compressor.follow_loss_scale(8.0)


def test_a_nonfinite_step_without_a_loss_scale_warns_once_naming_the_fix():
    def rank_main(comm):  # one rank: catching warnings is not thread-safe
        compressor = make("powersgd", NumpyBackend(comm))
        for step in range(4):
            grads = random_gradients(SHAPES, comm.rank, step)
            if step in (1, 2):
                grads["dense"][0, 0] = np.inf
            reduce_gradients(compressor, grads)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ThreadGroup(1).run(rank_main)
    messages = [str(w.message) for w in caught if "loss scale" in str(w.message)]
    assert len(messages) == 1
    assert "follow_loss_scale(scaler)" in messages[0]


def test_the_loss_scale_travels_with_the_checkpoint():
    compressor = make("powersgd", NumpyBackend(None))
    compressor.set_loss_scale(512.0)
    restored = make("powersgd", NumpyBackend(None))
    restored.load_state_dict(compressor.state_dict())
    assert restored._loss_scale == 512.0
