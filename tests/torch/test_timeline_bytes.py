"""Bytes on the wire as Horovod's own timeline records them, against each compressor's formula.

The timeline (HOROVOD_TIMELINE, written by rank 0) holds one record per collective per step with the
tensor's name, dtype and shape: an independent count of what the compressors really sent. For an
all-gather the recorded shape is the gathered result, so one rank sent 1/N of it.
"""
import json
import re
import sys
from collections import defaultdict

import numpy as np
import pytest

from horovod_powersgd.core.registry import COMPRESSORS, parse_spec
from tests.launch import LAUNCHERS, ROOT, run

sys.path.insert(0, str(ROOT / "tests/torch/distributed"))
import timeline_worker as worker  # noqa: E402

RANKS = 2
ITEMSIZE = {"float32": 4, "float16": 2, "int16": 2, "int32": 4, "uint8": 1, "float64": 8}


def recorded_bytes(timeline: list) -> dict:
    """{label: {"bytes": sent by one rank over the run, "records": count}} from the timeline."""
    names = {e["pid"]: e["args"]["name"] for e in timeline
             if e.get("name") == "process_name" and "name" in e.get("args", {})}
    totals = defaultdict(lambda: {"bytes": 0, "records": 0})
    for event in timeline:
        args = event.get("args", {})
        if event.get("ph") != "E" or "dtype" not in args:
            continue  # only the record that closes a collective carries dtype and shape
        name = names[event["pid"]]
        label = re.search(r"weights\.(\w+?)__", name)
        if label is None:
            continue
        numel = int(np.prod(json.loads(args["shape"]) or [1]))
        size = numel * ITEMSIZE[args["dtype"]]
        totals[label.group(1)]["bytes"] += size // RANKS if name.startswith("allgather.") else size
        totals[label.group(1)]["records"] += 1
    return totals


def by_formula(label: str) -> tuple:
    """(payload bytes per step from the paper-style formula, number of tensors) — written out
    independently of the code's wire_bytes."""
    name, kwargs = parse_spec(worker.SPECS[label])
    total = 0
    for shape in worker.SHAPES.values():
        d = int(np.prod(shape))
        n, m = shape[0], d // shape[0]
        matrix = len(shape) > 1
        total += {
            "powersgd": ((4 * 2 * max(n, m)) if kwargs.get("alternate")
                         else 4 * kwargs.get("power_iterations", 1) * 2 * (n + m)) if matrix else 4 * d,
            "unbiased_lowrank": 4 * n * 2 if matrix else 4 * d,
            "signum": d / 8,
            "signnorm": d / 8 + 4,
            "topk": d * kwargs.get("ratio", 0) * (4 + 4),
            "randomk": d * kwargs.get("ratio", 0) * 4,
            "fp16": 2 * d,
            "bf16": 2 * d,
        }[name]
    return total, len(worker.SHAPES)


@pytest.fixture(scope="module", params=LAUNCHERS)
def timeline(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "timeline.json"
    rc, output = run(request.param, [sys.executable, str(ROOT / "tests/torch/distributed/timeline_worker.py")],
                     np=RANKS, timeout=300, env={"HOROVOD_TIMELINE": str(path)})
    assert rc == 0, output[-6000:]
    text = path.read_text().rstrip().rstrip(",")
    return json.loads(text if text.endswith("]") else text + "]")


def test_every_compressor_sends_what_its_formula_says(timeline):
    recorded = recorded_bytes(timeline)
    assert set(recorded) == set(worker.SPECS)
    rows = []
    for label, spec in worker.SPECS.items():
        name, kwargs = parse_spec(spec)
        compressor = COMPRESSORS[name](None, **kwargs)  # wire_bytes depends on the config alone
        measured = recorded[label]["bytes"] / worker.STEPS
        exact = sum(compressor.wire_bytes(shape) for shape in worker.SHAPES.values())
        formula, tensors = by_formula(label)
        uncompressed = 4 * sum(int(np.prod(s)) for s in worker.SHAPES.values())
        rows.append(f"{label:18s} {measured:10.0f} B/step/rank  formula {formula:10.1f}  "
                    f"({uncompressed / measured:6.1f}x smaller than {uncompressed} B)")
        assert measured == exact, f"{label}: timeline {measured} B/step, wire_bytes {exact}"
        # a few percent plus fixed overhead: placeholder (4 B), rounding of k and of ⌈d/8⌉
        assert abs(measured - formula) <= 0.03 * formula + 12 * tensors, (label, measured, formula)
    print("\n" + "\n".join(rows))
