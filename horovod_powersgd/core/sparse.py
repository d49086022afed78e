"""How many elements the sparsifying compressors (TopK, RandomK) keep."""
from __future__ import annotations

import numbers

MAX_ELEMENTS = 2 ** 31 - 1  # indices travel as int32


def check_ratio(owner: str, ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
        raise ValueError(f"{owner}: ratio must be a number in (0, 1], got {ratio!r}")
    return float(ratio)


def kept(ratio: float, d: int) -> int:
    """k = round(ratio · d), at least 1 and at most d."""
    return max(1, min(d, int(round(ratio * d))))
