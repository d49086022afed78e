"""PowerSGD on degenerate gradients, every scheme, on simulated ranks: a layer whose averaged gradient
is exactly zero for a step (an unused branch, a zero-initialised layer above it), a gradient of rank
below r, a layer that is zero on one rank only, and one without gradient for many steps. Each is
checked against the exact mean gradient (what ``Compression.none`` delivers), not only finiteness."""
import numpy as np
import pytest

from horovod_powersgd.core.orthogonalize import renew_rows
from horovod_powersgd.core.powersgd import PowerSGD
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients

from tests.core.ranks import assert_identical_across_ranks, outputs_of, random_gradients, simulate
from tests.powersgd_schemes import SCHEMES, every_scheme

N = M = 10  # square: every scheme is lossless at rank min(n, m) (the alternating one needs n = m)
STEPS = 12


def gradients(zero_steps=(), rank_one_steps=(), zero_on_rank=None):
    def gradient(rank, step):
        rng = np.random.default_rng([rank, step])
        g = rng.standard_normal((N, M)).astype(np.float32)
        if step in rank_one_steps:
            g = np.outer(rng.standard_normal(N), rng.standard_normal(M)).astype(np.float32)
        if step in zero_steps or rank == zero_on_rank:
            g = g * 0
        return {"w": g}
    return gradient


def exact_mean(gradient, step, size=2):
    return sum(gradient(rank, step)["w"] for rank in range(size)) / size


def run(scheme, rank, gradient, steps=STEPS):
    make = lambda b: PowerSGD(b, rank=rank, min_compression_rate=0.01, **SCHEMES[scheme])  # noqa: E731
    results = simulate(make, steps, gradient)
    assert_identical_across_ranks(results)
    return [out["w"] for out in outputs_of(results)], results[0][1]


CASES = {"zero at step 0": dict(zero_steps={0}), "zero at steps 3-5": dict(zero_steps={3, 4, 5}),
         "zero at steps 3-4": dict(zero_steps={3, 4})}


@pytest.mark.parametrize("case", list(CASES))
@every_scheme
def test_a_zero_step_at_a_lossless_rank_equals_the_exact_mean_at_every_step(scheme, case):
    """Before: the zero reduced factor became the warm start, and every later step returned zero."""
    gradient = gradients(**CASES[case])
    outputs, _ = run(scheme, N, gradient)
    for step, out in enumerate(outputs):
        np.testing.assert_allclose(out, exact_mean(gradient, step), atol=1e-5, err_msg=f"step {step}")


@pytest.mark.parametrize("case", list(CASES))
@every_scheme
def test_a_zero_step_at_rank_2_leaves_the_layer_training(scheme, case):
    """After the zero steps the summed update moves at least half as far as the exact one."""
    gradient = gradients(**CASES[case])
    outputs, _ = run(scheme, 2, gradient)
    moved = np.linalg.norm(sum(outputs[6:]))
    exact = np.linalg.norm(sum(exact_mean(gradient, step) for step in range(6, STEPS)))
    assert moved >= 0.5 * exact, (moved, exact)
    assert all(np.linalg.norm(out) > 0 for out in outputs[6:])


@every_scheme
def test_a_gradient_of_rank_below_r_costs_at_most_two_inexact_steps(scheme):
    """Rank-1 gradients for steps 0-2 at rank 10: the factor's directions that carried nothing are
    seeded again, so the scheme is lossless again from step 5 on (classic and two-sided at once)."""
    gradient = gradients(rank_one_steps={0, 1, 2})
    outputs, _ = run(scheme, N, gradient)
    for step in range(5, STEPS):
        np.testing.assert_allclose(outputs[step], exact_mean(gradient, step), atol=1e-5,
                                   err_msg=f"step {step}")


@every_scheme
def test_a_layer_zero_on_one_rank_only_trains_on_the_other_ranks_gradient(scheme):
    gradient = gradients(zero_on_rank=1)
    outputs, _ = run(scheme, N, gradient)
    for step, out in enumerate(outputs):
        np.testing.assert_allclose(out, exact_mean(gradient, step), atol=1e-5)


