"""Shape arithmetic, in one place for the whole package (compressors, wire model, advisor,
benchmarks): how many elements a shape holds, and the n×m matrix a gradient is viewed as."""
from __future__ import annotations

import math
from typing import Sequence, Tuple


def numel(shape: Sequence[int]) -> int:
    """Elements of a tensor of ``shape`` (1 for a scalar's ``()``)."""
    return math.prod(int(d) for d in shape)


def matrix_shape(shape: Sequence[int]) -> Tuple[int, int]:
    """(n, m): first dimension × product of the rest (conv weights: out_channels × the rest)."""
    return int(shape[0]), numel(shape[1:])
