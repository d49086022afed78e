"""Checks of the compressors' constructor arguments, in one place: each returns the value in its
canonical type or raises ValueError naming the compressor, the argument and what it got."""
from __future__ import annotations

import numbers

import numpy as np


def integer(owner: str, name: str, value, minimum: int) -> int:
    """An integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def boolean(owner: str, name: str, value) -> bool:
    """True or False, nothing that merely converts to one."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


def number(owner: str, name: str, value, interval: str) -> float:
    """A real number (not a bool) in ``interval``, written as in the message: ``"(0, 1]"``,
    ``"[0, 1)"``, ``"(0, inf)"``…"""
    low, high = (float(end) for end in interval[1:-1].split(","))
    inside = isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and (low < value if interval[0] == "(" else low <= value) \
        and (value < high if interval[-1] == ")" else value <= high)
    if not inside:
        raise ValueError(f"{owner}: {name} must be a number in {interval}, got {value!r}")
    return float(value)
