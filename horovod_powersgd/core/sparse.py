"""How many elements the sparsifying compressors (TopK, RandomK) keep."""
from __future__ import annotations

from . import arguments

MAX_ELEMENTS = 2 ** 31 - 1  # indices travel as int32


def check_ratio(owner: str, ratio) -> float:
    """The fraction of elements kept: a number in (0, 1]."""
    return arguments.number(owner, "ratio", ratio, "(0, 1]")


def kept(ratio: float, d: int) -> int:
    """k = round(ratio · d), at least 1 and at most d."""
    return max(1, min(d, int(round(ratio * d))))
