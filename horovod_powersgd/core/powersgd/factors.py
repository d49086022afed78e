"""The factors every scheme multiplies M by: seeded at first, warm-started from the last step's
reduced factor after, renewed where that has no direction left.

Zero and rank-deficient gradients. A layer whose averaged gradient is exactly zero for a step (a
branch not taken, the layer below a zero-initialised head) reduces to a zero factor; as a warm start
it would make every later product M·0 zero, and the layer would never train again. So each step
multiplies by the previous factor *renewed* (`renew_rows`): a row of norm ≤ ε‖F‖ — no direction left,
after a zero gradient or one of rank below r — is replaced by the same row of the seeded initial
factor; every other row keeps its direction, scaled to unit length. The rule reads only all-reduced values and the seed, so
every rank applies it alike, on the device, with no host round trip; it is a function of the
checkpointed factor, so a resumed or elastically synchronized run renews exactly as the original.
"""
from __future__ import annotations

import zlib

import numpy as np

from ..backend import Backend
from ..orthogonalize import orthogonalize, renew_rows
from .config import PowerSGDConfig
from .state import Job, TensorState


class SharedFactors:
    """Seeded, warm-started and renewed factors, identical on every rank.

    ``new_slot(value, key)`` creates checkpointed state (`Compressor._new_slot`); ``keeps_tensors``
    says whether tensors may be kept between steps (eager backends: the seeds stay on the device;
    graph backends embed them as constants of each trace)."""

    def __init__(self, backend: Backend, cfg: PowerSGDConfig, new_slot, keeps_tensors: bool):
        self.backend, self.cfg = backend, cfg
        self._new_slot, self._keeps_tensors = new_slot, keeps_tensors

    def initial(self, size: int, rank: int, side: str = "q") -> np.ndarray:
        """The seeded Gaussian size×r factor: identical on every rank and in every framework, drawn
        from a private generator (the global RNGs are not touched). ``side`` "q" is the initial Q
        (size m) of every scheme, "p" the initial P (size n), each from its own stream."""
        key = zlib.crc32(f"{self._stream(side, size, rank)}/0".encode())
        return np.random.default_rng(key).standard_normal((size, rank)).astype(np.float32)

    def _stream(self, side: str, size: int, rank: int) -> str:
        return f"{self.cfg.seed}/{size}/{rank}" if side == "q" else f"{self.cfg.seed}/{side}/{size}/{rank}"

    def seed_rows(self, state: TensorState, side: str, like, dtype: str):
        """The seeded initial factor of ``side``, transposed: the warm start's first value, and
        what `renew_rows` puts where a row has no direction left. Derived from the configuration
        and the shape alone (never checkpointed)."""
        cached = state.seeds.get(side)
        if cached is not None:
            return cached
        b = self.backend
        seed = np.ascontiguousarray(self.initial(state.side_size(side), state.rank, side=side).T)
        seed /= np.linalg.norm(seed, axis=1, keepdims=True)  # unit rows, as `renew_rows` keeps them
        rows = b.cast(b.from_numpy(seed, like=like), dtype)
        if self._keeps_tensors:
            state.seeds[side] = rows
        return rows

    def create_slot(self, name: str, state: TensorState, side: str, like, dtype: str,
                    zero: bool = False) -> None:
        """The warm-start slot of ``side`` at first use: the seeded initial factor (``zero``: zeros,
        for a factor that is written before it is first read)."""
        if getattr(state, side) is not None:
            return
        if zero:
            initial = self.backend.zeros((state.rank, state.side_size(side)), dtype, like=like)
        else:
            initial = self.seed_rows(state, side, like, dtype)
        setattr(state, side, self._new_slot(initial, f"{name}/{side}"))

    def shared(self, job: Job, side: str):
        """The factor this step multiplies with, transposed (``side`` "q": r×m Qᵀ, "p": r×n Pᵀ):
        with warm start, last step's reduced one, `renewed`; without, a seeded Gaussian drawn
        afresh every step, alike on every rank."""
        b, state = self.backend, job.state
        if not self.cfg.warm_start:
            key = zlib.crc32(self._stream(side, state.side_size(side), state.rank).encode())
            return b.cast(b.seeded_normal((state.rank, state.side_size(side)), key,
                                          job.compressed_step, like=job.M), job.dtype)
        return self.renewed(state, side, b.to_device_of(b.read_state(getattr(state, side)), job.M),
                            job.dtype)

    def renewed(self, state: TensorState, side: str, factor, dtype: str):
        """``factor`` (a reduced Pᵀ or Qᵀ) as a power iteration multiplies by it (`renew_rows`)."""
        return renew_rows(self.backend, factor, self.seed_rows(state, side, factor, dtype),
                          self.cfg.orthogonalization_epsilon)

    def orthonormal(self, factor):
        """``factor``'s rows made orthonormal (`orthogonalize`; zero where it has no direction)."""
        return orthogonalize(self.backend, factor, self.cfg.orthogonalization_epsilon)
