import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from horovod_powersgd.core.orthogonalize import orthogonalize
from horovod_powersgd.reference import NumpyBackend, ThreadGroup

BACKEND = NumpyBackend(ThreadGroup(1).communicator(0))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_full_rank_columns_become_orthonormal_and_span_the_same_space(n, r, seed):
    r = min(r, n)
    P = np.random.default_rng(seed).standard_normal((n, r))
    P_hat = orthogonalize(BACKEND, P.T, 1e-8).T  # it works on the rows of Pᵀ
    np.testing.assert_allclose(P_hat.T @ P_hat, np.eye(r), atol=1e-8)
    # Gram–Schmidt keeps the span: P = P̂ (P̂ᵀ P)
    np.testing.assert_allclose(P_hat @ (P_hat.T @ P), P, atol=1e-8)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(1, 4)),
              elements=st.sampled_from([0.0, 1.0, -2.5, 1e-30])))
def test_degenerate_inputs_give_orthonormal_or_zero_columns(P):
    P_hat = orthogonalize(BACKEND, P.T.astype(np.float64), 1e-8).T
    assert np.isfinite(P_hat).all()
    gram = P_hat.T @ P_hat  # diagonal of 0s and 1s: P̂ P̂ᵀ is an orthogonal projector
    np.testing.assert_allclose(gram, np.diag(np.round(np.diag(gram))), atol=1e-6)
    assert set(np.round(np.diag(gram))) <= {0.0, 1.0}


def test_zero_and_repeated_columns_come_out_zero_not_nan():
    P = np.zeros((5, 3))
    P[:, 0] = 1.0
    P[:, 1] = 2.0  # parallel to column 0
    P_hat = orthogonalize(BACKEND, P.T, 1e-8).T  # it works on the rows of Pᵀ
    assert np.isfinite(P_hat).all()
    np.testing.assert_allclose(np.linalg.norm(P_hat[:, 0]), 1.0)
    assert np.linalg.norm(P_hat[:, 1:]) < 1e-6


def test_float32_round_off_residuals_never_break_orthogonality():
    """Rows p, p, q, q in float32: the second p leaves a residual of round-off, just under epsilon.
    Scaled up by 1/epsilon instead of zeroed it came out at length 0.83, and the first q, projected
    against it only partly, at 0.91 overlap with it: P̂ P̂ᵀ was no projector."""
    p, q = np.ones(9, np.float32), np.ones(9, np.float32)
    p[-1] = 8.235935
    rows = np.stack([p, p, q, q])
    for factor_t in (rows, rows * np.float32(0.1), rows * np.float32(0.01)):
        P_hat = orthogonalize(BACKEND, factor_t, 1e-8).astype(np.float64)
        gram = P_hat @ P_hat.T
        np.testing.assert_allclose(gram, np.diag(np.round(np.diag(gram))), atol=1e-5)
        np.testing.assert_allclose(np.diag(gram), [1, 0, 1, 0], atol=1e-5)
