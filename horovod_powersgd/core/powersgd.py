"""PowerSGD: rank-r compression by power iteration, with error feedback — two variants.

Vogels, Karimireddy & Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed
Optimization", NeurIPS 2019. A gradient G is reshaped to an n×m matrix; E is this rank's error
buffer (zero at first), r the rank. Factors are kept *transposed*, as r×n and r×m row-major tensors
(Pᵀ, Qᵀ): every product then has the thin factor on the left, the form BLAS runs at memory speed.

Classic (``alternate=False``, Algorithms 1 and 2 of the paper) — two all-reduces per step:

    M  ← G + E                      error feedback, in place
    Pᵀ ← Qᵀ Mᵀ                      Q: the previous step's Q̄ (warm start); a seeded Gaussian at first
    P̄ᵀ ← all-reduce(Pᵀ)             round 1 — Horovod's own, asynchronous, fused across layers
    P̂ᵀ ← orthogonalize(P̄ᵀ)
    Qᵀ ← P̂ᵀ M
    Q̄ᵀ ← all-reduce(Qᵀ)             round 2 — ours, one grouped all-reduce for all layers
    G' ← P̂ Q̄ᵀ                       what the optimizer sees (identical on every rank)
    E  ← M − P̂ Q̄ᵀ                   local M minus the *averaged* approximation

Single-round (``alternate=True``) — one all-reduce per step, the left and right multiplications of
the power iteration on alternate steps (as in the authors' current package, and ACP-SGD, Zhang et
al., ICDCS 2023). Counting compressed steps t = 0, 1, ...:

    even t (P-step):  Q̂ ← orthogonalize(Q̄ of step t−1; the seeded Q at t = 0)
                      Pᵀ ← Q̂ᵀ Mᵀ,  P̄ᵀ ← all-reduce(Pᵀ),  G' ← P̄ Q̂ᵀ,  E ← M − P Q̂ᵀ
    odd t  (Q-step):  P̂ ← orthogonalize(P̄ of step t−1)
                      Qᵀ ← P̂ᵀ M,   Q̄ᵀ ← all-reduce(Qᵀ),  G' ← P̂ Q̄ᵀ,  E ← M − P̂ Qᵀ

Why one round is enough: the factor that is not sent (Q̂ or P̂) was orthogonalized from an
all-reduced factor, so it is bit-identical on every rank. The step is then linear in M,
mean_i(M_i Q̂) Q̂ᵀ = mean_i(M_i Q̂ Q̂ᵀ), so all-reducing the sent factor gives exactly the average of
every rank's own rank-r approximation; and each rank's error keeps what *its* approximation missed,
so Σ_i E_i = Σ_i M_i − N·G' as in the classic scheme. Each step is one half of a power iteration
warm-started from the last, so over two steps the factors track the dominant subspace as the
classic k = 1 iteration does, with half the rounds and half the bytes per step.

Two-sided single-round (``two_sided=True``) — one all-reduce per step carrying both factors, each
multiplied with the *other* side's shared factor of the previous step:

    P̂ ← orthogonalize(P̄ of step t−1),  Q̂ ← orthogonalize(Q̄ of step t−1)   (seeded Gaussians at t = 0)
    Pᵀ ← Q̂ᵀ Mᵀ,  Qᵀ ← P̂ᵀ M,  (P̄ᵀ, Q̄ᵀ) ← all-reduce(Pᵀ, Qᵀ)                 one round
    G' ← P̂ Q̄ᵀ + (P̄ − P̂ P̂ᵀ P̄) Q̂ᵀ  =  M̄ − (I − P̂P̂ᵀ) M̄ (I − Q̂Q̂ᵀ)
    E  ← M − (the same with this rank's own P and Q)

G' keeps everything of M̄ that lies in the column space of P̂ *or* the row space of Q̂: the
projection onto both subspaces, rank ≤ 2r, where the alternating scheme keeps one of them per step.
It is linear in M for the same reason as above (P̂ and Q̂ are identical on every rank), so one
all-reduce of the pair gives the average of every rank's own approximation. Each side's factor
moves half a power iteration per step, P from Q̂ and Q from P̂: two interleaved warm-started
chains, each tracking the dominant subspace as the alternating scheme's one chain does. It sends
classic's r(n+m) numbers per step in one round. Measured on the Fashion-MNIST CNN under momentum
(README, "Two-sided single-round PowerSGD"), it trained about a point short of classic where the
alternating scheme fell ten short.

Bytes: classic k·r(n+m) numbers per compressed matrix per step; single-round r·n and r·m on
alternate steps, each zero-padded to r·max(n, m) so that Horovod sees one shape per tensor (its
response cache renegotiates a tensor whose shape changed, which costs extra rounds); two-sided
r(n+m), P and Q flat in one tensor. Tensors with one dimension and matrices that would not shrink by
``min_compression_rate`` go uncompressed.

How the phases map onto Horovod's one-collective hook (docs/design.md, "Phases"):
  `_compress`          adds the error, computes the factor to send; Horovod all-reduces it with
                       everything else during backprop.
  `_decompress`        single-round (both schemes): rebuilds the gradient and updates the state —
                       done (`_rebuild_in_one_round`).
                       classic: orthogonalizes P̄, computes Q (`_compute_q`), hands Horovod the
                       gradient's output tensor (on eager backends not yet filled).
  `_run_own_rounds`    classic, eager backends: once the step's last tensor is decompressed, sends
                       every layer's Q as one grouped all-reduce (`_reduce_q_and_iterate`, one
                       fused round each: `_fused_allreduce`), runs further power iterations the same
                       way, and fills every output in place before the optimizer's step
                       (`_fill_output`). On graph backends (TensorFlow) these ops are emitted per
                       tensor.

A step whose all-reduced factor is not finite (an inf/NaN gradient on any rank, as under dynamic
loss scaling) leaves every piece of state as it was — error, factors, step counter — and hands the
non-finite gradient on so that the loss scaler skips the step. All ranks see the same reduced
factor, so all make the same decision.

Zero and rank-deficient gradients. A layer whose averaged gradient is exactly zero for a step (a
branch not taken, the layer below a zero-initialised head) reduces to a zero factor; as a warm start
it would make every later product M·0 zero, and the layer would never train again. So each step
multiplies by the previous factor *renewed* (`renew_rows`): a row of norm ≤ ε — no direction left,
after a zero gradient or one of rank below r — is replaced by the same row of the seeded initial
factor; every other row is kept as it is. The rule reads only all-reduced values and the seed, so
every rank applies it alike, on the device, with no host round trip; it is a function of the
checkpointed factor, so a resumed or elastically synchronized run renews exactly as the original.
While a layer gets no gradient its error buffer is kept: the compressed steps go on delivering it,
so the ranks' mean error only shrinks.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import NamedTuple, Optional

import numpy as np

from . import arguments
from .backend import Backend, ReduceOp, compute_dtype, itemsize
from .compressor import Compressor, Ctx, export_value
from .orthogonalize import orthogonalize, renew_rows
from .shapes import matrix_shape, numel
from .wire import Transfer, Wire, raw


class PowerSGDConfig(NamedTuple):
    """PowerSGD's hyper-parameters (immutable). See README "Knobs" for how to tune them."""

    rank: int = 1  # r; higher is more accurate and less compressed. Start at 1-2, raise if accuracy lags
    power_iterations: int = 1  # k; more → closer to the best rank-r approximation, k round pairs per step
    warm_start: bool = True  # reuse last step's factor: with k=1 this is what makes one iteration enough
    error_feedback: bool = True  # keep what the approximation missed and add it next step (biased→converges)
    min_compression_rate: float = 2.0  # send a matrix as it is unless n·m / (r(n+m)) ≥ this
    start_step: int = 0  # steps all-reduced uncompressed first (warm-up; PyTorch's hook advises ~10 %)
    seed: int = 0  # seeds the initial (and, without warm start, every) Q — the same on all ranks
    orthogonalization_epsilon: float = 1e-8  # keeps zero / rank-deficient gradients from making NaN
    wire_dtype: Optional[str] = None  # 'float16'/'bfloat16' to send the factors in half precision
    alternate: bool = False  # True: one all-reduce per step (P and Q on alternate steps), half the bytes
    two_sided: bool = False  # True: one all-reduce per step carrying P and Q together, classic's bytes

    def validate(self) -> "PowerSGDConfig":
        for name, minimum in (("rank", 1), ("power_iterations", 1), ("start_step", 0), ("seed", 0)):
            arguments.integer("PowerSGD", name, getattr(self, name), minimum)
        for name in ("warm_start", "error_feedback", "alternate", "two_sided"):
            arguments.boolean("PowerSGD", name, getattr(self, name))
        arguments.number("PowerSGD", "min_compression_rate", self.min_compression_rate, "(0, inf)")
        arguments.number("PowerSGD", "orthogonalization_epsilon", self.orthogonalization_epsilon,
                         "[0, inf)")
        if self.wire_dtype not in (None, "float16", "bfloat16", "float32"):
            raise ValueError(f"PowerSGD: wire_dtype must be None, 'float16', 'bfloat16' or 'float32', "
                             f"got {self.wire_dtype!r}")
        if self.two_sided and self.alternate:
            raise ValueError("PowerSGD: alternate=True and two_sided=True are two different "
                             "single-round schemes; choose one")
        if self.single_round and self.power_iterations != 1:
            scheme, per_step = (("alternate", "per step") if self.alternate
                                else ("two_sided", "on each side per step"))
            raise ValueError(f"PowerSGD: {scheme}=True does one half of a power iteration {per_step} "
                             f"(one all-reduce); power_iterations must be 1 with it, got "
                             f"{self.power_iterations}. Use the classic scheme (alternate=False, "
                             f"two_sided=False) for k iterations (2k all-reduce rounds per step)")
        return self

    @property
    def single_round(self) -> bool:
        """One all-reduce per step: either single-round scheme."""
        return self.alternate or self.two_sided


