"""Single-round PowerSGD — alternating (``alternate=True``) and two-sided (``two_sided=True``) —
on the NumPy reference, with simulated ranks."""
import numpy as np
import pytest

from horovod_powersgd.core.backend import ReduceOp, TensorIdentity, TrafficOnly
from horovod_powersgd.core.powersgd import PowerSGD
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients

from tests.core.ranks import (assert_identical_across_ranks, outputs_of, random_gradients,
                              running_sum_gaps, simulate)
from tests.powersgd_schemes import SCHEMES, every_single_round_scheme

SHAPES = {"w": (30, 20), "conv": (8, 3, 3, 3), "b": (20,)}


def single_round(scheme, **kwargs):
    return lambda backend: PowerSGD(backend, **SCHEMES[scheme], **kwargs)


def reference_single_round(gradients, rank, initial_q):
    """The algorithm written out for one matrix, independently of the package: ``gradients[t][i]``
    is rank i's n×m gradient at step t. Orthogonalization by NumPy's QR (its signs differ from
    Gram–Schmidt's, which the products P Q̂ᵀ do not see)."""
    size = len(gradients[0])
    errors = [np.zeros_like(g, dtype=np.float64) for g in gradients[0]]
    shared_q, reduced_p, outputs = initial_q.astype(np.float64), None, []
    for t, step_gradients in enumerate(gradients):
        M = [g + e for g, e in zip(step_gradients, errors)]
        if t % 2 == 0:
            Q_hat = np.linalg.qr(shared_q)[0]
            local = [m @ Q_hat for m in M]
            reduced_p = sum(local) / size
            errors = [m - p @ Q_hat.T for m, p in zip(M, local)]
            outputs.append(reduced_p @ Q_hat.T)
        else:
            P_hat = np.linalg.qr(reduced_p)[0]
            local = [m.T @ P_hat for m in M]
            shared_q = sum(local) / size
            errors = [m - P_hat @ q.T for m, q in zip(M, local)]
            outputs.append(P_hat @ shared_q.T)
    return outputs


def reference_two_sided(gradients, initial_p, initial_q):
    """The two-sided scheme written out for one matrix, as `reference_single_round`: the gradient
    is the mean M̄ minus the part outside both shared subspaces, (I − P̂P̂ᵀ) M̄ (I − Q̂Q̂ᵀ)."""
    size = len(gradients[0])
    errors = [np.zeros_like(g, dtype=np.float64) for g in gradients[0]]
    shared_p, shared_q, outputs = initial_p.astype(np.float64), initial_q.astype(np.float64), []
    for step_gradients in gradients:
        M = [g + e for g, e in zip(step_gradients, errors)]
        P_hat, Q_hat = np.linalg.qr(shared_p)[0], np.linalg.qr(shared_q)[0]
        outside_p = np.eye(len(P_hat)) - P_hat @ P_hat.T
        outside_q = np.eye(len(Q_hat)) - Q_hat @ Q_hat.T
        errors = [outside_p @ m @ outside_q for m in M]
        mean = sum(M) / size
        outputs.append(mean - outside_p @ mean @ outside_q)
        shared_p, shared_q = mean @ Q_hat, mean.T @ P_hat
    return outputs


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("scheme, max_rank, factor_numbers", [
    # per step, per matrix: alternate, P or Q padded to r·max(n, m); two-sided, r(n+m)
    ("alternate", 2, 2 * 30 + 2 * 27), ("two_sided", 4, 2 * (30 + 20) + 2 * (8 + 27))])
def test_identical_on_all_ranks_bounded_rank_and_bytes(size, scheme, max_rank, factor_numbers):
    results = simulate(single_round(scheme, rank=2), 4, lambda r, s: random_gradients(SHAPES, r, s),
                       size=size)
    assert_identical_across_ranks(results)
    for step, out in enumerate(outputs_of(results)):
        assert np.linalg.matrix_rank(out["w"]) <= max_rank
        assert np.linalg.matrix_rank(out["conv"].reshape(8, -1)) <= max_rank
        exact_bias = sum(random_gradients(SHAPES, r, step)["b"] for r in range(size)) / size
        np.testing.assert_allclose(out["b"], exact_bias, rtol=1e-6)
    assert results[0][1].stats.last_step.sent == 4 * (factor_numbers + 20)  # the bias as it is


