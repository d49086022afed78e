"""Half precision on the wire: the simplest compression, and Horovod's own ``Compression.fp16``
with this package's statistics and spec name."""
from __future__ import annotations

from .backend import Backend
from .compressor import Compressor, Ctx
from .shapes import numel
from .wire import Transfer, Wire


class FP16(Compressor):
    """Cast each gradient to float16 for Horovod's all-reduce and back afterwards.

    Wire: 16 bits per element, all-reduced (the reduction itself runs in float16). Biased only by
    rounding to nearest (relative error ≤ 2⁻¹¹), no error feedback; magnitudes above 65504 overflow
    to inf and below ~6e-8 flush to zero — scale the loss if gradients are that large or small.
    """

    wire = Wire("16", biased=True, error_feedback=False,
                note="rounding only; overflows above 65504")
    wire_variants = ()

    def __init__(self, backend: Backend):
        super().__init__(backend)

    def _transfers(self, shape, dtype: str = "float32") -> list:
        return [Transfer("allreduce", 2 * numel(shape), 0, "float16 gradient")]

    def _compress(self, tensor, ctx: Ctx):
        return self.backend.cast(tensor, "float16"), ctx

    def _decompress(self, tensor, ctx: Ctx):
        return self.backend.cast(tensor, ctx.dtype)

    def _export_tensor_state(self, state) -> dict:  # stateless: nothing is ever stored
        return {}

    def _import_tensor_state(self, name: str, value: dict):
        return None
