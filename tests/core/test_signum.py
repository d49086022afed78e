"""Signum: local momentum, 1-bit signs, majority vote (NumPy reference, simulated ranks)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from horovod_powersgd.core.signum import Signum
from horovod_powersgd.reference import NumpyBackend, ThreadGroup

from tests.core.ranks import assert_identical_across_ranks, random_gradients, simulate


def test_majority_vote_of_hand_built_signs():
    # three ranks; a zero counts as +1 (a sign is one bit), a 2:1 split wins, momentum off
    signs = np.array([[+1, +1, -1, -1, 0, +1, -2.0],
                      [+1, -1, -1, +1, -3, -1, -1.0],
                      [-1, -1, -1, +1, +4, -5, 0.5]], dtype=np.float32)
    results = simulate(lambda b: Signum(b, momentum=0.0), 1, lambda rank, step: {"g": signs[rank]},
                       size=3)
    assert_identical_across_ranks(results)
    np.testing.assert_array_equal(results[0][0][0]["g"], [+1, -1, -1, +1, +1, -1, -1])


def test_two_ranks_that_disagree_vote_zero():
    grads = np.array([[1.0, -1.0, 2.0], [-1.0, -1.0, 3.0]], dtype=np.float32)
    results = simulate(lambda b: Signum(b, momentum=0.0), 1, lambda rank, step: {"g": grads[rank]})
    np.testing.assert_array_equal(results[0][0][0]["g"], [0, -1, 1])


@pytest.mark.parametrize("momentum, expected", [(0.9, 1.0), (0.0, -1.0)])
def test_the_vote_follows_local_momentum_not_the_last_gradient(momentum, expected):
    # step 0: g = +1, step 1: g = -0.5 — momentum 0.9 still points up: 0.9·0.1 − 0.1·0.5 > 0
    grads = [np.array([1.0], np.float32), np.array([-0.5], np.float32)]
    results = simulate(lambda b: Signum(b, momentum=momentum), 2, lambda rank, step: {"g": grads[step]})
    assert results[0][0][1]["g"][0] == expected


def test_output_is_a_vote_with_the_gradients_shape_and_dtype():
    shapes = {"w": (5, 3, 2), "b": (13,)}
    results = simulate(lambda b: Signum(b), 3, lambda r, s: random_gradients(shapes, r, s))
    assert_identical_across_ranks(results)
    for out in results[0][0]:
        for name, shape in shapes.items():
            assert out[name].shape == shape and out[name].dtype == np.float32
            assert set(np.unique(out[name])) <= {-1.0, 0.0, 1.0}


def test_sends_one_bit_per_element_plus_the_placeholder():
    shapes = {"w": (5, 3, 2), "b": (13,)}
    results = simulate(lambda b: Signum(b), 2, lambda r, s: random_gradients(shapes, r, s))
    compressor = results[0][1]
    assert compressor.stats.last_step.sent == (4 + 4) + (2 + 4)  # ⌈30/8⌉ + 4, ⌈13/8⌉ + 4
    assert compressor.stats.last_step.sent == sum(compressor.wire_bytes(s) for s in shapes.values())


@pytest.mark.parametrize("momentum", [1.0, -0.1, 1.5, True, "0.9", None])
def test_bad_momentum_raises(momentum):
    with pytest.raises(ValueError, match="momentum"):
        Signum(NumpyBackend(ThreadGroup(1).communicator(0)), momentum=momentum)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=70))
def test_pack_unpack_signs_round_trip(values):
    backend = NumpyBackend(ThreadGroup(1).communicator(0))
    x = np.array(values, dtype=np.float32)
    packed = backend.pack_signs(x)
    assert packed.dtype == np.uint8 and packed.shape == (-(-len(x) // 8),)
    np.testing.assert_array_equal(backend.unpack_signs(packed.reshape(1, -1), len(x))[0],
                                  np.where(x >= 0, 1.0, -1.0))


def test_a_tensor_zero_on_every_rank_stays_put():
    """Zero bits read as +1: without the placeholder's count of ranks with momentum, a parameter no
    rank ever used would move by −lr every step. (A rank whose momentum alone is zero still
    votes +1: one bit per element cannot abstain.)"""
    def gradient(rank, step):
        return {"unused": np.zeros(5, np.float32),
                "one": np.full(5, -1.0 if rank == 0 else 0.0, np.float32)}

    results = simulate(lambda b: Signum(b, momentum=0.9), 3, gradient)
    assert_identical_across_ranks(results)
    for out in results[0][0]:
        np.testing.assert_array_equal(out["unused"], 0)
        np.testing.assert_array_equal(out["one"], 0)  # −1 against the zero rank's +1 bit: a tie
