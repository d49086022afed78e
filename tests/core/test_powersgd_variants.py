"""PowerSGD's variants: k-step power iteration, no error feedback, half-precision factors."""
import numpy as np
import pytest

from horovod_powersgd.core.powersgd import factors as factors_module
from horovod_powersgd.core.powersgd import PowerSGD
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients

from tests.core.ranks import random_gradients, running_sum_gaps, simulate


def decaying_spectrum(n=40, m=30, singular=(10, 5, 1, 0.5, 0.2, 0.1)):
    rng = np.random.default_rng(5)
    U, _ = np.linalg.qr(rng.standard_normal((n, len(singular))))
    V, _ = np.linalg.qr(rng.standard_normal((m, len(singular))))
    return (U * np.array(singular)) @ V.T


@pytest.mark.parametrize("rank", [1, 2])
def test_more_power_iterations_approach_the_best_rank_r_approximation(rank):
    M = decaying_spectrum().astype(np.float32)
    U, S, Vt = np.linalg.svd(M)
    optimum = np.linalg.norm(M - (U[:, :rank] * S[:rank]) @ Vt[:rank])

    def error(k):  # one step from a random Q, nothing carried over: only the k iterations help
        results = simulate(lambda b: PowerSGD(b, rank=rank, power_iterations=k, warm_start=False,
                                              error_feedback=False), 1, lambda r, s: {"g": M})
        assert results[0][1].stats.last_step.sent == 4 * k * rank * (40 + 30)
        return np.linalg.norm(results[0][0][0]["g"] - M)

    errors = [error(k) for k in (1, 2, 4)]
    assert errors[0] > errors[1] > optimum
    assert errors[2] < 1.001 * optimum, (errors, optimum)


@pytest.mark.parametrize("error_feedback", [True, False])
def test_running_sum_gap_is_bounded_only_with_error_feedback(error_feedback):
    fixed = [random_gradients({"g": (24, 20)}, r, 0)["g"] for r in range(2)]
    results = simulate(lambda b: PowerSGD(b, rank=1, error_feedback=error_feedback), 80,
                       lambda rank, step: {"g": fixed[rank]}, after=lambda c: c.state_dict())
    gaps = running_sum_gaps(results[0][0], "g", (fixed[0] + fixed[1]) / 2)
    if error_feedback:
        assert max(gaps[40:]) < 1.5 * max(gaps[:40])
        assert results[0][2]["tensors"]["g"]["error"] is not None
    else:
        assert gaps[79] > 3 * gaps[19], "without feedback the missed part adds up linearly"
        assert results[0][2]["tensors"]["g"]["error"] is None


class Recording:
    """A communicator that logs the dtype of every tensor put on the wire."""

    def __init__(self, comm, log):
        self.comm, self.rank, self.size, self.log = comm, comm.rank, comm.size, log

    def allreduce_async(self, array, name, op):
        self.log.append((name, np.asarray(array).dtype.name))
        return self.comm.allreduce_async(array, name, op)

    def allgather_async(self, array, name):  # the ranks' agreement check: not a gradient factor
        return self.comm.allgather_async(array, name)

    def wait(self, handle):
        return self.comm.wait(handle)


@pytest.mark.parametrize("wire_dtype, tolerance", [("float16", 5e-3), ("bfloat16", 3e-2)])
def test_half_precision_factors_on_the_wire_orthogonalized_in_float32(monkeypatch, wire_dtype,
                                                                      tolerance):
    orthogonalized = []
    original = factors_module.orthogonalize

    def recording_orthogonalize(backend, P, epsilon):
        orthogonalized.append(np.asarray(P).dtype.name)
        return original(backend, P, epsilon)

    monkeypatch.setattr(factors_module, "orthogonalize", recording_orthogonalize)
    shapes = {"w": (32, 24)}

    def run(dtype):
        def rank_main(comm):
            log = []
            compressor = PowerSGD(NumpyBackend(Recording(comm, log)), rank=2, power_iterations=2,
                                  wire_dtype=dtype)
            outs = [reduce_gradients(compressor, random_gradients(shapes, comm.rank, s)) for s in range(3)]
            return outs, log, compressor.stats.last_step.sent

        return ThreadGroup(2).run(rank_main)[0]

    reference, _, full_bytes = run(None)
    outputs, log, half_bytes = run(wire_dtype)
    assert {dtype for _, dtype in log} == {wire_dtype} and len(log) == 3 * 4  # P0 Q0 P1 Q1 per step
    assert set(orthogonalized) == {"float32"}
    assert half_bytes * 2 == full_bytes == 4 * 2 * 2 * (32 + 24)
    for out, ref in zip(outputs, reference):
        assert out["w"].dtype == np.float32
        assert np.linalg.norm(out["w"] - ref["w"]) < tolerance * np.linalg.norm(ref["w"])