@every_single_round_scheme
def test_equals_an_independent_numpy_reference(scheme):
    steps, size, n, m = 7, 3, 24, 18
    grads = [[random_gradients({"w": (n, m)}, r, s)["w"] for r in range(size)] for s in range(steps)]
    results = simulate(single_round(scheme, rank=2), steps, lambda r, s: {"w": grads[s][r]}, size=size)
    compressor = results[0][1]
    initial_q = compressor.initial_factor(m, 2)
    expected = (reference_single_round(grads, 2, initial_q) if scheme == "alternate" else
                reference_two_sided(grads, compressor.initial_factor(n, 2, side="p"), initial_q))
    for out, ref in zip(outputs_of(results), expected):
        np.testing.assert_allclose(out["w"], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_two_sided_keeps_what_either_subspace_holds():
    """The first two-sided step's gradient is the mean minus exactly its part outside both seeded
    subspaces; what lies in either one arrives whole."""
    n, m = 30, 20
    results = simulate(single_round("two_sided", rank=2), 1,
                       lambda r, s: random_gradients({"w": (n, m)}, r, s))
    compressor, out = results[0][1], outputs_of(results)[0]["w"]
    P_hat = np.linalg.qr(compressor.initial_factor(n, 2, side="p").astype(np.float64))[0]
    Q_hat = np.linalg.qr(compressor.initial_factor(m, 2).astype(np.float64))[0]
    mean = sum(random_gradients({"w": (n, m)}, r, 0)["w"] for r in range(2)) / 2
    np.testing.assert_allclose(P_hat.T @ out, P_hat.T @ mean, atol=1e-5)
    np.testing.assert_allclose(out @ Q_hat, mean @ Q_hat, atol=1e-5)
    outside = (np.eye(n) - P_hat @ P_hat.T) @ out @ (np.eye(m) - Q_hat @ Q_hat.T)
    np.testing.assert_allclose(outside, 0, atol=1e-5)


def low_rank_run(error_feedback, steps=8, scheme="alternate"):
    rng = np.random.default_rng(3)
    U, V = rng.standard_normal((40, 2)), rng.standard_normal((25, 2))
    per_rank = [(U * s) @ V.T for s in ([3.0, 1.0], [1.0, -2.0])]  # shared spans, rank 2 average
    exact = (per_rank[0] + per_rank[1]) / 2
    results = simulate(single_round(scheme, rank=2, error_feedback=error_feedback), steps,
                       lambda r, s: {"g": per_rank[r].astype(np.float32)})
    return [o["g"] for o in outputs_of(results)], exact


@every_single_round_scheme
def test_low_rank_gradients_are_recovered_exactly_after_warm_up(scheme):
    # Alternating: P-step 0 finds the column space from a random Q; Q-step 1 then recovers the
    # gradient exactly, and so does every step after it (Q̂ spans the row space from then on).
    # Two-sided: step 0's P = M Q̂ spans the column space, so from step 1 on P̂ does, and nothing
    # of the gradient lies outside it.
    outputs, exact = low_rank_run(error_feedback=False, scheme=scheme)
    for out in outputs[1:]:
        np.testing.assert_allclose(out, exact, rtol=1e-4, atol=1e-4)


def test_with_error_feedback_every_q_step_completes_the_running_sum_exactly():
    # What a P-step misses stays in the error and its Q-step (whose P̂ spans the column space)
    # delivers it: after every Q-step the running sum is exact. Single steps converge to the
    # gradient as the carried error's stray directions die out.
    outputs, exact = low_rank_run(error_feedback=True, steps=10)
    running = np.cumsum(outputs, axis=0)
    for step in range(1, 10, 2):
        np.testing.assert_allclose(running[step], (step + 1) * exact, rtol=1e-4, atol=1e-4)
    deviation = [np.linalg.norm(out - exact) for out in outputs[2::2]]
    assert all(later < earlier for earlier, later in zip(deviation, deviation[1:])), deviation


@every_single_round_scheme
@pytest.mark.parametrize("error_feedback", [True, False])
def test_error_feedback_running_sum_tracks_the_uncompressed_one(scheme, error_feedback):
    fixed = [random_gradients({"g": (24, 20)}, r, 0)["g"] for r in range(2)]
    results = simulate(single_round(scheme, rank=1, error_feedback=error_feedback), 80,
                       lambda rank, step: {"g": fixed[rank]})
    gaps = running_sum_gaps(outputs_of(results), "g", (fixed[0] + fixed[1]) / 2)
    if error_feedback:
        assert max(gaps[40:]) < 1.5 * max(gaps[:40])
    else:
        assert gaps[79] > 3 * gaps[19], "without feedback the missed part adds up linearly"


@every_single_round_scheme
def test_errors_sum_to_what_the_ranks_did_not_get(scheme):
    """Σ_i E_i = Σ_i M_i − N·G': each rank's error is its own M minus its own approximation."""
    shapes = {"w": (12, 10)}
    results = simulate(single_round(scheme, rank=1), 1, lambda r, s: random_gradients(shapes, r, 0),
                       after=lambda c: c.state_dict())
    errors = sum(r[2]["tensors"]["w"]["error"] for r in results)
    gradients = sum(random_gradients(shapes, r, 0)["w"] for r in range(2))
    np.testing.assert_allclose(errors, gradients - 2 * outputs_of(results)[0]["w"], atol=1e-5)


@every_single_round_scheme
def test_sum_op_returns_twice_the_average(scheme):
    avg = simulate(single_round(scheme, rank=2), 4, lambda r, s: random_gradients(SHAPES, r, s))
    summed = simulate(single_round(scheme, rank=2), 4, lambda r, s: random_gradients(SHAPES, r, s),
                      op=ReduceOp.SUM)
    for a, s in zip(outputs_of(avg), outputs_of(summed)):
        for name in SHAPES:
            np.testing.assert_allclose(s[name], 2 * a[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheme, rank_of_output, cold_numbers", [
    ("alternate", 1, 16),  # without warm start every step sends P from a fresh Q
    ("two_sided", 2, 16 + 12)])  # P and Q from a fresh Q̂ and P̂
def test_start_step_and_no_warm_start(scheme, rank_of_output, cold_numbers):
    shapes = {"w": (16, 12)}
    exact = [sum(random_gradients(shapes, r, s)["w"] for r in range(2)) / 2 for s in range(5)]
    warm = simulate(single_round(scheme, rank=1, start_step=2), 5,
                    lambda r, s: random_gradients(shapes, r, s))
    for step in (0, 1):
        np.testing.assert_allclose(outputs_of(warm)[step]["w"], exact[step], rtol=1e-6)
    assert np.linalg.matrix_rank(outputs_of(warm)[3]["w"]) == rank_of_output
    cold = simulate(single_round(scheme, rank=1, warm_start=False), 3,
                    lambda r, s: random_gradients(shapes, r, s))
    assert_identical_across_ranks(cold)
    assert cold[0][1].stats.last_step.sent == 4 * cold_numbers
    assert not np.allclose(outputs_of(cold)[1]["w"], outputs_of(cold)[2]["w"])


@every_single_round_scheme
@pytest.mark.parametrize("boundary", [3, 4])  # alternating: resume before a Q-step and a P-step
def test_checkpoint_resume_is_bit_identical_across_a_p_q_boundary(scheme, boundary):
    def body(comm):
        c = PowerSGD(NumpyBackend(comm), rank=2, **SCHEMES[scheme])
        for s in range(boundary):
            reduce_gradients(c, random_gradients(SHAPES, comm.rank, s))
        state = c.state_dict()
        after = [reduce_gradients(c, random_gradients(SHAPES, comm.rank, s))
                 for s in range(boundary, boundary + 3)]
        resumed = PowerSGD(NumpyBackend(comm), rank=2, **SCHEMES[scheme])
        resumed.load_state_dict(state)
        again = [reduce_gradients(resumed, random_gradients(SHAPES, comm.rank, s))
                 for s in range(boundary, boundary + 3)]
        return after, again

    for after, again in ThreadGroup(2).run(body):
        for x, y in zip(after, again):
            for name in SHAPES:
                np.testing.assert_array_equal(x[name], y[name])


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_a_non_finite_step_leaves_the_state_untouched(scheme):
    """One rank's gradient overflows at step 3: every rank gets a non-finite gradient (so a loss
    scaler skips the step) and keeps its state bit for bit; training then goes on exactly as if
    the step had never happened."""
    def gradients(rank, step):
        g = random_gradients(SHAPES, rank, step if step < 3 else step - 1)
        if step == 3 and rank == 1:
            g["w"][0, 0] = np.inf
        return g

    def body(comm):
        c = PowerSGD(NumpyBackend(comm), rank=2, **SCHEMES[scheme])
        clean = PowerSGD(NumpyBackend(comm), rank=2, **SCHEMES[scheme])
        outs, clean_outs = [], []
        for s in range(6):
            if s == 3:
                before = c.state_dict()
            outs.append(reduce_gradients(c, gradients(comm.rank, s)))
            if s == 3:
                after = c.state_dict()
            else:
                clean_outs.append(reduce_gradients(clean, gradients(comm.rank, s)))
        return outs, clean_outs, before, after

    for outs, clean_outs, before, after in ThreadGroup(2).run(body):
        assert not np.isfinite(outs[3]["w"]).all()
        assert np.isfinite(outs[3]["conv"]).all()  # other tensors of the step are unaffected
        assert before.keys() == after.keys() and before["tensors"].keys() == after["tensors"].keys()
        state_w = (before["tensors"]["w"], after["tensors"]["w"])
        assert state_w[0]["step"] == state_w[1]["step"]
        for field in ("q", "p", "error"):
            if state_w[0][field] is None:
                assert state_w[1][field] is None
            else:
                np.testing.assert_array_equal(state_w[0][field], state_w[1][field])
        for x, y in zip(outs[:3] + outs[4:], clean_outs):
            for name in SHAPES:
                np.testing.assert_array_equal(x[name], y[name])


def test_power_iterations_with_alternate_is_refused():
    with pytest.raises(ValueError, match="alternate=True .* power_iterations must be 1"):
        PowerSGD(TrafficOnly(), rank=2, alternate=True, power_iterations=2)
    with pytest.raises(ValueError, match="alternate must be True or False"):
        PowerSGD(TrafficOnly(), rank=2, alternate="yes")
    with pytest.raises(ValueError, match="two_sided=True .* power_iterations must be 1"):
        PowerSGD(TrafficOnly(), rank=2, two_sided=True, power_iterations=3)
    with pytest.raises(ValueError, match="two different single-round schemes"):
        PowerSGD(TrafficOnly(), rank=2, two_sided=True, alternate=True)


def test_wire_bytes_are_one_padded_factor():
    c = PowerSGD(TrafficOnly(), rank=2, alternate=True)
    assert c.wire_bytes((30, 20)) == c.wire_bytes((20, 30)) == 4 * 2 * 30
    assert c.wire_bytes((20,)) == 80
    assert PowerSGD(TrafficOnly(), rank=2, alternate=True, wire_dtype="float16").wire_bytes((30, 20)) == 2 * 2 * 30


def test_two_sided_wire_bytes_are_both_factors():
    c = PowerSGD(TrafficOnly(), rank=2, two_sided=True)
    assert c.wire_bytes((30, 20)) == c.wire_bytes((20, 30)) == 4 * 2 * (30 + 20)
    assert PowerSGD(TrafficOnly(), rank=2, two_sided=True, wire_dtype="float16").wire_bytes((30, 20)) == 2 * 2 * 50


@pytest.mark.parametrize("scheme, length", [("alternate", 2 * 30), ("two_sided", 2 * (30 + 20))])
def test_every_step_puts_one_shape_on_the_wire(scheme, length):
    shapes = {"w": (30, 20)}
    def body(comm):
        c = PowerSGD(NumpyBackend(comm), rank=2, **SCHEMES[scheme])
        wires = []
        for s in range(3):
            grad = random_gradients(shapes, comm.rank, s)["w"]
            wire, ctx = c.compress(grad, TensorIdentity("w", ReduceOp.AVERAGE, comm.size))
            wires.append(np.shape(wire))
            c.decompress(c.backend.wait(c.backend.allreduce_async(wire, "w", ctx.identity)), ctx)
        return wires

    assert ThreadGroup(2).run(body)[0] == [(length,)] * 3
