"""The PyTorch backend's fast forms compute what the core's definitions say."""
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from horovod_powersgd.core.orthogonalize import gram_schmidt
from horovod_powersgd.torch import backend as backend_module
from horovod_powersgd.torch.backend import TorchBackend

BACKEND = TorchBackend()


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 24)),
              elements=st.one_of(st.sampled_from([0.0, 1.0, -2.5, 1e-30]),  # nothing near the
                                 st.floats(1e-6, 10), st.floats(-10, -1e-6))))  # floor ε·‖F‖ < 1e-6:
                                                                                # a residual there
                                                                                # is a coin toss
@example(np.array([[0.0, 0.0], [1.0, 0.0]]))  # QR alone drops e₁ after a zero row: GS keeps it
@example(np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 3.0]]))
def test_qr_orthogonalization_equals_gram_schmidt(factor_t):
    """Degenerate rows included (zero, repeated, tiny): the QR form of core.orthogonalize."""
    factor_t = torch.from_numpy(factor_t)
    if factor_t.shape[0] > factor_t.shape[1]:  # r > n cannot be orthonormal; PowerSGD caps r at n
        factor_t = factor_t[:factor_t.shape[1]]
    fast = BACKEND.orthogonalize_rows(factor_t, 1e-8)
    np.testing.assert_allclose(fast.numpy(), gram_schmidt(BACKEND, factor_t, 1e-8).numpy(),
                               atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(4, 24)),
              elements=st.one_of(st.sampled_from([0.0, 1.0, -2.5]),  # |x| ≥ 1 or 0: float32's
                                 st.floats(1, 10, width=32),          # round-off stays above ε
                                 st.floats(-10, -1, width=32))))
def test_qr_orthogonalization_in_float32_keeps_the_contract(factor_t):
    """In float32 a dependent row's round-off residual may exceed epsilon and be normalized, by QR
    and Gram–Schmidt alike, to different directions: what must hold is the contract — rows
    orthonormal or zero, and every input row inside their span. (Inputs of order epsilon are
    Gram–Schmidt's own regime, tested in tests/core/test_orthogonalize.py.)"""
    factor_t = torch.from_numpy(factor_t)
    factor_t = factor_t[:min(factor_t.shape)]
    fast = BACKEND.orthogonalize_rows(factor_t, 1e-8).double()
    gram = (fast @ fast.t()).numpy()
    np.testing.assert_allclose(gram, np.diag(np.round(np.diag(gram))), atol=1e-3)  # GS: ~1e-4 rows
    assert set(np.round(np.diag(gram))) <= {0.0, 1.0}
    rows = factor_t.double()
    np.testing.assert_allclose((rows @ fast.t() @ fast).numpy(), rows.numpy(),
                               atol=1e-4 * (1 + float(rows.abs().max())))


@pytest.mark.parametrize("scale", [1e-12, 1e12])
def test_qr_orthogonalization_does_not_depend_on_the_factors_scale(scale):
    """The floor is relative (core.orthogonalize.no_direction_below): a small factor keeps its
    directions, and a dependent row stays zero at any scale."""
    factor_t = torch.tensor([[1.0, 2.0, 0.5, 0.0], [2.0, 4.0, 1.0, 0.0], [0.0, 1.0, 0.0, 3.0]],
                            dtype=torch.float64)
    unit = BACKEND.orthogonalize_rows(factor_t, 1e-8)
    np.testing.assert_allclose(BACKEND.orthogonalize_rows(factor_t * scale, 1e-8).numpy(), unit.numpy(),
                               atol=1e-12)
    assert float(unit[1].abs().max()) == 0.0 and float(unit[2].norm()) == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf")])
def test_finite_flag(dtype, bad):
    tensor = torch.ones(1000, dtype=dtype)
    if bad is not None:
        tensor[417] = bad
    assert bool(BACKEND.finite_flag(tensor)) is (bad is None)


def test_finite_flag_of_empty_and_integer_tensors_is_true():
    assert bool(BACKEND.finite_flag(torch.ones(0)))
    assert bool(BACKEND.finite_flag(torch.arange(5, dtype=torch.uint8)))