@every_scheme
def test_a_layer_without_gradient_for_many_steps_delivers_its_error_and_trains_again(scheme):
    """The error buffer is kept: while the gradient is zero the compressed steps go on delivering
    what earlier steps missed, so the ranks' mean error only shrinks; once the gradient is back the
    layer trains as before."""
    quiet = set(range(4, 34))
    gradient = gradients(zero_steps=quiet)
    errors = []

    def rank_main(comm):
        compressor = PowerSGD(NumpyBackend(comm), rank=2, **SCHEMES[scheme])
        outputs = []
        for step in range(40):
            outputs.append(reduce_gradients(compressor, gradient(comm.rank, step))["w"])
            errors.append((comm.rank, step, compressor.state_dict()["tensors"]["w"]["error"]))
        return outputs

    outputs = ThreadGroup(2).run(rank_main)[0]
    mean_error = {step: np.linalg.norm(sum(e for r, s, e in errors if s == step) / 2)
                  for step in range(40)}
    own_error = {step: max(np.linalg.norm(e) for r, s, e in errors if s == step) for step in range(40)}
    for step in range(5, 34):
        assert mean_error[step] <= mean_error[step - 1] + 1e-5, step
        assert own_error[step] <= own_error[4] + 1e-5, step  # bounded: no growth while unused
    assert mean_error[33] < 1e-2 * mean_error[4]
    delivered = sum(outputs[4:34])
    assert np.linalg.norm(delivered) > 0  # the delayed gradient mass arrives
    moved = np.linalg.norm(sum(outputs[34:]))
    assert moved >= 0.5 * np.linalg.norm(sum(exact_mean(gradient, s) for s in range(34, 40)))


@every_scheme
def test_checkpoint_resume_across_a_zero_step_is_bit_identical(scheme):
    gradient = gradients(zero_steps={2})

    def rank_main(comm):
        make = lambda: PowerSGD(NumpyBackend(comm), rank=2, **SCHEMES[scheme])  # noqa: E731
        compressor = make()
        for step in range(3):
            reduce_gradients(compressor, gradient(comm.rank, step))
        state = compressor.state_dict()
        after = [reduce_gradients(compressor, gradient(comm.rank, s))["w"] for s in range(3, 7)]
        resumed = make()
        resumed.load_state_dict(state)
        again = [reduce_gradients(resumed, gradient(comm.rank, s))["w"] for s in range(3, 7)]
        return after, again

    for after, again in ThreadGroup(2).run(rank_main):
        for x, y in zip(after, again):
            np.testing.assert_array_equal(x, y)


def test_renew_rows_keeps_the_directions_with_content_and_seeds_the_empty_ones():
    backend = NumpyBackend(None)
    factor = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1e-9, 0.0]], dtype=np.float32)
    seed = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=np.float32)
    renewed = renew_rows(backend, factor, seed, 1e-8)
    np.testing.assert_allclose(renewed, [[0.6, 0.8, 0], [0, 1, 0], [0, 0, 1]], rtol=1e-6)


@pytest.mark.parametrize("scale", [1e-6, 1e-12, 1e12])
@every_scheme
def test_a_small_gradient_is_compressed_as_a_large_one_scaled(scheme, scale):
    """Every product scales with M alone and every "no direction left" floor is relative to the
    factor it judges: a gradient ``scale`` times another (entries ~1e-12, a layer far from the loss)
    gives the same result ``scale`` times over, step after step — none of its directions is taken
    for empty, none of the warm start is lost."""
    shapes = {"w": (12, 10)}

    def run(factor):
        results = simulate(lambda b: PowerSGD(b, rank=2, min_compression_rate=1.0, **SCHEMES[scheme]), 6,
                           lambda rank, step: {"w": factor * random_gradients(shapes, rank, step)["w"]})
        return outputs_of(results)

    unit, scaled = run(1.0), run(scale)
    for step, (a, b) in enumerate(zip(unit, scaled)):
        np.testing.assert_allclose(b["w"] / scale, a["w"], rtol=1e-3, atol=1e-5, err_msg=f"step {step}")

