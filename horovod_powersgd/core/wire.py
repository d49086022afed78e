"""What a compressor puts on the wire, in machine-readable form.

Each compressor class carries a `Wire` (``cls.wire``, its default configuration, plus
``cls.wire_variants`` for documented switches) and an instance method ``wire_bytes(shape, dtype)``
giving the exact bytes one rank hands to collectives per step for one gradient. The README's
comparison table is generated from the `Wire`s (``scripts/compressor_table.py``); the timeline test
checks ``wire_bytes`` against what Horovod itself recorded.

Notation in the formulas: a gradient has d elements (an n×m matrix for the low-rank methods, n = first
dimension), b bits per element (32 for float32), r the rank, k the power iterations, N the ranks.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

#: bytes of the 1-element float32 tensor that all-gather compressors hand to Horovod's all-reduce
PLACEHOLDER_BYTES = 4

COLLECTIVES = ("allreduce", "allgather")


@dataclasses.dataclass(frozen=True)
class Wire:
    """One row of the comparison table."""

    collective: str  # the collective that carries the payload: 'allreduce' or 'allgather'
    bits_per_element: str  # bits one rank sends per gradient element, as a formula
    biased: bool  # E[decompress(all-reduce(compress(g)))] != average g
    error_feedback: bool  # keeps what was not sent and adds it to the next step's gradient
    note: str = ""

    def __post_init__(self):
        if self.collective not in COLLECTIVES:
            raise ValueError(f"collective must be one of {COLLECTIVES}, got {self.collective!r}")

    @property
    def traffic_per_rank(self) -> str:
        """Bytes each rank moves for S bytes sent per rank (ring all-reduce vs. all-gather)."""
        return "2(N−1)/N · S" if self.collective == "allreduce" else "(N−1) · S"


def numel(shape) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count


WireVariants = Tuple[Tuple[str, Wire], ...]