@dataclasses.dataclass
class _TensorState:
    """Per-parameter state. ``matrix`` is None for tensors sent uncompressed."""

    shape: tuple
    matrix: Optional[tuple]  # (n, m) of the reshaped gradient
    rank: int  # effective rank: min(r, n, m)
    step: object = None  # backend slot: how many steps of this tensor completed (finite ones)
    q: object = None  # backend slot: r×m Qᵀ (classic: last Q̄ᵀ; single-round: last reduced Qᵀ)
    p: object = None  # backend slot: r×n last reduced Pᵀ (single-round schemes only)
    error: object = None  # backend slot: n×m error buffer, created (zero) at first use
    # eager backends: the error buffer the last finite step retired, reused as the next output
    # (a fresh n×m buffer costs its page faults on every step, more than the product written to it)
    spare: object = None
    seeds: dict = dataclasses.field(default_factory=dict)  # eager: `PowerSGD._seed_rows` by side


def _side_size(state: _TensorState, side: str) -> int:
    """Length of a factor's rows: m for ``side`` "q" (Qᵀ is r×m), n for "p"."""
    return state.matrix[1 if side == "q" else 0]


@dataclasses.dataclass
class _Job:
    """One tensor of the classic scheme between `_decompress` and the end of `_run_own_rounds`."""

    ctx: Ctx
    state: _TensorState
    M: object  # n×m: gradient plus error (the rank's own)
    P_hat: object  # r×n orthonormal rows
    Q: object  # r×m: local Qᵀ, then the reduced Q̄ᵀ
    step: object
    buffer: object = None  # n×m tensor the gradient is written into (eager backends)
    out: object = None  # what Horovod got back: ``buffer`` in the gradient's shape, or a tensor to fill


