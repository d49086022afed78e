"""The saved PowerSGD checkpoints `test_powersgd_checkpoint_format` loads: each scheme's per-rank
``state_dict`` after a few steps (one with a zero gradient), the gradients of the next steps, and
what the saving code returned for them. Written once by

    python -m tests.core.checkpoint_fixture

so that every later version of the code is held to checkpoints an earlier one saved (never rewrite
the file to make a test pass: a format change must load the old file or fail with a clear message).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from horovod_powersgd.core.powersgd import PowerSGD
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients

FIXTURE = Path(__file__).parent / "data" / "powersgd_checkpoints.json"
SHAPES = {"w": (6, 5), "conv": (4, 3, 2, 2), "b": (6,)}
SCHEMES = {"classic": {}, "classic_k2": {"power_iterations": 2}, "alternate": {"alternate": True},
           "two_sided": {"two_sided": True}}
COMMON = {"rank": 2, "min_compression_rate": 1.0, "start_step": 1}
SAVED_AFTER, REPLAYED = 4, 3  # steps before the checkpoint; steps replayed after it


def gradients(rank: int, step: int) -> dict:
    rng = np.random.default_rng([7, rank, step])
    grads = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}
    if step == 2:  # a step where "w" gets no gradient on any rank: its reduced factor is zero
        grads["w"] = np.zeros(SHAPES["w"], np.float32)
    return grads


def to_json(value):
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return {"dtype": str(value.dtype), "shape": list(value.shape),
                "data": [float(x) for x in value.ravel()]}
    return value


def from_json(value):
    if isinstance(value, dict):
        if set(value) == {"dtype", "shape", "data"}:
            return np.asarray(value["data"], dtype=value["dtype"]).reshape(value["shape"])
        return {key: from_json(item) for key, item in value.items()}
    return value


def run(options: dict, state=None):
    """Per rank: the state after `SAVED_AFTER` steps and the outputs of the `REPLAYED` steps after it
    (``state``: per-rank saved states to start those from instead)."""

    def body(comm):
        compressor = PowerSGD(NumpyBackend(comm), **COMMON, **options)
        if state is None:
            for step in range(SAVED_AFTER):
                reduce_gradients(compressor, gradients(comm.rank, step))
            saved = compressor.state_dict()
        else:
            saved = state[comm.rank]
            compressor.load_state_dict(saved)
        replayed = [reduce_gradients(compressor, gradients(comm.rank, step))
                    for step in range(SAVED_AFTER, SAVED_AFTER + REPLAYED)]
        return saved, replayed

    return ThreadGroup(2).run(body)


def main() -> None:
    fixture = {}
    for scheme, options in SCHEMES.items():
        results = run(options)
        fixture[scheme] = {"options": options,
                           "states": [to_json(saved) for saved, _ in results],
                           # the reduced outputs are identical on every rank: rank 0's
                           "outputs": [to_json(step) for step in results[0][1]]}
    FIXTURE.write_text(json.dumps(fixture, indent=None, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
