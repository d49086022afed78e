"""PowerSGD: rank-r compression by one power-iteration step, with error feedback.

Vogels, Karimireddy & Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed
Optimization", NeurIPS 2019, Algorithms 1 and 2. For a gradient G reshaped to an n×m matrix:

    M  ← G + E                      error feedback (E: this rank's error buffer, zero at first)
    P  ← M Q                        Q: m×r, warm-started from the previous step
    P̄  ← all-reduce(P)              round 1 — Horovod's own, asynchronous, fused across layers
    P̂  ← orthogonalize(P̄)
    Q  ← Mᵀ P̂
    Q̄  ← all-reduce(Q)              round 2 — ours, asynchronous, fused across layers
    G' ← P̂ Q̄ᵀ                       what the optimizer sees (identical on every rank)
    E  ← M − P̂ Q̄ᵀ                   local M minus the *averaged* approximation
    Q  ← Q̄                          warm start for the next step

Everything except the orthogonalization is linear, and that runs on the already-reduced P̄, so both
rounds are plain all-reduces. A matrix costs r(n + m) numbers on the wire instead of n·m.

How the phases map onto Horovod's one-collective hook (see DESIGN.md §3):
  `_compress`    phase 1: returns P; Horovod all-reduces it with everything else.
  `_decompress`  phase 2: orthogonalizes P̄, computes Q = Mᵀ P̂, returns the gradient's output
                 tensor (on deferred backends not yet filled).
  `_finish_step` phase 3: once the step's last tensor is decompressed, submits every layer's Q in one
                 tight loop (Horovod fuses them into one round), waits for them, runs any further
                 power iterations the same way, and fills every output in place before the
                 optimizer's step.
On graph backends (TensorFlow) phases 2 and 3 are emitted together per tensor; the graph runs the
collectives concurrently and Horovod fuses them.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import NamedTuple, Optional

import numpy as np

from .backend import Backend, ReduceOp, compute_dtype, itemsize
from .compressor import Compressor, Ctx, export_value
from .orthogonalize import orthogonalize
from .wire import Wire, numel


class PowerSGDConfig(NamedTuple):
    """PowerSGD's hyper-parameters (immutable). See README "Knobs" for how to tune them."""

    rank: int = 1  # r; higher is more accurate and less compressed. Start at 1-2, raise if accuracy lags
    power_iterations: int = 1  # k; more → closer to the best rank-r approximation, k round pairs per step
    warm_start: bool = True  # reuse last step's Q̄: with k=1 this is what makes one iteration enough
    error_feedback: bool = True  # keep what the approximation missed and add it next step (biased→converges)
    min_compression_rate: float = 2.0  # send a matrix as it is unless n·m / (r(n+m)) ≥ this
    start_step: int = 0  # steps all-reduced uncompressed first (warm-up; PyTorch's hook advises ~10 %)
    seed: int = 0  # seeds the initial (and, without warm start, every) Q — the same on all ranks
    orthogonalization_epsilon: float = 1e-8  # keeps zero / rank-deficient gradients from making NaN
    wire_dtype: Optional[str] = None  # 'float16'/'bfloat16' to send P and Q in half precision

    def validate(self) -> "PowerSGDConfig":
        def integer(name, minimum):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"PowerSGD: {name} must be an integer >= {minimum}, got {value!r}")

        integer("rank", 1)
        integer("power_iterations", 1)
        integer("start_step", 0)
        integer("seed", 0)
        for name in ("warm_start", "error_feedback"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"PowerSGD: {name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.min_compression_rate, (int, float)) and self.min_compression_rate > 0):
            raise ValueError(f"PowerSGD: min_compression_rate must be a positive number, "
                             f"got {self.min_compression_rate!r}")
        if not (isinstance(self.orthogonalization_epsilon, (int, float))
                and self.orthogonalization_epsilon >= 0):
            raise ValueError(f"PowerSGD: orthogonalization_epsilon must be >= 0, "
                             f"got {self.orthogonalization_epsilon!r}")
        if self.wire_dtype not in (None, "float16", "bfloat16", "float32"):
            raise ValueError(f"PowerSGD: wire_dtype must be None, 'float16', 'bfloat16' or 'float32', "
                             f"got {self.wire_dtype!r}")
        return self


@dataclasses.dataclass
class _TensorState:
    """Per-parameter state. ``matrix`` is None for tensors sent uncompressed."""

    shape: tuple
    matrix: Optional[tuple]  # (n, m) of the reshaped gradient
    rank: int  # effective rank: min(r, n, m)
    step: object = None  # backend slot: how many times this tensor was compressed
    q: object = None  # backend slot: m×r warm-start Q (compute dtype), created at first use
    error: object = None  # backend slot: n×m error buffer, created (zero) at first use


@dataclasses.dataclass
class _Job:
    """One tensor between phase 2 and the end of phase 3."""

    ctx: Ctx
    state: _TensorState
    M: object
    P_hat: object
    handle: object
    Q: object = None
    out: object = None


def matrix_shape(shape: tuple) -> tuple:
    """(n, m): first dimension × product of the rest (conv weights: out_channels × the rest)."""
    m = 1
    for d in shape[1:]:
        m *= int(d)
    return int(shape[0]), m


class PowerSGD(Compressor):
    """Rank-r PowerSGD with error feedback and warm start, as a Horovod compression object.

    Sends r(n+m) numbers per compressed n×m matrix (two all-reduces), all other tensors as they are.
    Biased; error feedback makes it converge like uncompressed SGD in the paper's experiments.
    """

    wire = Wire("allreduce", "32·k·r(n+m)/(n·m)", biased=True, error_feedback=True,
                note="k power iterations, each one P and one Q all-reduce; warm start")
    wire_variants = (("error_feedback=False",
                      Wire("allreduce", "32·k·r(n+m)/(n·m)", biased=True, error_feedback=False,
                           note="no memory: what the approximation misses is lost")),
                     ("wire_dtype='float16'",
                      Wire("allreduce", "16·k·r(n+m)/(n·m)", biased=True, error_feedback=True,
                           note="P and Q sent in float16, orthogonalized in float32")))

    def wire_bytes(self, shape, dtype: str = "float32") -> int:
        """Bytes this rank sends per step for one gradient of ``shape`` (after ``start_step``)."""
        state = self._new_state(tuple(shape))
        if state.matrix is None:
            return numel(shape) * itemsize(dtype)
        n, m = state.matrix
        number = itemsize(self.cfg.wire_dtype or compute_dtype(dtype))
        return self.cfg.power_iterations * state.rank * (n + m) * number

    def __init__(self, backend: Backend, rank: int = 1, *, power_iterations: int = 1,
                 warm_start: bool = True, error_feedback: bool = True,
                 min_compression_rate: float = 2.0, start_step: int = 0, seed: int = 0,
                 orthogonalization_epsilon: float = 1e-8, wire_dtype: Optional[str] = None):
        self.cfg = PowerSGDConfig(rank, power_iterations, warm_start, error_feedback,
                                  float(min_compression_rate), start_step, seed,
                                  float(orthogonalization_epsilon), wire_dtype).validate()
        if wire_dtype in getattr(backend, "allreduce_unsupported_dtypes", ()):
            raise ValueError(f"PowerSGD: wire_dtype={wire_dtype!r} cannot be all-reduced by this "
                             f"Horovod (0.28.1 has no {wire_dtype} all-reduce); use 'float16'")
        super().__init__(backend)
        self._pending: list = []

    def config(self) -> dict:
        return self.cfg._asdict()

    # ------------------------------------------------------------------ per-tensor plan
    def _state(self, ctx: Ctx) -> _TensorState:
        name = ctx.identity.name
        state = self._tensors.get(name)
        if state is None:
            state = self._tensors[name] = self._new_state(ctx.shape)
            state.step = self.backend.new_state(0, key=f"{name}/step")
        elif state.shape != ctx.shape:
            raise ValueError(f"PowerSGD: gradient {name!r} changed shape from {state.shape} to "
                             f"{ctx.shape}; state is keyed by parameter name")
        return state

    def _new_state(self, shape: tuple) -> _TensorState:
        if len(shape) < 2:
            return _TensorState(shape, None, 0)
        n, m = matrix_shape(shape)
        rank = min(self.cfg.rank, n, m)
        if n * m < self.cfg.min_compression_rate * rank * (n + m):
            return _TensorState(shape, None, 0)
        return _TensorState(shape, (n, m), rank)

    def initial_q(self, m: int, rank: int, step: int = 0) -> np.ndarray:
        """The seeded Gaussian m×r Q: identical on every rank and in every framework, drawn from a
        private generator (the global RNGs are not touched). ``step`` > 0 only without warm start."""
        key = zlib.crc32(f"{self.cfg.seed}/{m}/{rank}/{step}".encode())
        return np.random.default_rng(key).standard_normal((m, rank)).astype(np.float32)

    def _q(self, name: str, state: _TensorState, M, step, dtype: str):
        b = self.backend
        m = state.matrix[1]
        if not self.cfg.warm_start:  # a fresh Q every step, identical on all ranks
            key = zlib.crc32(f"{self.cfg.seed}/{m}/{state.rank}".encode())
            return b.cast(b.seeded_normal((m, state.rank), key, step, like=M), dtype)
        if state.q is None:
            state.q = b.new_state(b.cast(b.from_numpy(self.initial_q(m, state.rank), like=M), dtype),
                                  key=f"{name}/q")
        return b.to_device_of(b.read_state(state.q), M)

    def _wire(self, tensor):
        return tensor if self.cfg.wire_dtype is None else self.backend.cast(tensor, self.cfg.wire_dtype)

    # ------------------------------------------------------------------ phase 1: compress
    def _compress(self, tensor, ctx: Ctx):
        b = self.backend
        state = self._state(ctx)
        step = b.read_state(state.step)
        b.write_state(state.step, step + 1)
        # Eager backends decide warm-up here and send the gradient as it is; graph backends cannot
        # change the wire shape per step, so they send P and choose in `_decompress`.
        if state.matrix is None or (b.deferred and step < self.cfg.start_step):
            ctx.compressed = False
            return tensor, ctx
        dtype = compute_dtype(ctx.dtype)
        name = ctx.identity.name
        M = b.reshape(b.cast(tensor, dtype), state.matrix)
        if self.cfg.error_feedback:
            if state.error is None:
                state.error = b.new_state(b.zeros(state.matrix, dtype, like=M), key=f"{name}/error")
            M = M + b.to_device_of(b.read_state(state.error), M)
        P = M @ self._q(name, state, M, step, dtype)
        ctx.payload = (state, M, step, tensor)
        return self._wire(P), ctx

    # ------------------------------------------------------------------ phase 2: decompress
    def _decompress(self, P_reduced, ctx: Ctx):
        state, M, step, gradient = ctx.payload
        ctx.payload = None
        b = self.backend
        if not b.deferred and self.cfg.start_step > 0:  # graph backends: warm-up chosen per step
            return b.cond(step < self.cfg.start_step,
                          lambda: b.wait(b.allreduce_async(
                              gradient, f"powersgd.warmup.{ctx.identity.name}", ctx.identity)),
                          lambda: self._low_rank(P_reduced, ctx, state, M))
        return self._low_rank(P_reduced, ctx, state, M)

    def _low_rank(self, P_reduced, ctx: Ctx, state: _TensorState, M):
        b = self.backend
        dtype = compute_dtype(ctx.dtype)
        P_hat = orthogonalize(b, b.cast(P_reduced, dtype), self.cfg.orthogonalization_epsilon)
        job = _Job(ctx, state, M, P_hat, handle=None)
        job.Q = self._wire(b.transpose(M) @ P_hat)
        if b.deferred:
            # Q is sent in `_finish_step` with every other layer's as one grouped all-reduce: one
            # round. Submitted one by one, as layers are decompressed, they would spread over
            # several of Horovod's cycles (it fuses what every rank submitted by the same cycle),
            # each a round with its own latency.
            job.out = b.empty(ctx.shape, ctx.dtype, like=P_hat)
            self._pending.append(job)
        else:
            self._finish([job])
        return job.out

    def _round(self, jobs: list, tensors: list, round_name: str) -> list:
        """All-reduce one tensor per job as a single fused round (one grouped all-reduce per
        reduction), wait for it, and return the results in the compute dtype, in job order."""
        b = self.backend
        groups = {}
        for index, job in enumerate(jobs):
            identity = job.ctx.identity
            groups.setdefault((identity.op, id(identity.process_set)), []).append(index)
        handles = []
        for indices in groups.values():
            first = jobs[indices[0]].ctx.identity
            group = [tensors[i] for i in indices]
            for tensor in group:
                self._sent(tensor)
            # rank-consistent: jobs are sorted by name, so the group and its name agree on all ranks
            name = f"powersgd.{round_name}.{len(group)}.{first.name}"
            handles.append((indices, b.grouped_allreduce_async(group, name, first)))
        results = [None] * len(jobs)
        start = b.clock()
        for indices, handle in handles:
            for i, value in zip(indices, b.wait_group(handle)):
                results[i] = b.cast(value, compute_dtype(jobs[i].ctx.dtype))
        self._stats.wait_seconds += b.clock() - start
        return results

    # ------------------------------------------------------------------ phase 3: finish
    def _finish_step(self) -> None:
        jobs, self._pending = self._pending, []
        if jobs:
            self._finish(jobs)

    def _finish(self, jobs: list) -> None:
        """Round 2 (Q̄) for all ``jobs`` as one fused round, then k − 1 further P and Q rounds."""
        b = self.backend
        eps = self.cfg.orthogonalization_epsilon
        jobs = sorted(jobs, key=lambda job: job.ctx.identity.name)
        for job, Q in zip(jobs, self._round(jobs, [job.Q for job in jobs], "Q0")):
            job.Q = Q
        for iteration in range(1, self.cfg.power_iterations):
            P = self._round(jobs, [self._wire(job.M @ job.Q) for job in jobs], f"P{iteration}")
            for job, P_reduced in zip(jobs, P):
                job.P_hat = orthogonalize(b, P_reduced, eps)
            Q = self._round(jobs, [self._wire(b.transpose(job.M) @ job.P_hat) for job in jobs],
                            f"Q{iteration}")
            for job, Q_reduced in zip(jobs, Q):
                job.Q = Q_reduced
        for job in jobs:
            self._complete(job)

    def _complete(self, job: _Job) -> None:
        b = self.backend
        state, identity = job.state, job.ctx.identity
        reduced = job.P_hat @ b.transpose(job.Q)  # the average (or, for op=Sum, the sum) over ranks
        if self.cfg.error_feedback:
            average = reduced if identity.op is ReduceOp.AVERAGE else reduced / identity.group_size
            b.write_state(state.error, job.M - average)
        if self.cfg.warm_start:
            b.write_state(state.q, job.Q)
        result = b.cast(b.reshape(reduced, job.ctx.shape), job.ctx.dtype)
        if b.deferred:
            b.fill(job.out, result)
        else:
            job.out = result
        job.M = job.P_hat = job.Q = None  # release the step's temporaries

    # ------------------------------------------------------------------ checkpointing
    def _export_tensor_state(self, state: _TensorState) -> dict:
        return {"shape": list(state.shape), "step": int(self.backend.read_state(state.step)),
                "q": None if state.q is None else export_value(self.backend, state.q),
                "error": None if state.error is None else export_value(self.backend, state.error)}

    def _import_tensor_state(self, name: str, value: dict) -> _TensorState:
        state = self._new_state(tuple(value["shape"]))
        b = self.backend
        state.step = b.new_state(int(value["step"]), key=f"{name}/step")
        if value["q"] is not None:
            state.q = b.new_state(b.import_tensor(value["q"]), key=f"{name}/q")
        if value["error"] is not None:
            state.error = b.new_state(b.import_tensor(value["error"]), key=f"{name}/error")
        return state
