"""Signum with majority vote (Bernstein et al., "signSGD with Majority Vote is Communication
Efficient and Fault Tolerant", ICLR 2019) — a baseline in Vogels et al. 2019, Table 3."""
from __future__ import annotations

import numpy as np

from . import arguments
from .backend import Backend, compute_dtype
from .compressor import Ctx
from .gather import gathered, per_rank, placeholder, start_allgather
from .shapes import numel
from .stateful import StatefulCompressor, flat, restore
from .wire import Wire


class Signum(StatefulCompressor):
    """Local momentum, its sign, and the majority vote of all ranks' signs.

    Per rank and step: v ← β·v + (1−β)·g (local momentum, zero at first); send the signs of v
    (1 bit per element, bit set where v ≥ 0, packed to ⌈d/8⌉ bytes) by all-gather; every rank
    returns vote = sign(Σ_i sign_i(v)) ∈ {−1, 0, +1} (0 where the ranks tie, and everywhere in a tensor
    whose momentum is zero on every rank: one bit per element cannot say 0, so each rank also adds
    1 to the placeholder it all-reduces when its momentum is not all zero).
    Wire: ⌈d/8⌉ bytes all-gathered + a 4-byte placeholder all-reduce, i.e. 1 + 32/d bits per element.
    Biased, no error feedback. The result is a vote, not an average: it is the same for
    op=hvd.Average and hvd.Sum, its magnitude is 1, and the momentum already lives here — use it with
    plain SGD (no optimizer momentum) and a small learning rate.
    """

    wire = Wire("1 + 32/d", biased=True, error_feedback=False,
                note="majority vote of the signs of local momentum")
    wire_variants = ()
    buffers = ("momentum",)

    def __init__(self, backend: Backend, momentum: float = 0.9):
        momentum = arguments.number("Signum", "momentum", momentum, "[0, 1)")
        super().__init__(backend)
        self.momentum = momentum

    def config(self) -> dict:
        return {"momentum": self.momentum}

    def _transfers(self, shape, dtype: str = "float32") -> list:
        return gathered(("signs", -(-numel(shape) // 8)))

    def _compress(self, tensor, ctx: Ctx):
        b = self.backend
        g = flat(b, tensor, compute_dtype(ctx.dtype))
        slots = self._slots(ctx, like=g)
        # v = β·v_old + (1−β)·g written as g + β·(v_old − g): one pass, in the gradient's own
        # memory where the framework allows (Horovod hands the parameter our output instead)
        v = b.lerp_(g, self._read(slots, "momentum", g), self.momentum)
        self._stage_write(slots["momentum"], v)
        ctx.payload = start_allgather(self, b.pack_signs(v), "signum", ctx.identity)
        # + 1 where this rank's momentum has a non-zero element: the reduced placeholder is then
        # > 0 exactly when some rank takes part in the vote (NaN when one overflowed)
        active = b.cast(b.reshape(b.where(b.sum(b.abs(v)) > 0, 1.0, 0.0), (1,)), "float32")
        return placeholder(b, like=g) + active, ctx

    def _decompress(self, _placeholder, ctx: Ctx):
        b = self.backend
        rows = per_rank(b, self._wait(ctx.payload), ctx.identity)
        ctx.payload = None
        ones = b.from_numpy(np.ones(ctx.identity.group_size, np.float32), like=rows)
        votes = b.signed_sum(rows, numel(ctx.shape), ones)  # Σ_i s_i: a vote, not an average
        # a tensor whose momentum is zero on every rank (a parameter no rank has used yet) stays
        # put, instead of moving by the +1 that its zero bits encode
        return restore(b, b.where(_placeholder > 0, b.sign_(votes), votes * 0), ctx)

