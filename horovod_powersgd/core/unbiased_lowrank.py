"""Unbiased rank-r compression with a fresh shared random Q — the "unbiased low-rank" comparison of
Vogels et al. 2019 (PowerSGD), which shows why PowerSGD's warm start and error feedback matter."""
from __future__ import annotations

import zlib

from . import arguments
from .backend import Backend, compute_dtype, itemsize
from .compressor import Ctx
from .shapes import matrix_shape
from .stateful import StatefulCompressor
from .wire import Transfer, Wire, raw


class UnbiasedLowRank(StatefulCompressor):
    """Rank-r random projection, one all-reduce, no error buffer, unbiased.

    For a gradient reshaped to an n×m matrix M_i on rank i, every rank draws the same Q (m×r, i.i.d.
    N(0, 1) entries, a fresh one each step, from a private generator seeded by (seed, parameter
    name, step)) and sends P_i = M_i Q. Horovod all-reduces it to P̄ = M̄ Q (M̄ = average of the M_i),
    and every rank returns

        Ĝ = P̄ Qᵀ / r,     E[Ĝ] = M̄ E[Q Qᵀ] / r = M̄,   since E[Q Qᵀ] = Σ_j E[q_j q_jᵀ] = r·I.

    One round suffices: Q is known to every rank, so only P travels (no orthogonalization, no second
    all-reduce). Unbiased, but with large variance: E‖Ĝ − M̄‖²_F = ((m + 1)/r)·‖M̄‖²_F (Ĝ averages r
    independent rank-1 estimates M̄ q qᵀ, each of variance (m + 1)‖M̄‖²_F) — why the paper finds it
    far worse than PowerSGD at the same rank.
    Wire: n·r numbers instead of n·m, i.e. b·r/m bits per element; tensors with one dimension, or with
    n·m < min_compression_rate·n·r, go as they are. No error feedback (it would add bias).
    """

    wire = Wire("32·r/m", biased=False, error_feedback=False,
                note="fresh shared Gaussian Q, Ĝ = P̄Qᵀ/r")
    wire_variants = ()
    counts_steps = True  # a fresh Q every step

    def __init__(self, backend: Backend, rank: int = 1, *, min_compression_rate: float = 2.0,
                 seed: int = 0):
        rank = arguments.integer("UnbiasedLowRank", "rank", rank, 1)
        seed = arguments.integer("UnbiasedLowRank", "seed", seed, 0)
        min_compression_rate = arguments.number("UnbiasedLowRank", "min_compression_rate",
                                                min_compression_rate, "(0, inf)")
        super().__init__(backend)
        self.rank, self.seed, self.min_compression_rate = rank, seed, min_compression_rate

    def config(self) -> dict:
        return {"rank": self.rank, "min_compression_rate": self.min_compression_rate,
                "seed": self.seed}

    def plan(self, shape) -> tuple | None:
        """(n, m, r) for a tensor that is compressed, None for one sent as it is."""
        if len(shape) < 2:
            return None
        n, m = matrix_shape(tuple(shape))
        r = min(self.rank, m)
        return (n, m, r) if m >= self.min_compression_rate * r else None

    def _transfers(self, shape, dtype: str = "float32") -> list:
        plan = self.plan(shape)
        if plan is None:
            return raw(shape, dtype)
        n, _m, r = plan
        return [Transfer("allreduce", n * r * itemsize(compute_dtype(dtype)), 0, "P")]

    def q_key(self, name: str) -> int:
        """Seed of parameter ``name``'s stream of Qs (the step is the stream's second key)."""
        return zlib.crc32(f"{self.seed}/unbiased_lowrank/{name}".encode())

    def _compress(self, tensor, ctx: Ctx):
        plan = self.plan(ctx.shape)
        if plan is None:
            ctx.compressed = False
            return tensor, ctx
        n, m, r = plan
        b = self.backend
        dtype = compute_dtype(ctx.dtype)
        M = b.reshape(b.cast(tensor, dtype), (n, m))
        step = self._next_step(self._slots(ctx, like=M))
        Q = b.cast(b.seeded_normal((m, r), self.q_key(ctx.identity.name), step, like=M), dtype)
        ctx.payload = Q
        return M @ Q, ctx

    def _decompress(self, P_reduced, ctx: Ctx):
        b = self.backend
        Q, ctx.payload = ctx.payload, None
        r = b.shape(Q)[1]
        estimate = (b.cast(P_reduced, b.dtype_name(Q)) @ b.transpose(Q)) / r
        return b.cast(b.reshape(estimate, ctx.shape), ctx.dtype)
