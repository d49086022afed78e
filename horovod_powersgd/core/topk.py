"""Top-k sparsification with error feedback (Stich et al., "Sparsified SGD with Memory", NeurIPS
2018; Lin et al., "Deep Gradient Compression", ICLR 2018) — a baseline in Vogels et al. 2019."""
from __future__ import annotations

from .backend import Backend, compute_dtype, itemsize
from .compressor import Ctx
from .gather import gathered, mean_weight, placeholder, start_allgather
from .shapes import numel
from .sparse import MAX_ELEMENTS, check_ratio, kept
from .stateful import StatefulCompressor, flat, restore
from .wire import Wire


class TopK(StatefulCompressor):
    """The k = round(ratio·d) largest-magnitude entries, with error feedback.

    Per rank and step: p ← g + e; I ← indices of the k largest |p_j|; e ← p with the entries at I
    zeroed (local error feedback). Sent by all-gather: the k values (b bits each) and their indices
    (int32). Every rank scatters all ranks' (index, value) pairs into zeros, adding where ranks chose
    the same index, and returns the average (op=Sum: the sum). Wire: k·(b + 32)/8 bytes all-gathered
    + a 4-byte placeholder all-reduce, i.e. ratio·(b + 32) + 32/d ≈ 64·ratio bits per element for
    float32. Biased, with error feedback. Ties in |p| are broken by the framework's top-k.
    """

    wire = Wire("64·ratio + 32/d", biased=True, error_feedback=True,
                note="float32 values + int32 indices")
    wire_variants = ()
    buffers = ("error",)

    def __init__(self, backend: Backend, ratio: float = 0.01):
        self.ratio = check_ratio("TopK", ratio)
        super().__init__(backend)

    def config(self) -> dict:
        return {"ratio": self.ratio}

    def _transfers(self, shape, dtype: str = "float32") -> list:
        k = kept(self.ratio, numel(shape))
        return gathered(("values", k * itemsize(compute_dtype(dtype))), ("indices", k * 4))

    def _compress(self, tensor, ctx: Ctx):
        b = self.backend
        d = numel(ctx.shape)
        if d > MAX_ELEMENTS:
            raise ValueError(f"TopK: gradient {ctx.identity.name!r} has {d} elements; int32 indices "
                             f"address at most {MAX_ELEMENTS}")
        g = flat(b, tensor, compute_dtype(ctx.dtype))
        slots = self._slots(ctx, like=g)
        # p in the gradient's own memory where the framework allows (Horovod hands the parameter
        # our output instead), and p with the sent entries zeroed becomes the next error: no
        # buffer of the gradient's size is allocated or copied
        p = b.add_(g, self._read(slots, "error", g))
        guard = placeholder(b, like=p)  # before the zeroing below, which may remove an inf
        indices = b.topk_indices(p, kept(self.ratio, d))
        values = b.gather(p, indices)
        self._stage_write(slots["error"], b.zero_at_(p, indices))
        ctx.payload = (start_allgather(self, values, "topk.values", ctx.identity),
                       start_allgather(self, b.cast(indices, "int32"), "topk.indices", ctx.identity))
        return guard, ctx

    def _decompress(self, _placeholder, ctx: Ctx):
        b = self.backend
        values_handle, indices_handle = ctx.payload
        ctx.payload = None
        values, indices = self._wait(values_handle), self._wait(indices_handle)
        # scaled before the scatter: k multiplications instead of d
        return restore(b, b.scatter_add(indices, values * mean_weight(ctx.identity), numel(ctx.shape)),
                       ctx)