@pytest.mark.parametrize("rank_one_updates", [True, False])
@pytest.mark.parametrize("rank", [1, 2, 3, 5])
def test_outer_and_in_place_updates(rank, rank_one_updates, monkeypatch):
    monkeypatch.setattr(backend_module, "rank_one_updates_win", lambda: rank_one_updates)
    left_t, right_t = torch.randn(rank, 17), torch.randn(rank, 9)
    expected = left_t.t() @ right_t
    out = torch.full((17, 9), float("nan"))  # whatever the buffer held is ignored
    assert BACKEND.outer(left_t, right_t, out=out) is out
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(BACKEND.outer(left_t, right_t), expected)
    target = torch.randn(17, 9)
    start = target.clone()
    assert BACKEND.sub_outer_(target, left_t, right_t) is target
    torch.testing.assert_close(target, start - expected)
    assert BACKEND.sub_(target, start) is target
    torch.testing.assert_close(target, -expected)


@pytest.mark.parametrize("blas, vendor, expected", [
    ("mkl, AVX512", "AuthenticAMD", True), ("mkl, AVX2", "GenuineIntel", False),
    ("mkl, AVX512", "", False), ("openblas, AVX2", "AuthenticAMD", False)])
def test_rank_one_updates_only_on_mkl_with_another_vendors_cpu(blas, vendor, expected, monkeypatch):
    monkeypatch.setattr(backend_module, "torch_blas", lambda: blas)
    monkeypatch.setattr(backend_module, "cpu_vendor", lambda: vendor)
    backend_module.rank_one_updates_win.cache_clear()
    try:
        assert backend_module.rank_one_updates_win() is expected
    finally:
        backend_module.rank_one_updates_win.cache_clear()


# ---------------------------------------------------------------- the baselines' host fast paths
def numpy_backend():
    from horovod_powersgd.reference.communicators import ThreadGroup
    from horovod_powersgd.reference.numpy_backend import NumpyBackend

    return NumpyBackend(ThreadGroup(1).communicator(0))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e6, 1e6, width=32)),
       st.integers(1, 3))
def test_signs_pack_and_unpack_as_the_numpy_reference_does(values, rows):
    reference = numpy_backend()
    packed = BACKEND.pack_signs(torch.from_numpy(values))
    np.testing.assert_array_equal(packed.numpy(), reference.pack_signs(values))
    stacked = torch.stack([packed] * rows)
    unpacked = BACKEND.unpack_signs(stacked, len(values))
    assert unpacked.dtype == torch.float32
    np.testing.assert_array_equal(unpacked.numpy(), reference.unpack_signs(stacked.numpy(), len(values)))


def test_topk_indices_select_the_largest_magnitudes():
    x = torch.randn(200_000)
    chosen = BACKEND.topk_indices(x, 2000)
    assert chosen.dtype == torch.int64
    np.testing.assert_array_equal(np.sort(x.abs()[chosen].numpy()),
                                  np.sort(torch.topk(x.abs(), 2000).values.numpy()))


def test_zero_at_and_lerp_write_in_place_unless_they_must_not():
    x = torch.arange(1.0, 7.0)
    assert BACKEND.zero_at_(x, torch.tensor([1, 4])) is x
    np.testing.assert_array_equal(x.numpy(), [1, 0, 3, 4, 0, 6])
    leaf = torch.ones(3, requires_grad=True)
    zeroed = BACKEND.zero_at_(leaf, torch.tensor([0]))
    assert zeroed is not leaf and leaf.detach().tolist() == [1, 1, 1] and zeroed.tolist() == [0, 1, 1]
    g, old = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0])
    assert BACKEND.lerp_(g, old, 0.25) is g  # g + 0.25·(old − g)
    np.testing.assert_allclose(g.numpy(), [1.5, -0.5])
    half = torch.tensor([1.0, -2.0], dtype=torch.float16)
    np.testing.assert_allclose(BACKEND.lerp_(half, old, 0.25).numpy(), [1.5, -0.5])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 200), st.integers(0, 2 ** 31))
def test_signed_sum_of_bit_rows_is_the_weighted_sum_of_signs(rows, count, seed):
    rng = np.random.default_rng(seed)
    packed = np.packbits(rng.random((rows, count)) < 0.5, axis=1)
    weights = rng.standard_normal(rows).astype(np.float32)
    got = BACKEND.signed_sum(torch.from_numpy(packed), count, torch.from_numpy(weights))
    assert got.dtype == torch.float32 and got.shape == (count,)
    expected = numpy_backend().signed_sum(packed, count, weights)  # the core's default
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_sign_in_place():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert BACKEND.sign_(x) is x and x.tolist() == [-1.0, 0.0, 1.0]
