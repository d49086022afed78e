"""What a compressor puts on the wire, in machine-readable form — the one description of its traffic.

Every compressor answers ``transfers(shape, dtype)``: the list of `Transfer`s one rank hands to
collectives per step for one gradient of that shape and dtype (which collective, how many bytes,
in which round of the step). Everything else about traffic is derived from it:

* ``wire_bytes(shape, dtype)`` (the sum), which the compressors' own byte counters and Horovod's
  timeline are tested against (``tests/torch/test_timeline_bytes.py``);
* the advisor's rounds (`fuse`: the transfers of every gradient of a model, fused into the
  collective rounds Horovod runs) and their times (`link_bytes`, `hops`);
* the README's comparison table (``scripts/compressor_table.py``), whose per-element formulas — each
  class's `Wire`, ``cls.wire`` plus ``cls.wire_variants`` for documented switches — are checked
  against ``transfers`` (``tests/core/test_wire.py``).

No shipped compressor's *sent* bytes depend on the number of ranks N; what N changes is what each
rank moves over its link for them, which depends on the collective alone (`link_bytes`).

Notation in the formulas: a gradient has d elements (an n×m matrix for the low-rank methods, n = first
dimension), b bits per element (32 for float32), r the rank, k the power iterations, N the ranks.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, List, Tuple

from .backend import itemsize
from .shapes import numel

#: the 1-element float32 tensor that all-gather compressors hand to Horovod's all-reduce (`gather`):
#: its name among a compressor's transfers, and its bytes
PLACEHOLDER, PLACEHOLDER_BYTES = "placeholder", 4

COLLECTIVES = ("allreduce", "allgather")

#: bytes each rank moves over its link for S bytes it contributes (ring all-reduce: reduce-scatter
#: then all-gather, 2(N−1) chunks of S/N; all-gather: the N−1 other ranks' messages pass by), as
#: written in the table; `link_bytes` computes them
TRAFFIC_FORMULA = {"allreduce": "2(N−1)/N · S", "allgather": "(N−1) · S"}

#: what `raw` transfers are called: a gradient that goes through no codec
UNCOMPRESSED = "uncompressed"


def _check(collective: str) -> str:
    if collective not in COLLECTIVES:
        raise ValueError(f"collective must be one of {COLLECTIVES}, got {collective!r}")
    return collective


def link_bytes(collective: str, nbytes: float, workers: int) -> float:
    """Bytes one rank sends over its link for ``nbytes`` it contributes (`TRAFFIC_FORMULA`)."""
    n = workers
    if _check(collective) == "allreduce":
        return 2 * (n - 1) / n * nbytes
    return (n - 1) * nbytes


def hops(collective: str, workers: int) -> int:
    """Sequential link latencies one round pays on a ring: 2(N−1) for an all-reduce, N−1 for an
    all-gather."""
    n = workers
    return 2 * (n - 1) if _check(collective) == "allreduce" else n - 1


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One tensor one rank hands to one collective in one step."""

    collective: str  # 'allreduce' or 'allgather'
    nbytes: int  # bytes this rank contributes (an all-gather's result is N times larger)
    round: int = 0  # 0: during backprop (Horovod's all-reduce, all-gathers `compress` starts);
    #                 1, 2, …: rounds the compressor runs itself afterwards, in this order
    what: str = ""  # what travels: 'P', 'Q', 'signs', 'placeholder', … (for tables and tests)

    def __post_init__(self):
        _check(self.collective)


@dataclasses.dataclass(frozen=True)
class Round:
    """One fused collective round of a step: every tensor one collective carries in one round."""

    collective: str
    index: int  # `Transfer.round`
    nbytes: int  # bytes this rank contributes to the round
    tensors: int  # tensors fused into it


def raw(shape, dtype: str = "float32") -> List[Transfer]:
    """A gradient all-reduced as it is (no compression, or one a compressor leaves alone)."""
    return [Transfer("allreduce", numel(shape) * itemsize(dtype), 0, UNCOMPRESSED)]


def compressed(transfers: Iterable[Transfer]) -> bool:
    """Whether a gradient with these transfers went through a compressor's codec."""
    return any(t.what != UNCOMPRESSED for t in transfers)


def fuse(transfers: Iterable[Transfer]) -> List[Round]:
    """The rounds a step runs for these transfers (of all its gradients): Horovod fuses what one
    collective carries in one round into one operation. In round order, all-reduce before
    all-gather within a round."""
    fused = {}
    for t in transfers:
        nbytes, tensors = fused.get((t.round, t.collective), (0, 0))
        fused[(t.round, t.collective)] = (nbytes + t.nbytes, tensors + 1)
    return [Round(collective, index, nbytes, tensors)
            for (index, collective), (nbytes, tensors)
            in sorted(fused.items(), key=lambda item: (item[0][0], COLLECTIVES.index(item[0][1])))]


@dataclasses.dataclass(frozen=True)
class Wire:
    """One row of the comparison table: what ``transfers`` computes, as a formula per element, and
    the algorithm's properties."""

    bits_per_element: str  # bits one rank sends per gradient element; evaluable with · as ×
    biased: bool  # E[decompress(all-reduce(compress(g)))] != average g
    error_feedback: bool  # keeps what was not sent and adds it to the next step's gradient
    note: str = ""


WireVariants = Tuple[Tuple[str, Wire], ...]
