"""Exact top-k on the host: the sampled threshold only decides how fast, never which entries."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horovod_powersgd.core import selection
from horovod_powersgd.core.selection import largest_indices


def assert_k_largest(magnitude, indices, k):
    assert indices.dtype == np.int64 and len(indices) == k == len(np.unique(indices))
    np.testing.assert_array_equal(np.sort(magnitude[indices]), np.sort(magnitude)[len(magnitude) - k:])


DISTRIBUTIONS = {
    "normal": lambda rng, d: np.abs(rng.standard_normal(d)),
    "heavy tailed": lambda rng, d: np.abs(rng.standard_cauchy(d)),
    "mostly zero": lambda rng, d: np.where(rng.random(d) < 0.001, rng.random(d), 0.0),
    "few levels (ties)": lambda rng, d: rng.integers(0, 4, d).astype(np.float64),
    "sorted": lambda rng, d: np.linspace(0, 1, d),
}


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("d, ratio", [(100, 0.1), (70_000, 0.01), (200_000, 0.001), (200_000, 0.2)])
def test_selects_the_k_largest(distribution, d, ratio):
    magnitude = DISTRIBUTIONS[distribution](np.random.default_rng(d), d).astype(np.float32)
    k = max(1, round(ratio * d))
    assert_k_largest(magnitude, largest_indices(magnitude, k), k)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300_000), st.floats(1e-5, 1.0), st.integers(0, 2 ** 31))
def test_selects_the_k_largest_for_any_size_and_k(d, ratio, seed):
    magnitude = np.abs(np.random.default_rng(seed).standard_normal(d)).astype(np.float32)
    k = max(1, min(d, round(ratio * d)))
    assert_k_largest(magnitude, largest_indices(magnitude, k), k)


def test_a_threshold_set_too_high_falls_back_to_the_full_selection(monkeypatch):
    monkeypatch.setattr(selection, "CANDIDATE_MARGIN", 0.01)  # the sample's threshold keeps too few
    magnitude = np.abs(np.random.default_rng(0).standard_normal(300_000)).astype(np.float32)
    assert_k_largest(magnitude, largest_indices(magnitude, 3000), 3000)


@pytest.mark.parametrize("k", [0, -1, 11])
def test_impossible_k_raises(k):
    with pytest.raises(ValueError, match="select"):
        largest_indices(np.ones(10, np.float32), k)
