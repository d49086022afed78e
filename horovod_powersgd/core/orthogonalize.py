"""Gram–Schmidt orthogonalization of the columns of P (PowerSGD, Algorithm 1, line 5).

Written on backend operations so one implementation serves every framework.

Degenerate inputs need care. For an all-zero or rank-deficient gradient (a layer whose gradient has
rank < r, e.g. a batch smaller than r), some columns of P are (numerically) zero or lie in the span of
earlier ones. The usual remedy, dividing by ``norm + epsilon``, avoids NaN but is not enough: the
earlier columns then come out slightly shorter than 1, a dependent column keeps a residual of order
epsilon, and normalizing that residual yields a spurious unit-length column almost parallel to an
earlier one — P̂ is no longer orthonormal and P̂ P̂ᵀ M over-counts that direction (by 60 % for two
parallel columns). Here a column is normalized exactly, and a column whose residual after projection
is below ``RELATIVE_TOLERANCE`` of its length before projection (or below ``epsilon`` in absolute
terms) is set to zero: it carries no new direction, and its contribution to P̂ Qᵀ vanishes.
"""
from __future__ import annotations

from .backend import Backend

#: residual/original length below which a column counts as dependent; far above float32 round-off
#: (~1e-7 · √n) and far below any direction worth keeping (what is dropped stays in the error buffer)
RELATIVE_TOLERANCE = 1e-4


def orthogonalize(backend: Backend, P, epsilon: float):
    """Columns of ``P`` (n×r) made orthonormal (or zero, when dependent) by modified Gram–Schmidt."""
    b = backend
    done = []
    for column in b.columns(P):
        length = b.sqrt(b.sum(column * column))
        for previous in done:
            column = column - b.sum(column * previous) * previous
        norm = b.sqrt(b.sum(column * column))
        independent = norm > RELATIVE_TOLERANCE * length + epsilon
        done.append(b.where(independent, column / (norm + 1e-30), column * 0))
    return b.stack_columns(done)
