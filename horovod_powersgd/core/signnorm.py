"""EF-signSGD: scaled sign compression with error feedback (Karimireddy et al., "Error Feedback
Fixes SignSGD and other Gradient Compression Schemes", ICML 2019) — "Sign+Norm" in Vogels et al.
2019, Table 3."""
from __future__ import annotations

from .backend import Backend, compute_dtype, itemsize
from .compressor import Ctx
from .gather import gathered, mean_weight, per_rank, placeholder, start_allgather
from .shapes import numel
from .stateful import StatefulCompressor, flat, restore
from .wire import Wire


class SignNorm(StatefulCompressor):
    """Scaled sign with error feedback.

    Per rank and step: p ← g + e; Δ ← (‖p‖₁/d)·sign(p) (sign(0) = +1, so a sign fits one bit);
    e ← p − Δ (local error feedback). Sent by all-gather: the signs, 1 bit per element packed to ⌈d/8⌉
    bytes, and the scale ‖p‖₁/d (one b-bit number); every rank returns the average (op=Sum: the sum)
    of all ranks' Δ. Wire: ⌈d/8⌉ + b/8 bytes all-gathered + a 4-byte placeholder all-reduce, i.e.
    1 + (32 + b)/d bits per element. Biased, with error feedback. Δ is computed from the packed bits,
    so the error buffer holds exactly what the other ranks did not receive.
    """

    wire = Wire("1 + 64/d", biased=True, error_feedback=True,
                note="EF-signSGD; one scale per tensor and rank")
    wire_variants = ()
    buffers = ("error",)

    def __init__(self, backend: Backend):
        super().__init__(backend)

    def _transfers(self, shape, dtype: str = "float32") -> list:
        return gathered(("signs", -(-numel(shape) // 8)), ("scale", itemsize(compute_dtype(dtype))))

    def _compress(self, tensor, ctx: Ctx):
        b = self.backend
        d = numel(ctx.shape)
        dtype = compute_dtype(ctx.dtype)
        g = flat(b, tensor, dtype)
        slots = self._slots(ctx, like=g)
        # p and then the next error in the gradient's own memory where the framework allows
        p = b.add_(g, self._read(slots, "error", g))
        scale = b.reshape(b.sum(b.abs(p)) / d, (1,))
        # the scale is non-finite when p is, and also when ‖p‖₁ alone overflows: the error it
        # would leave must not be committed either
        guard = placeholder(b, like=scale)
        packed = b.pack_signs(p)
        sent = b.signed_sum(b.reshape(packed, (1, -1)), d, b.cast(scale, dtype))  # Δ from the bits
        self._stage_write(slots["error"], b.sub_(p, sent))
        ctx.payload = (start_allgather(self, packed, "signnorm.signs", ctx.identity),
                       start_allgather(self, scale, "signnorm.scale", ctx.identity))
        return guard, ctx

    def _decompress(self, _placeholder, ctx: Ctx):
        b = self.backend
        signs_handle, scale_handle = ctx.payload
        ctx.payload = None
        dtype = compute_dtype(ctx.dtype)
        # rank i's scale weighs rank i's signs; Horovod's op applied to the N scales, not to d sums
        scales = b.cast(self._wait(scale_handle), dtype) * mean_weight(ctx.identity)
        return restore(b, b.signed_sum(per_rank(b, self._wait(signs_handle), ctx.identity),
                                       numel(ctx.shape), scales), ctx)
