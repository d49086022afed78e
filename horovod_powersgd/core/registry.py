"""Every compressor the package ships, by the name users type (``--compression powersgd:rank=2``).

Each framework adapter (``horovod_powersgd.torch``, ``horovod_powersgd.tensorflow``) writes out one
class per entry under the core class's name, with the core class's arguments less the backend
(``tests/test_adapters.py`` checks that they match this table).
"""
from __future__ import annotations

import ast
from typing import Dict, Tuple

from .backend import TrafficOnly
from .bf16 import BF16
from .fp16 import FP16
from .powersgd import PowerSGD
from .randomk import RandomK
from .signnorm import SignNorm
from .signum import Signum
from .topk import TopK
from .unbiased_lowrank import UnbiasedLowRank

#: spec name -> core class; the adapters export each under the class's own name
COMPRESSORS: Dict[str, type] = {
    "powersgd": PowerSGD,
    "unbiased_lowrank": UnbiasedLowRank,
    "signum": Signum,
    "signnorm": SignNorm,
    "topk": TopK,
    "randomk": RandomK,
    "fp16": FP16,
    "bf16": BF16,
}


def parse_spec(spec: str) -> Tuple[str, dict]:
    """``"powersgd:rank=2,power_iterations=2"`` -> ("powersgd", {"rank": 2, "power_iterations": 2}).

    Values are Python literals (ints, floats, True/False, None) or bare strings. ``"none"`` means no
    compression.
    """
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name != "none" and name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; choose from none, {', '.join(COMPRESSORS)}")
    kwargs = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"compressor option {item!r} in {spec!r} is not key=value")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    return name, kwargs


def build(spec: str, backend=None):
    """The core compressor a spec names, on ``backend`` — None (the default) gives one that runs no
    collective but describes its traffic (``transfers``, ``wire_bytes``: they depend on the
    configuration alone), as the advisor uses it. ``"none"`` gives None."""
    name, kwargs = parse_spec(spec)
    return None if name == "none" else COMPRESSORS[name](TrafficOnly() if backend is None else backend,
                                                          **kwargs)

