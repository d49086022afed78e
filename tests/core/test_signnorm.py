"""SignNorm (EF-signSGD): scaled 1-bit signs with error feedback (NumPy reference)."""
import numpy as np

from horovod_powersgd.core.signnorm import SignNorm

from tests.core.ranks import assert_identical_across_ranks, random_gradients, running_sum_gaps, simulate


def test_known_tensors_give_the_average_of_scaled_signs_and_the_local_error():
    grads = np.array([[1.0, -2.0, 3.0, -4.0],  # ‖·‖₁/d = 2.5, signs + − + −
                      [0.0, 0.0, 0.0, -8.0]],  # ‖·‖₁/d = 2, signs + + + − (0 counts as +)
                     dtype=np.float32)
    results = simulate(SignNorm, 1, lambda rank, step: {"g": grads[rank]},
                       after=lambda c: c.state_dict())
    assert_identical_across_ranks(results)
    np.testing.assert_allclose(results[0][0][0]["g"], [2.25, -0.25, 2.25, -2.25], rtol=1e-6)
    errors = [results[r][2]["tensors"]["g"]["slots"]["error"] for r in range(2)]
    np.testing.assert_allclose(errors[0], [-1.5, 0.5, 0.5, -1.5], rtol=1e-6)
    np.testing.assert_allclose(errors[1], [-2.0, -2.0, -2.0, -6.0], rtol=1e-6)


def test_error_feedback_keeps_the_running_sum_gap_bounded():
    fixed = random_gradients({"g": (24, 10)}, 0, 0)["g"], random_gradients({"g": (24, 10)}, 1, 0)["g"]
    results = simulate(SignNorm, 120, lambda rank, step: {"g": fixed[rank]})
    gaps = running_sum_gaps(results[0][0], "g", (fixed[0] + fixed[1]) / 2)
    assert max(gaps[60:]) < 1.5 * max(gaps[:60]), gaps


def test_wire_bytes_are_signs_scale_and_placeholder():
    shapes = {"w": (10, 7), "b": (3,)}
    results = simulate(SignNorm, 2, lambda r, s: random_gradients(shapes, r, s))
    compressor = results[0][1]
    assert compressor.stats.last_step.sent == (9 + 4 + 4) + (1 + 4 + 4)
    assert compressor.wire_bytes((10, 7), "float64") == 9 + 8 + 4



def test_a_scale_that_overflows_skips_the_step_and_keeps_the_error():
    """Finite elements whose ‖p‖₁ overflows float32: the step is handed on as non-finite and the
    error buffer keeps its value, instead of becoming p − inf·sign(p) for good."""
    big = np.full(64, 3e37, np.float32)

    def gradient(rank, step):
        return {"g": big if step == 1 else np.ones(64, np.float32)}

    results = simulate(SignNorm, 3, gradient)
    compressor = results[0][1]
    outputs = results[0][0]
    assert not np.isfinite(outputs[1]["g"]).all()
    assert compressor.stats.nonfinite_steps == 1
    assert np.isfinite(outputs[2]["g"]).all()
