"""Bytes per collective from a Horovod timeline (``HOROVOD_TIMELINE``), independent of any compressor.

The timeline is Chrome-trace JSON. Each tensor gets a "process" (pid) named after it; each collective
is a ``B`` event named ``ALLREDUCE`` / ``ALLGATHER`` / ``BROADCAST`` … whose matching ``E`` event
carries ``{"dtype": ..., "shape": ...}``. For an allgather that shape is the *gathered* output, so one
rank's contribution is output / size. The writer may leave the JSON array unterminated (it is closed
at shutdown), so parsing is tolerant.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict

from horovod_powersgd.core import wire
from horovod_powersgd.core.shapes import numel

ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1,
            "int16": 2, "int32": 4, "int64": 8, "bool": 1}


def load_events(path: Path) -> list:
    text = path.read_text().strip()
    if not text:
        return []
    text = re.sub(r",\s*$", "", text)
    if not text.endswith("]"):
        text += "]"
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # a half-written last event: drop what follows the last full one
        return json.loads(text[: text.rfind("}") + 1] + "]")


def collective_payload(path: Path, size: int = 1) -> Dict[str, int]:
    """Bytes each rank contributed, per collective kind: {"ALLREDUCE": …, "ALLGATHER": …}."""
    stacks, totals = defaultdict(list), defaultdict(int)
    for event in load_events(path):
        phase, pid = event.get("ph"), event.get("pid")
        if phase == "B":
            stacks[pid].append(event.get("name", ""))
        elif phase == "E" and stacks[pid]:
            name = stacks[pid].pop()
            args = event.get("args") or {}
            if "shape" in args and "dtype" in args:
                nbytes = numel(json.loads(args["shape"])) * ITEMSIZE.get(args["dtype"], 4)
                totals[name] += nbytes // size if name == "ALLGATHER" else nbytes
    return dict(totals)


def collective_bytes(path: Path, size: int = 1) -> int:
    """Total bytes contributed by one rank to all collectives in the timeline."""
    return sum(collective_payload(path, size).values())


def wire_bytes(payload: Dict[str, int], workers: int) -> float:
    """Bytes one worker *sends* for these payloads: all-reduce and all-gather on a ring
    (`horovod_powersgd.core.wire.link_bytes`), broadcast ≈ S (tree/ring, rank-dependent; counted once)."""
    ring = {"ALLREDUCE": "allreduce", "ALLGATHER": "allgather"}
    return sum(wire.link_bytes(ring[kind], nbytes, workers) if kind in ring else nbytes
               for kind, nbytes in payload.items())
