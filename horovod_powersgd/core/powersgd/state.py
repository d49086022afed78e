"""What PowerSGD keeps per tensor across steps (`TensorState`) and carries through one step (`Job`)."""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

from ..compressor import Ctx
from ..shapes import matrix_shape
from .config import PowerSGDConfig

#: the two factors by the side of M they span: "p" the columns (Pᵀ is r×n), "q" the rows (Qᵀ r×m)
SIDES = ("p", "q")


@dataclasses.dataclass
class TensorState:
    """Per-parameter state. ``matrix`` is None for tensors sent uncompressed.

    Slots (backend state, checkpointed): ``step`` counts this tensor's completed (finite) steps;
    ``q`` and ``p`` are the reduced factors a warm-started step continues from, transposed (Qᵀ r×m,
    Pᵀ r×n; which a scheme keeps: `Scheme.warm_sides`); ``error`` the n×m error buffer, created zero
    at first use."""

    shape: tuple
    matrix: Optional[tuple]  # (n, m) of the reshaped gradient
    rank: int  # effective rank: min(r, n, m)
    step: object = None
    q: object = None
    p: object = None
    error: object = None
    # eager backends: the error buffer the last finite step retired, reused as the next output
    # (a fresh n×m buffer costs its page faults on every step, more than the product written to it)
    spare: object = None
    seeds: dict = dataclasses.field(default_factory=dict)  # eager: `SharedFactors.seed_rows` by side

    def side_size(self, side: str) -> int:
        """Length of a factor's rows: n for ``side`` "p", m for "q"."""
        return self.matrix[SIDES.index(side)]


def plan(cfg: PowerSGDConfig, shape: tuple) -> TensorState:
    """How a gradient of ``shape`` is sent: as an n×m matrix of effective rank min(r, n, m), or as it
    is (one dimension, or a matrix that would not shrink by ``min_compression_rate``)."""
    if len(shape) < 2:
        return TensorState(shape, None, 0)
    n, m = matrix_shape(shape)
    rank = min(cfg.rank, n, m)
    if n * m < cfg.min_compression_rate * rank * (n + m):
        return TensorState(shape, None, 0)
    return TensorState(shape, (n, m), rank)


@dataclasses.dataclass
class Job:
    """One compressed tensor through one step: made by `compress`, handed through Horovod as the
    ``Ctx.payload``, completed by `decompress` (or, for schemes with rounds of their own, at the
    step's end). The scheme fills ``left`` and ``right`` — the approximation is leftᵀ·right — and
    what its step keeps."""

    ctx: Ctx
    state: TensorState
    step: object  # this tensor's step counter as the step began
    compressed_step: object  # steps since compression began (``start_step`` warm-up ones excluded)
    dtype: str  # the compute dtype
    M: object  # n×m: gradient plus error, this rank's own
    gradient: object  # the tensor as `compress` got it (graph backends all-reduce it while warming up)
    left: object = None  # r×n (two-sided: 2r×n)
    right: object = None  # r×m (two-sided: 2r×m)
    error: object = None  # the next error buffer, where the scheme forms it while sending
    sends_p: object = None  # alternating: whether this step sends P (a bool, or a graph tensor)
    kept: Dict[str, object] = dataclasses.field(default_factory=dict)  # side -> reduced factor kept
    finite: object = None  # whether the scheme's own rounds reduced finite values (None: none ran)
    buffer: object = None  # eager: the n×m tensor the gradient is written into
    out: object = None  # eager, rounds of its own: what Horovod got back, filled at the step's end

    @property
    def rank(self) -> int:
        return self.state.rank
