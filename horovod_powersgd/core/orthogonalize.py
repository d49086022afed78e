"""Gram–Schmidt orthogonalization of the columns of P (PowerSGD, Algorithm 1, line 5).

Written on backend operations so one implementation serves every framework. ``epsilon`` keeps the
normalization finite when a column is (numerically) zero, which happens for all-zero gradients and
rank-deficient ones (a layer whose gradient has rank < r): such a column comes out (near) zero
instead of NaN, and its contribution to P̂ Qᵀ vanishes.
"""
from __future__ import annotations

from .backend import Backend


def orthogonalize(backend: Backend, P, epsilon: float):
    """Columns of ``P`` (n×r) made orthonormal by modified Gram–Schmidt, left to right."""
    columns = backend.columns(P)
    done = []
    for column in columns:
        for previous in done:
            column = column - backend.sum(column * previous) * previous
        column = column / (backend.sqrt(backend.sum(column * column)) + epsilon)
        done.append(column)
    return backend.stack_columns(done)
