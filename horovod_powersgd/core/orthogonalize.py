"""Gram–Schmidt orthogonalization of the columns of P (stored as the rows of Pᵀ) (PowerSGD, Algorithm 1, line 5).

Written on backend operations so one implementation serves every framework.

Degenerate inputs need care. For an all-zero or rank-deficient gradient (a layer whose gradient has
rank < r, e.g. a batch smaller than r), some columns of P are zero or lie in the span of earlier ones.
The usual remedy, dividing by ``norm + epsilon``, avoids NaN but is not enough: every column then
comes out slightly shorter than 1, a dependent column keeps a residual of order epsilon (or of float
round-off), and that residual — normalized to length ~1 — is no longer orthogonal to the earlier
columns: P̂ P̂ᵀ M then over-counts a direction (by 64 % for two parallel columns). Here:

- a column whose residual (after projecting out the earlier ones) is no longer than ``epsilon``
  times the factor's own scale, its Frobenius norm ‖P‖ (`no_direction_below`), becomes exactly
  zero — it holds nothing but round-off — and every other is divided by its norm: unit length
  exactly. (Dividing a short residual by ``max(norm, epsilon)`` instead left a column of
  length between 0 and 1, which later columns were then projected against only partly: in float32,
  rows p, p, q, q came out with two columns at 0.91 overlap, no projector at all.)
- each column is projected against the earlier ones twice ("twice is enough", Giraud et al. 2005),
  so a round-off residual that does get normalized is orthogonal to them: P̂ stays orthonormal (or has
  zero columns), and P̂ P̂ᵀ is an orthogonal projector whatever the input.
No direction with more than ``epsilon``·‖P‖ of content is ever dropped. The floor is relative so that
the result does not depend on the gradient's scale: P = M·Q is of M's scale, and an absolute floor
took a whole layer whose gradients are small (entries ~1e-10, a layer far from the loss) for one
without any direction, every step.

The same result from a QR decomposition P = Q R, as long as every |R_jj| > epsilon·‖P‖:
Gram–Schmidt's residual of column j is then Q_j R_jj, so P̂ = Q · diag(sign(R_jj)) (the sign makes
the diagonal of R positive, as Gram–Schmidt's is). Where a column is (near) zero, QR still gives it
a unit direction and projects the later columns against it — a column e₁ after a zero one would
come out zero, where Gram–Schmidt keeps it — so that case takes Gram–Schmidt. Backends with a
LAPACK QR compute it that way (`Backend.orthogonalize_rows`): one call instead of ~4r² small tensor
operations, ~4x faster for r = 2 on the CPU measured here. (With float32 round-off, a dependent
column's residual can exceed epsilon; both methods then give it *some* unit direction orthogonal to
the others, not the same one: either keeps P̂ orthonormal.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: backend.py imports this module
    from .backend import Backend


def orthogonalize(backend: "Backend", factor_t, epsilon: float):
    """Rows of ``factor_t`` (r×n: the transposed factor Pᵀ, as PowerSGD stores it) made orthonormal
    (zero where it has none left). Equivalently, the columns of P = ``factor_t``ᵀ become
    orthonormal. The backend's fastest exact form (`gram_schmidt` by default)."""
    return backend.orthogonalize_rows(factor_t, epsilon)


def no_direction_below(backend: "Backend", factor_t, epsilon: float):
    """``epsilon``·‖factor‖ (Frobenius): the length at or below which a row of ``factor_t`` holds no
    direction. Zero for an all-zero factor, so that exactly zero rows count as empty."""
    b = backend
    return epsilon * b.sqrt(b.sum(factor_t * factor_t))


def gram_schmidt(backend: "Backend", factor_t, epsilon: float):
    """`orthogonalize` by Gram–Schmidt with re-orthogonalization, on the backend's basic ops."""
    b = backend
    floor = no_direction_below(b, factor_t, epsilon)
    done = []
    for row in b.rows(factor_t):
        for _ in range(2):
            for previous in done:
                row = row - b.sum(row * previous) * previous
        norm = b.sqrt(b.sum(row * row))
        kept = norm > floor
        done.append(b.where(kept, row / b.where(kept, norm, norm * 0 + 1), row * 0))
    return b.stack_rows(done)


def renew_rows(backend: "Backend", factor_t, seed_t, epsilon: float):
    """The shared factor a warm-started step multiplies by: each row f_j of ``factor_t`` (r×s) as
    the unit vector f_j / ‖f_j‖ where ‖f_j‖ > ``epsilon``·‖F‖ (`no_direction_below`: relative, so
    that a small gradient's factor is not taken for an empty one), else row j of ``seed_t`` (the
    seeded initial factor, unit rows).

    Why unit rows: the next product P = M·F then scales with M alone. The reduced factor the classic
    scheme continues from is Q̄ = Mᵀ P̂, itself of M's scale σ; multiplied by it as it is, P would be of
    σ², and for a small gradient (entries ~1e-6) fall under ``epsilon`` and be taken for no direction
    at all. Scaling the columns of P leaves every orthogonalized result the same in exact arithmetic.

    Why a seed: a row with no content left — the reduced factor had nothing in that direction,
    after an all-zero gradient (an unused layer, a zero-initialised layer above) or one of rank
    below r — would stay zero for good, since every later product M·0 is 0: the layer would never
    train again in that direction. The decision reads nothing but the all-reduced factor (and the
    seed, the same everywhere), so every rank makes it alike, on the device, without a host
    round trip. Rows with content keep their direction, so a step with no empty row computes what
    plain warm start computes, up to round-off."""
    b = backend
    norms = b.row_norms(factor_t)
    kept = norms > no_direction_below(b, factor_t, epsilon)
    return b.where(kept, factor_t / b.where(kept, norms, norms * 0 + 1), seed_t)
