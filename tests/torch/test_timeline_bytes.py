"""Bytes on the wire as Horovod's own timeline records them, against each compressor's formula and
against the advisor's rounds.

The timeline (HOROVOD_TIMELINE, written by rank 0) holds one record per collective per step with the
tensor's name, dtype and shape: an independent count of what the compressors really sent. For an
all-gather the recorded shape is the gathered result, so one rank sent 1/N of it. The record's name
tells the round: ``allreduce.<parameter>`` is Horovod's own all-reduce during backprop,
``allgather.<tag>.<parameter>`` an all-gather a compressor starts there too (both round 0), and
``grouped_allreduce.<round name>.<parameter>`` a round a compressor runs itself afterwards.
"""
import json
import re
import sys
from collections import defaultdict

import numpy as np
import pytest

from horovod_powersgd import advisor
from horovod_powersgd.core.registry import COMPRESSORS, build, parse_spec
from tests.launch import LAUNCHERS, ROOT, run

sys.path.insert(0, str(ROOT / "tests/torch/distributed"))
import timeline_worker as worker  # noqa: E402

pytestmark = pytest.mark.distributed  # launches ranks of its own

RANKS = 2
ITEMSIZE = {"float32": 4, "float16": 2, "int16": 2, "int32": 4, "uint8": 1, "float64": 8}


def recorded_rounds(timeline: list) -> dict:
    """{label: {round: [collective, bytes sent by one rank, records]}} over the run, from the
    timeline; a round is "allreduce" or "allgather" (round 0) or a compressor's grouped round."""
    names = {e["pid"]: e["args"]["name"] for e in timeline
             if e.get("name") == "process_name" and "name" in e.get("args", {})}
    totals = defaultdict(lambda: defaultdict(lambda: ["", 0, 0]))
    for event in timeline:
        args = event.get("args", {})
        if event.get("ph") != "E" or "dtype" not in args:
            continue  # only the record that closes a collective carries dtype and shape
        name = names[event["pid"]]
        label = re.search(r"weights\.(\w+?)__", name)
        if label is None:
            continue
        collective, _, rest = name.partition(".")
        round_ = collective if collective in ("allreduce", "allgather") else rest.partition(".weights.")[0]
        numel = int(np.prod(json.loads(args["shape"]) or [1]))
        size = numel * ITEMSIZE[args["dtype"]]
        entry = totals[label.group(1)][round_]
        entry[0] = "allgather" if collective == "allgather" else "allreduce"
        entry[1] += size // RANKS if collective == "allgather" else size
        entry[2] += 1
    return totals


def recorded_bytes(timeline: list) -> dict:
    """{label: {"bytes": sent by one rank over the run, "records": count}} from the timeline."""
    return {label: {"bytes": sum(r[1] for r in rounds.values()), "records": sum(r[2] for r in rounds.values())}
            for label, rounds in recorded_rounds(timeline).items()}


def by_formula(label: str) -> tuple:
    """(payload bytes per step from the paper-style formula, number of tensors) — written out
    independently of the code's wire_bytes."""
    name, kwargs = parse_spec(worker.SPECS[label])
    total = 0
    for shape in worker.SHAPES.values():
        d = int(np.prod(shape))
        n, m = shape[0], d // shape[0]
        matrix = len(shape) > 1
        b = 2 if kwargs.get("wire_dtype") == "float16" else 4  # bytes per factor entry
        total += {
            "powersgd": ((b * 2 * max(n, m)) if kwargs.get("alternate")
                         else b * kwargs.get("power_iterations", 1) * 2 * (n + m)) if matrix else 4 * d,
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
        compressor = build(spec)  # traffic only: wire_bytes depends on the config alone
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


def test_every_registered_spec_is_measured():
    """Each compressor class and each documented variant has a label in the timeline worker."""
    specs = [parse_spec(spec) for spec in worker.SPECS.values()]
    for name, cls in COMPRESSORS.items():
        for variant in ("",) + tuple(v for v, _ in cls.wire_variants):
            options = parse_spec(f"{name}:{variant}")[1]
            assert any(n == name and options.items() <= kw.items() for n, kw in specs), f"{name}:{variant}"


def test_the_advisor_prices_what_horovod_recorded(timeline):
    """Per spec: the advisor's rounds (from each compressor's `transfers`) are the rounds Horovod
    ran — the same collectives, bytes and tensors per round — and its bytes per step are the
    timeline's."""
    recorded = recorded_rounds(timeline)
    shapes = list(worker.SHAPES.values())
    for label, spec in worker.SPECS.items():
        traffic = advisor.traffic(spec, shapes)
        predicted = sorted((r.collective, r.nbytes, r.tensors) for r in traffic.rounds)
        measured = sorted((collective, nbytes / worker.STEPS, records / worker.STEPS)
                          for collective, nbytes, records in recorded[label].values())
        assert measured == predicted, f"{label}: timeline {measured}, advisor {predicted}"
        prediction = advisor.predict(spec, shapes, 1e9, RANKS, 0.0)
        assert prediction.bytes_per_step == sum(b for _, b, _ in measured) and prediction.communicate_s > 0
        assert traffic.total == sum(build(spec).wire_bytes(s) for s in shapes)