class PowerSGD(Compressor):
    """Rank-r PowerSGD with error feedback and warm start, as a Horovod compression object.

    Classic: r(n+m) numbers per compressed n×m matrix per step, in two all-reduces.
    ``alternate=True``: one all-reduce per step, r·n and r·m numbers on alternate steps.
    ``two_sided=True``: one all-reduce per step, r(n+m) numbers, a rank-≤2r approximation.
    All other tensors go as they are. Biased; error feedback makes it converge like uncompressed SGD
    in the paper's experiments.

    On eager backends (PyTorch) the gradient tensor handed to ``compress`` is used as scratch space
    (M = G + E is formed in it, and then becomes the new error buffer), as DDP's PowerSGD hook does
    with its buckets: Horovod's optimizer replaces ``p.grad`` with the result, so nothing is lost.
    """

    wire = Wire("32·k·r·(n+m)/(n·m)", biased=True, error_feedback=True,
                note="k power iterations, each one P and one Q all-reduce; warm start")
    wire_variants = (("alternate=True",
                      Wire("32·r·max(n,m)/(n·m)", biased=True, error_feedback=True,
                           note="one all-reduce per step: P and Q on alternate steps, padded to one "
                                "shape")),
                     ("two_sided=True",
                      Wire("32·r·(n+m)/(n·m)", biased=True, error_feedback=True,
                           note="one all-reduce per step: P = MQ̂ and Q = MᵀP̂ together, rank ≤ 2r")),
                     ("error_feedback=False",
                      Wire("32·k·r·(n+m)/(n·m)", biased=True, error_feedback=False,
                           note="no memory: what the approximation misses is lost")),
                     ("wire_dtype='float16'",
                      Wire("16·k·r·(n+m)/(n·m)", biased=True, error_feedback=True,
                           note="P and Q sent in float16, orthogonalized in float32")))

    def transfers(self, shape, dtype: str = "float32") -> list:
        """Per step after ``start_step``, for a compressed n×m matrix (numbers in ``wire_dtype``,
        else the compute dtype): classic, iteration i = 0 … k−1 sends Pᵀ (r·n) in round 2i and Qᵀ
        (r·m) in round 2i + 1 — round 0 is Horovod's own all-reduce, fused with every uncompressed
        tensor, the rest our grouped all-reduces (`_fused_allreduce`); single-round, P or Q flat and
        padded to r·max(n, m) numbers (`_flat_wire`) in round 0; two-sided, P and Q flat in one
        tensor of r(n+m) numbers in round 0. Other tensors go as they are."""
        state = self._plan(tuple(shape))
        if state.matrix is None:
            return raw(shape, dtype)
        (n, m), r = state.matrix, state.rank
        number = itemsize(self.cfg.wire_dtype or compute_dtype(dtype))
        if self.cfg.alternate:
            return [Transfer("allreduce", r * max(n, m) * number, 0, "P or Q, padded")]
        if self.cfg.two_sided:
            return [Transfer("allreduce", r * (n + m) * number, 0, "P and Q")]
        return [Transfer("allreduce", r * size * number, 2 * i + j, factor)
                for i in range(self.cfg.power_iterations)
                for j, (factor, size) in enumerate((("P", n), ("Q", m)))]

    def __init__(self, backend: Backend, rank: int = 1, *, power_iterations: int = 1,
                 warm_start: bool = True, error_feedback: bool = True,
                 min_compression_rate: float = 2.0, start_step: int = 0, seed: int = 0,
                 orthogonalization_epsilon: float = 1e-8, wire_dtype: Optional[str] = None,
                 alternate: bool = False, two_sided: bool = False):
        self.cfg = PowerSGDConfig(rank, power_iterations, warm_start, error_feedback,
                                  float(min_compression_rate), start_step, seed,
                                  float(orthogonalization_epsilon), wire_dtype, alternate,
                                  two_sided).validate()
        if wire_dtype in getattr(backend, "allreduce_unsupported_dtypes", ()):
            raise ValueError(f"PowerSGD: wire_dtype={wire_dtype!r} cannot be all-reduced by this "
                             f"Horovod (0.28.1 has no {wire_dtype} all-reduce); use 'float16'")
        super().__init__(backend)
        self._pending: list = []  # classic: tensors waiting for round 2
        self._commits: list = []  # eager: state updates of this step, applied if it was finite

    def config(self) -> dict:
        return self.cfg._asdict()

    # ------------------------------------------------------------------ per-tensor plan
    def _state(self, ctx: Ctx) -> _TensorState:
        name = ctx.identity.name
        state = self._tensors.get(name)
        if state is None:
            state = self._tensors[name] = self._plan(ctx.shape)
            state.step = self._new_slot(0, f"{name}/step")
        elif state.shape != ctx.shape:
            raise ValueError(f"PowerSGD: gradient {name!r} changed shape from {state.shape} to "
                             f"{ctx.shape}; state is keyed by parameter name")
        return state

    def _plan(self, shape: tuple) -> _TensorState:
        if len(shape) < 2:
            return _TensorState(shape, None, 0)
        n, m = matrix_shape(shape)
        rank = min(self.cfg.rank, n, m)
        if n * m < self.cfg.min_compression_rate * rank * (n + m):
            return _TensorState(shape, None, 0)
        return _TensorState(shape, (n, m), rank)

    def initial_factor(self, size: int, rank: int, step: int = 0, side: str = "q") -> np.ndarray:
        """The seeded Gaussian size×r factor: identical on every rank and in every framework, drawn
        from a private generator (the global RNGs are not touched). ``side`` "q" is the initial Q
        (size m) of every scheme, "p" the two-sided scheme's initial P (size n), each from its
        own stream. ``step`` > 0 only without warm start."""
        key = zlib.crc32(f"{self._stream(side, size, rank)}/{step}".encode())
        return np.random.default_rng(key).standard_normal((size, rank)).astype(np.float32)

    def _stream(self, side: str, size: int, rank: int) -> str:
        return f"{self.cfg.seed}/{size}/{rank}" if side == "q" else f"{self.cfg.seed}/{side}/{size}/{rank}"

    def _sends_p(self, compressed_step):
        """Single-round: whether compressed step ``compressed_step`` sends P (else Q). Without warm
        start there is no previous factor to continue from: every step sends P from a fresh Q."""
        if not self.cfg.warm_start:
            return True
        return compressed_step % 2 == 0

    def _shared_t(self, name: str, state: _TensorState, side: str, like, compressed_step,
                  dtype: str):
        """The factor that this step multiplies with, transposed (``side`` "q": r×m Qᵀ, "p": r×n
        Pᵀ): with warm start, last step's reduced one renewed by `renew_rows` (a seeded row
        wherever it has no direction left, so that a zero or rank-deficient gradient never
        stops the layer for good); without, a seeded Gaussian that every rank draws alike."""
        b = self.backend
        if not self.cfg.warm_start:
            key = zlib.crc32(self._stream(side, _side_size(state, side), state.rank).encode())
            return b.cast(b.seeded_normal((state.rank, _side_size(state, side)), key,
                                          compressed_step, like=like), dtype)
        self._factor_slot(name, state, side, like, dtype)
        return self._renewed(state, side, b.to_device_of(b.read_state(getattr(state, side)), like),
                             dtype)

    def _renewed(self, state: _TensorState, side: str, factor, dtype: str):
        """``factor`` (a reduced Pᵀ or Qᵀ) as a power iteration multiplies by it: `renew_rows`."""
        return renew_rows(self.backend, factor, self._seed_rows(state, side, factor, dtype),
                          self.cfg.orthogonalization_epsilon)

    def _factor_slot(self, name: str, state: _TensorState, side: str, like, dtype: str) -> None:
        """Create the warm-start slot of ``side`` at first use: the seeded initial factor. The
        alternating scheme's P starts at zero instead: it is only read after a P-step wrote it."""
        if getattr(state, side) is not None:
            return
        if side == "p" and self.cfg.alternate:
            initial = self.backend.zeros((state.rank, _side_size(state, side)), dtype, like=like)
        else:
            initial = self._seed_rows(state, side, like, dtype)
        setattr(state, side, self._new_slot(initial, f"{name}/{side}"))

    def _seed_rows(self, state: _TensorState, side: str, like, dtype: str):
        """The seeded initial factor of ``side``, transposed: the warm start's first value, and
        what `renew_rows` puts where a row has no direction left. Derived from the configuration
        and the shape alone (never checkpointed); eager backends keep it on the device, graph
        backends embed it as a constant."""
        cached = state.seeds.get(side)
        if cached is not None:
            return cached
        b = self.backend
        seed = np.ascontiguousarray(self.initial_factor(_side_size(state, side), state.rank,
                                                        side=side).T)
        rows = b.cast(b.from_numpy(seed, like=like), dtype)
        if b.deferred:
            state.seeds[side] = rows
        return rows

    def _error(self, name: str, state: _TensorState, like, dtype: str):
        b = self.backend
        if state.error is None:
            state.error = self._new_slot(b.zeros(state.matrix, dtype, like=like), f"{name}/error")
        error = b.read_state(state.error)
        moved = b.to_device_of(error, like)
        if moved is not error:  # restored on the host: keep the device copy (it is written in place)
            b.write_state(state.error, moved)
        return moved

    def _wire(self, tensor):
        return tensor if self.cfg.wire_dtype is None else self.backend.cast(tensor, self.cfg.wire_dtype)

    # ------------------------------------------------------------------ phase 1: compress
    def _compress(self, tensor, ctx: Ctx):
        b = self.backend
        state = self._state(ctx)
        step = b.read_state(state.step)
        # Eager backends decide warm-up here and send the gradient as it is; graph backends cannot
        # change what Horovod all-reduces per step, so they choose inside the graph.
        if state.matrix is None or (b.deferred and step < self.cfg.start_step):
            b.write_state(state.step, step + 1)
            ctx.compressed = False
            return tensor, ctx
        dtype = compute_dtype(ctx.dtype)
        name = ctx.identity.name
        # M shares the gradient's memory where it can: Horovod replaces the gradient with our result
        M = b.reshape(b.cast(tensor, dtype), state.matrix)
        if self.cfg.error_feedback:
            M = b.add_(M, self._error(name, state, M, dtype))
        compressed_step = step - self.cfg.start_step
        if self.cfg.single_round:
            return self._send_in_one_round(tensor, ctx, state, M, step, compressed_step, dtype)
        P = b.matmul(self._shared_t(name, state, "q", M, compressed_step, dtype), M,
                     transpose_b=True)
        ctx.payload = (state, M, step, tensor)
        return self._wire(P), ctx

    def _send_in_one_round(self, gradient, ctx: Ctx, state, M, step, compressed_step, dtype):
        """Single-round, both schemes: multiply M by the shared orthonormal factor(s) and send the
        product(s) as one flat tensor; keep this rank's own approximation for its error."""
        b = self.backend
        name, eps = ctx.identity.name, self.cfg.orthogonalization_epsilon
        shared = lambda side: orthogonalize(  # noqa: E731
            b, self._shared_t(name, state, side, M, compressed_step, dtype), eps)

        # each returns (what to send, left factor, right factor): the approximation is leftᵀ right
        def p_step():
            Q_hat = shared("q")
            P = b.matmul(Q_hat, M, transpose_b=True)
            return self._flat_wire(P, state), P, Q_hat

        def q_step():
            P_hat = shared("p")
            Q = b.matmul(P_hat, M)
            return self._flat_wire(Q, state), P_hat, Q

        def both_sides():
            P_hat, Q_hat = shared("p"), shared("q")
            P, Q = b.matmul(Q_hat, M, transpose_b=True), b.matmul(P_hat, M)
            wire = b.concat([b.reshape(self._wire(P), (-1,)), b.reshape(self._wire(Q), (-1,))])
            return (wire, *self._two_sided_factors(P_hat, Q_hat, P, Q))

        sends_p = self._sends_p(compressed_step)
        if self.cfg.two_sided:
            send, rows = both_sides, 2 * state.rank
        else:
            send, rows = (lambda: b.cond(sends_p, p_step, q_step)), state.rank
            if self.cfg.warm_start:  # both factor slots exist before any branch writes one
                self._factor_slot(name, state, "p", M, dtype)
                self._factor_slot(name, state, "q", M, dtype)
        if b.deferred:
            wire, left, right = send()
        else:
            n, m = state.matrix
            # Graph backends: one all-reduce of a flat tensor whose length differs per step (the
            # wire, or the whole gradient during warm-up); Horovod's all-reduce takes dynamic shapes.
            def warmup():
                return (b.reshape(self._wire(b.cast(gradient, dtype)), (-1,)),
                        b.zeros((rows, n), dtype), b.zeros((rows, m), dtype))

            wire, left, right = b.cond(step < self.cfg.start_step, warmup, send)
            ctx.sent_bytes = self.wire_bytes(ctx.shape, ctx.dtype)  # warm-up aside: static
        if b.deferred and self.cfg.error_feedback:
            # E ← M − (local approximation) now, in place, while M is still in the cache from the
            # product: the next error, which the step's end adopts if the step was finite (the old
            # error buffer is untouched until then)
            M = b.sub_outer_(M, left, right)
            new_error = lambda gradient: M  # noqa: E731
        else:
            new_error = lambda gradient: b.sub_outer_(M, left, right)  # noqa: E731
        ctx.payload = (state, new_error, step, sends_p, left, right)
        return wire, ctx

    def _two_sided_factors(self, P_hat, Q_hat, P, Q):
        """Two-sided: the rows (2r×n, 2r×m) of P̂ Qᵀ + (P − P̂ P̂ᵀ P) Q̂ᵀ, for P = M Q̂ and Q = Mᵀ P̂ —
        all transposed, as the factors are kept. That is M − (I − P̂P̂ᵀ) M (I − Q̂Q̂ᵀ): Qᵀ carries
        M's part in P̂'s column space, and P with that part taken out (P̂ᵀ P = P̂ᵀ M Q̂ would be
        counted twice) the rest of its part in Q̂'s row space."""
        b = self.backend
        P_off = P - b.matmul(b.matmul(P, P_hat, transpose_b=True), P_hat)  # not in place: P is kept
        return b.concat([P_hat, P_off]), b.concat([Q, Q_hat])

    def _flat_wire(self, factor, state: _TensorState):
        """Single-round: the factor flat, zero-padded to r·max(n, m). One shape for P-steps and
        Q-steps: Horovod's response cache keys on the shape, and a shape that changed every step
        would cost every tensor a full renegotiation (extra collective rounds) every step."""
        b = self.backend
        return b.pad(b.reshape(self._wire(factor), (-1,)), state.rank * max(state.matrix))

    # ------------------------------------------------------------------ phase 2: decompress
    def _decompress(self, reduced, ctx: Ctx):
        if self.cfg.single_round:
            return self._rebuild_in_one_round(reduced, ctx)
        state, M, step, gradient = ctx.payload
        ctx.payload = None
        b = self.backend
        if not b.deferred and self.cfg.start_step > 0:  # graph backends: warm-up chosen per step
            return b.cond(step < self.cfg.start_step,
                          lambda: self._warmup_done(state, step, b.wait(b.allreduce_async(
                              gradient, f"powersgd.warmup.{ctx.identity.name}", ctx.identity)), ctx),
                          lambda: self._compute_q(reduced, ctx, state, M, step))
        return self._compute_q(reduced, ctx, state, M, step)

    def _rebuild_in_one_round(self, reduced, ctx: Ctx):
        """Single-round, both schemes: G' from the reduced factor(s) and the shared one(s); the
        state moves on."""
        state, new_error, step, sends_p, left, right = ctx.payload
        ctx.payload = None
        b = self.backend
        dtype = compute_dtype(ctx.dtype)
        r, (n, m) = state.rank, state.matrix
        reduced = b.cast(reduced, dtype)
        P_bar = lambda: b.reshape(reduced[:r * n], (r, n))  # noqa: E731
        Q_bar = lambda: b.reshape(reduced[:r * m] if not self.cfg.two_sided  # noqa: E731
                                  else reduced[r * n:], (r, m))

        def reduced_factors():  # (left, right) of G', and the reduced (Pᵀ, Qᵀ) the next step uses
            if self.cfg.two_sided:
                kept = P_bar(), Q_bar()
                return (*self._two_sided_factors(left[:r], right[r:], *kept), *kept)
            # alternating: G' = P̄ Q̂ᵀ after a P-step, P̂ Q̄ᵀ after a Q-step; the reduced one is kept
            reduced_left, reduced_right = b.cond(sends_p, lambda: (P_bar(), right),
                                                 lambda: (left, Q_bar()))
            return reduced_left, reduced_right, reduced_left, reduced_right

        def from_factors():
            reduced_left, reduced_right, kept_p, kept_q = reduced_factors()

            def keep_factor():  # the factor(s) that were sent, reduced, seed the next step
                if not self.cfg.warm_start:
                    return
                if self.cfg.two_sided:
                    b.write_state(state.p, kept_p)
                    b.write_state(state.q, kept_q)
                elif b.deferred:
                    b.write_state(state.p if sends_p else state.q, kept_p if sends_p else kept_q)
                else:  # graph: both slots written, the one not sent with its own value
                    b.write_state(state.p, b.cond(sends_p, lambda: kept_p,
                                                  lambda: b.read_state(state.p)))
                    b.write_state(state.q, b.cond(sends_p, lambda: b.read_state(state.q),
                                                  lambda: kept_q))

            out = self._gradient_and_commit(state, new_error, step, (reduced_left, reduced_right),
                                            keep_factor)
            return b.cast(b.reshape(out, ctx.shape), ctx.dtype)

        if b.deferred:
            return from_factors()
        return b.cond(step < self.cfg.start_step,
                      # sliced to the gradient's size: TensorFlow raised on this branch's reshape in
                      # compressed steps whose wire is longer than the gradient (two-sided at a
                      # lossless rank)
                      lambda: self._warmup_done(state, step,
                                                b.reshape(reduced[:numel(ctx.shape)], ctx.shape), ctx),
                      from_factors)

    def _warmup_done(self, state: _TensorState, step, reduced_gradient, ctx: Ctx):
        """Graph backends: a warm-up step's all-reduced gradient, and the step counted."""
        b = self.backend
        b.write_state(state.step, step + 1)
        return b.cast(reduced_gradient, ctx.dtype)

    def _gradient_and_commit(self, state: _TensorState, new_error, step, reduced, keep_factor,
                             out=None):
        """The n×m gradient P Qᵀ of the ``reduced`` factors (r×n, r×m), written into ``out`` if
        given, and the state update that goes with it: the error buffer becomes
        ``new_error(gradient)`` (M minus the approximation its error measures against:
        single-round, this rank's own local one; classic, the averaged one), the kept factor,
        the step counter.

        Eager backends stage the update until the step's end and apply it only if every reduced
        tensor of the step was finite (`_commit_step`): the error buffer simply becomes M, no copy.
        Graph backends decide per tensor, inside the graph, on the reduced factor ``reduced``."""
        b = self.backend
        gradient = b.outer(*reduced, out=self._take_spare(state) if out is None else out)

        def commit():
            if self.cfg.error_feedback:
                retired = b.read_state(state.error)
                b.write_state(state.error, new_error(gradient))
                self._keep_spare(state, retired)
            keep_factor()
            b.write_state(state.step, step + 1)
            return gradient

        if b.deferred:
            self._commits.append(commit)
            return gradient
        return b.cond(b.finite_flag(reduced[0]) & b.finite_flag(reduced[1]), commit,
                      lambda: gradient)

    def _take_spare(self, state: _TensorState):
        """The n×m buffer the last finite step's error retired (None: none), handed out once.

        Reusing it is safe because nothing outside holds it: it was a gradient given to `compress`
        (Horovod's optimizer points ``p.grad`` at our output instead) or a buffer we allocated,
        and it served only as this rank's error buffer since."""
        spare, state.spare = state.spare, None
        return spare

    def _keep_spare(self, state: _TensorState, retired) -> None:
        if self.backend.deferred and retired is not None:
            state.spare = retired

    def _commit_step(self):
        commits, self._commits = self._commits, []  # eager backends only: graphs commit per tensor
        finite = super()._commit_step()
        if commits and finite:
            for commit in commits:
                commit()
        return finite

    # ------------------------------------------------------------------ classic: P̂ and Q
    def _compute_q(self, P_reduced, ctx: Ctx, state: _TensorState, M, step):
        b = self.backend
        dtype = compute_dtype(ctx.dtype)
        P_hat = orthogonalize(b, b.cast(P_reduced, dtype), self.cfg.orthogonalization_epsilon)
        job = _Job(ctx, state, M, P_hat, Q=self._wire(b.matmul(P_hat, M)), step=step)
        if b.deferred:
            # Q is sent in `_run_own_rounds` with every other layer's as one grouped all-reduce: one
            # round. Submitted one by one, as layers are decompressed, they would spread over
            # several of Horovod's cycles (it fuses what every rank submitted by the same cycle),
            # each a round with its own latency.
            job.out = self._output_for(job)
            self._pending.append(job)
        else:
            self._reduce_q_and_iterate([job])
        return job.out

    def _output_for(self, job: _Job):
        """The tensor Horovod gets back now and `_run_own_rounds` fills: an n×m buffer viewed in the
        gradient's shape, written directly by the product (a separate tensor to copy into where
        the gradient's dtype is not the compute dtype)."""
        b = self.backend
        ctx = job.ctx
        if ctx.dtype != compute_dtype(ctx.dtype):
            return b.empty(ctx.shape, ctx.dtype, like=job.P_hat)
        job.buffer = self._take_spare(job.state)
        if job.buffer is None:
            job.buffer = b.empty(job.state.matrix, ctx.dtype, like=job.P_hat)
        return b.reshape(job.buffer, ctx.shape)

    def _fused_allreduce(self, jobs: list, tensors: list, round_name: str) -> list:
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
        for indices, handle in handles:
            for i, value in zip(indices, self._wait(handle, group=True)):
                results[i] = b.cast(value, compute_dtype(jobs[i].ctx.dtype))
        return results

    # ------------------------------------------------------------------ classic: round 2
    def _run_own_rounds(self) -> None:
        jobs, self._pending = self._pending, []
        if jobs:
            self._reduce_q_and_iterate(jobs)

    def _reduce_q_and_iterate(self, jobs: list) -> None:
        """Round 2 (Q̄) for all ``jobs`` as one fused round, then k − 1 further P and Q rounds."""
        b = self.backend
        eps = self.cfg.orthogonalization_epsilon
        jobs = sorted(jobs, key=lambda job: job.ctx.identity.name)
        for job, Q in zip(jobs, self._fused_allreduce(jobs, [job.Q for job in jobs], "Q0")):
            job.Q = Q
        for iteration in range(1, self.cfg.power_iterations):
            renewed = [self._renewed(job.state, "q", job.Q, compute_dtype(job.ctx.dtype))
                       for job in jobs]
            P = self._fused_allreduce(jobs, [self._wire(b.matmul(Q, job.M, transpose_b=True))
                                             for job, Q in zip(jobs, renewed)], f"P{iteration}")
            for job, P_reduced in zip(jobs, P):
                job.P_hat = orthogonalize(b, P_reduced, eps)
            Q = self._fused_allreduce(jobs, [self._wire(b.matmul(job.P_hat, job.M)) for job in jobs],
                            f"Q{iteration}")
            for job, Q_reduced in zip(jobs, Q):
                job.Q = Q_reduced
        for job in jobs:
            self._fill_output(job)

    def _fill_output(self, job: _Job) -> None:
        """E ← M − P̂ Q̄ᵀ/N-or-1, gradient P̂ Q̄ᵀ into the output, Q̄ kept for the next step."""
        b = self.backend
        state, identity = job.state, job.ctx.identity
        # the reduced Q̄ is the average (or, for op=Sum, the sum) over ranks; the error measures M
        # against the average
        average_q = job.Q if identity.op is ReduceOp.AVERAGE else job.Q / identity.group_size

        reduced_q = job.Q

        def keep_factor():  # may run at the step's end, after the job's fields were released
            if self.cfg.warm_start:
                b.write_state(state.q, reduced_q)

        if b.deferred:  # round 2's result decides too (graph backends check it per tensor)
            self._step_finite.append(b.finite_flag(job.Q))
        M, P_hat = job.M, job.P_hat
        if identity.op is ReduceOp.AVERAGE:
            # E ← M − P̂ Q̄ᵀ is M minus the gradient just written: one pass over M, the gradient
            # still in the cache, instead of another rank-r product over all of M
            new_error = lambda gradient: b.sub_(M, gradient)  # noqa: E731
        else:
            new_error = lambda gradient: b.sub_outer_(M, P_hat, average_q)  # noqa: E731
        out = self._gradient_and_commit(state, new_error, job.step, (job.P_hat, job.Q), keep_factor,
                                        out=job.buffer)
        if job.buffer is None:  # else ``out`` is the buffer job.out views: the gradient is there
            result = b.cast(b.reshape(out, job.ctx.shape), job.ctx.dtype)
            if b.deferred:
                b.fill(job.out, result)
            else:
                job.out = result
        job.M = job.P_hat = job.Q = job.buffer = None  # release the step's temporaries

    def _scaled_slots(self):
        """The error buffers: they hold gradient mass, in the loss scale's units."""
        return [state.error for state in self._tensors.values() if state.error is not None]

    # ------------------------------------------------------------------ checkpointing
    def _export_tensor_state(self, state: _TensorState) -> dict:
        b = self.backend
        return {"shape": list(state.shape), "step": int(b.read_state(state.step)),
                **{field: None if getattr(state, field) is None else export_value(b, getattr(state, field))
                   for field in ("q", "p", "error")}}

    def _merge_tensor_state(self, root_state: dict, own_state) -> dict:
        # the error buffer is this process's; Q, P and the step counter are rank 0's (shared)
        return {**root_state, "error": None if own_state is None else own_state["error"]}

    def _import_tensor_state(self, name: str, value: dict) -> _TensorState:
        state = self._plan(tuple(value["shape"]))
        b = self.backend
        state.step = self._new_slot(int(value["step"]), f"{name}/step")
        for field in ("q", "p", "error"):
            if value.get(field) is not None:
                setattr(state, field, self._new_slot(b.import_tensor(value[field]), f"{name}/{field}"))
        return state
