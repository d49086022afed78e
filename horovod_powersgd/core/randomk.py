"""Random-k sparsification with shared randomness (Stich et al., "Sparsified SGD with Memory",
NeurIPS 2018) — "Random K" in Vogels et al. 2019, Table 3."""
from __future__ import annotations

import zlib

from . import arguments
from .backend import Backend, compute_dtype, itemsize
from .compressor import Ctx, poison
from .shapes import numel
from .sparse import check_ratio, kept
from .stateful import StatefulCompressor, flat, restore
from .wire import Transfer, Wire


class RandomK(StatefulCompressor):
    """k = round(ratio·d) random entries, the same on every rank, all-reduced.

    Per tensor and step the indices I (k distinct, uniform) are drawn from a private generator seeded
    by (seed, parameter name, step), so every rank picks the same I and the values can be all-reduced
    directly: only the k values travel. Wire: k·b/8 bytes all-reduced (Horovod's own all-reduce, no
    placeholder), i.e. b·ratio ≈ 32·ratio bits per element for float32.

    With error feedback (default): p ← g + e, send p_I, e ← p with the entries at I zeroed; returns
    the average of p_I scattered into zeros. Biased (E = (k/d)·p), the error buffer carries the rest.
    Without error feedback: returns (d/k)·average(g_I) scattered into zeros, an unbiased estimate of
    the average gradient (each entry is kept with probability k/d) with variance (d/k − 1)·g_j² per
    entry — rescaling is not combined with feedback, as the rescaled compressor is not a contraction.
    """

    wire = Wire("32·ratio", biased=True, error_feedback=True,
                note="shared-seed indices; only values travel")
    wire_variants = (("error_feedback=False",
                      Wire("32·ratio", biased=False, error_feedback=False,
                           note="values rescaled by d/k")),)
    counts_steps = True  # fresh indices every step

    def __init__(self, backend: Backend, ratio: float = 0.01, *, error_feedback: bool = True,
                 seed: int = 0):
        self.ratio = check_ratio("RandomK", ratio)
        self.error_feedback = arguments.boolean("RandomK", "error_feedback", error_feedback)
        self.seed = arguments.integer("RandomK", "seed", seed, 0)
        self.buffers = ("error",) if error_feedback else ()
        super().__init__(backend)

    def config(self) -> dict:
        return {"ratio": self.ratio, "error_feedback": self.error_feedback, "seed": self.seed}

    def _transfers(self, shape, dtype: str = "float32") -> list:
        return [Transfer("allreduce", kept(self.ratio, numel(shape)) * itemsize(compute_dtype(dtype)),
                         0, "values")]

    def indices_key(self, name: str) -> int:
        """Seed of the index stream of parameter ``name`` (the step is the stream's second key)."""
        return zlib.crc32(f"{self.seed}/randomk/{name}".encode())

    def _compress(self, tensor, ctx: Ctx):
        b = self.backend
        d = numel(ctx.shape)
        p = flat(b, tensor, compute_dtype(ctx.dtype))
        slots = self._slots(ctx, like=p)
        step = self._next_step(slots)
        indices = b.seeded_indices(d, kept(self.ratio, d), self.indices_key(ctx.identity.name), step,
                                   like=p)
        if self.error_feedback:  # in the gradient's own memory where the framework allows (TopK)
            p = b.add_(p, self._read(slots, "error", p))
        nonfinite = b.cast(poison(b, p), b.dtype_name(p))  # before the zeroing below
        values = b.gather(p, indices)
        if self.error_feedback:
            self._stage_write(slots["error"], b.zero_at_(p, indices))
        values = values + nonfinite  # any non-finite p: NaN values
        ctx.payload = indices
        return values, ctx

    def _decompress(self, values, ctx: Ctx):
        b = self.backend
        d = numel(ctx.shape)
        dense = b.scatter_add(ctx.payload, b.cast(values, compute_dtype(ctx.dtype)), d)
        ctx.payload = None
        if not self.error_feedback:
            dense = dense * (d / kept(self.ratio, d))
        return restore(b, dense, ctx)
