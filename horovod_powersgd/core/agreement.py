"""Every rank's compressor must be built the same way: one tiny collective proves it.

Ranks whose compressors differ (another class, another ``rank``, ``power_iterations``, ``seed``, …)
otherwise hang (a different number of rounds), fail deep inside Horovod ("Mismatched ALLREDUCE tensor
shapes") or, worst, train on silently with gradients that no longer mean the same thing on every
rank. So at a compressor's first step — and again after every restore — each rank all-gathers a
16-byte digest of its *description* (class name + hyper-parameters, as canonical JSON). Equal digests
on every rank: done, one all-gather of 16·N bytes. Any difference, seen identically by every rank
(all ranks hold all digests): the ranks all-gather their full descriptions and every rank raises
`ConfigMismatchError` naming the knob and each rank's value, within one collective's latency instead
of a hang.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from .backend import Backend, TensorIdentity

DIGEST_BYTES = 16


class ConfigMismatchError(ValueError):
    """The ranks' compressors were built with different classes or hyper-parameters."""


def description(compressor, extra=None) -> dict:
    """What must be identical on every rank: class, config, and any ``extra`` facts (compared and
    reported like knobs)."""
    return {"compressor": type(compressor).__name__, "config": {**compressor.config(), **(extra or {})}}


def encode(value: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(value, sort_keys=True, default=repr).encode(), dtype=np.uint8)


def check_agreement(compressor, identity: TensorIdentity, like, extra=None) -> None:
    """Raise `ConfigMismatchError` on every rank of ``identity``'s process set unless all of them
    describe their compressors identically. Collectives are named after the check, not the tensor."""
    mine = description(compressor, extra)
    blob = encode(mine)
    digest = np.frombuffer(hashlib.blake2b(blob.tobytes(), digest_size=DIGEST_BYTES).digest(),
                           dtype=np.uint8)
    digests = _allgather(compressor.backend, digest, "horovod_powersgd.agreement.digest", identity,
                         like).reshape(identity.group_size, DIGEST_BYTES)
    if all(np.array_equal(digests[0], d) for d in digests[1:]):
        return
    # Someone differs: every rank saw it. Gather the descriptions (padded to the longest) to say how.
    lengths = _allgather(compressor.backend, np.array([blob.size], dtype=np.int64).view(np.uint8),
                         "horovod_powersgd.agreement.length", identity, like).view(np.int64)
    padded = np.zeros(int(lengths.max()), dtype=np.uint8)
    padded[:blob.size] = blob
    gathered = _allgather(compressor.backend, padded, "horovod_powersgd.agreement.description",
                          identity, like).reshape(identity.group_size, -1)
    described = [json.loads(row[:n].tobytes().decode()) for row, n in zip(gathered, lengths)]
    raise ConfigMismatchError(explain(described))


def explain(described: list) -> str:
    """Which knob differs, with each rank's value (ranks numbered within the process set)."""
    first = described[0]
    lines = []
    classes = [d["compressor"] for d in described]
    if len(set(classes)) > 1:
        lines.append("compressor class: " + ", ".join(f"{c} on rank {r}" for r, c in enumerate(classes)))
    else:
        knobs = sorted(set().union(*(d["config"] for d in described)))
        for knob in knobs:
            values = [d["config"].get(knob, "<missing>") for d in described]
            if any(v != values[0] for v in values[1:]):
                lines.append(f"{knob}: " + ", ".join(f"{v!r} on rank {r}" for r, v in enumerate(values)))
    return (f"{first['compressor']}: the ranks' compressors were built differently — "
            + "; ".join(lines) + ". Every rank must build its compressor with the same class and "
            "arguments (checked at the first step and after every restore).")


def _allgather(backend: Backend, array: np.ndarray, name: str, identity: TensorIdentity, like):
    tensor = backend.from_numpy(np.ascontiguousarray(array).reshape(-1), like=like)
    return np.asarray(backend.to_numpy(backend.wait(backend.allgather_async(tensor, name, identity))))
