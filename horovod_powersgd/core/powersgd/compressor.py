"""`PowerSGD`, the Horovod compression object: what every scheme shares, around the scheme it runs.

Per tensor and step it plans the tensor (`plan`), forms M = G + E in the gradient's own memory,
decides warm-up (``start_step``), creates the warm-start slots, hands a `Job` to its scheme
(`Scheme`: ``send`` in ``compress``, ``receive`` in ``decompress``, ``own_rounds`` at the step's
end), writes the gradient leftᵀ·right, and stages the step's state — the error buffer, the kept
factors, the step counter — which the base class commits at the step's end if every reduced value
of the step was finite (`Compressor._commit_step`).

Eager and graph backends differ in three things only, all written in `_EagerSteps` and
`_GraphSteps`: eager backends decide warm-up in Python and send the gradient as it is, and run a
scheme's own rounds once for all of a step's tensors, filling outputs handed out earlier; graph
backends (TensorFlow inside ``tf.function``) choose warm-up inside the graph and complete each
tensor where it is decompressed.

A step whose all-reduced values are not finite (an inf/NaN gradient on any rank, as under dynamic
loss scaling) leaves every piece of state as it was — error, factors, step counter — and hands the
non-finite gradient on, so that the loss scaler skips the step. All ranks see the same reduced
values, so all make the same decision.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional

from ..backend import Backend, compute_dtype, itemsize
from ..compressor import Compressor, Ctx, export_value
from ..shapes import numel
from ..wire import Wire, raw
from .alternating import Alternating
from .classic import Classic
from .config import DEFAULTS, PowerSGDConfig
from .factors import SharedFactors
from .scheme import Scheme
from .state import Job, TensorState, plan
from .two_sided import TwoSided

#: every scheme by `PowerSGDConfig.scheme`
SCHEMES: Dict[str, type] = {scheme.name: scheme for scheme in (Classic, Alternating, TwoSided)}


class Update(NamedTuple):
    """What a completed tensor's step produced: the n×m gradient and the state it stages."""

    gradient: object
    error: object  # the next error buffer (None without error feedback)
    kept: dict  # side -> reduced factor the next step continues from
    finite: object  # the scheme's own rounds reduced finite values (None: it ran none)


class PowerSGD(Compressor):
    """Rank-r PowerSGD with error feedback and warm start, as a Horovod compression object.

    Classic (default): r(n+m) numbers per compressed n×m matrix per step, in two all-reduces
    (`classic`). ``alternate=True``: one all-reduce per step, r·n and r·m numbers on alternate steps
    (`alternating`). ``two_sided=True``: one all-reduce per step, r(n+m) numbers, a rank-≤2r
    approximation (`two_sided`). All other tensors go as they are. Biased; error feedback makes it
    converge like uncompressed SGD in the paper's experiments.

    On eager backends (PyTorch) the gradient tensor handed to ``compress`` is used as scratch space
    (M = G + E is formed in it, and then becomes the new error buffer), as DDP's PowerSGD hook does
    with its buckets: Horovod's optimizer replaces ``p.grad`` with the result, so nothing is lost.
    """

    wire = Classic.wire
    wire_variants = (("alternate=True", Alternating.wire),
                     ("two_sided=True", TwoSided.wire),
                     ("error_feedback=False",
                      Wire("32·k·r·(n+m)/(n·m)", biased=True, error_feedback=False,
                           note="no memory: what the approximation misses is lost")),
                     ("wire_dtype='float16'",
                      Wire("16·k·r·(n+m)/(n·m)", biased=True, error_feedback=True,
                           note="P and Q sent in float16, orthogonalized in float32")))

    def __init__(self, backend: Backend, rank: int = DEFAULTS.rank, *,
                 power_iterations: int = DEFAULTS.power_iterations,
                 warm_start: bool = DEFAULTS.warm_start, error_feedback: bool = DEFAULTS.error_feedback,
                 min_compression_rate: float = DEFAULTS.min_compression_rate,
                 start_step: int = DEFAULTS.start_step, seed: int = DEFAULTS.seed,
                 orthogonalization_epsilon: float = DEFAULTS.orthogonalization_epsilon,
                 wire_dtype: Optional[str] = DEFAULTS.wire_dtype, alternate: bool = DEFAULTS.alternate,
                 two_sided: bool = DEFAULTS.two_sided):
        self.cfg = PowerSGDConfig(rank, power_iterations, warm_start, error_feedback,
                                  float(min_compression_rate), start_step, seed,
                                  float(orthogonalization_epsilon), wire_dtype, alternate,
                                  two_sided).validate()
        if wire_dtype in backend.allreduce_unsupported_dtypes:
            raise ValueError(f"PowerSGD: wire_dtype={wire_dtype!r} cannot be all-reduced by this "
                             f"Horovod (it has no {wire_dtype} all-reduce); use 'float16'")
        super().__init__(backend)
        steps = _EagerSteps if backend.deferred else _GraphSteps
        self.factors = SharedFactors(backend, self.cfg, self._new_slot, steps.keeps_tensors)
        self.scheme: Scheme = SCHEMES[self.cfg.scheme](self)
        self._steps = steps(self)
        self._retiring: list = []  # eager: (state, error buffer a finite step's end retires)

    def config(self) -> dict:
        return self.cfg._asdict()

    def _transfers(self, shape, dtype: str = "float32") -> list:
        """Per step after ``start_step``, for a compressed n×m matrix, the scheme's transfers
        (numbers in ``wire_dtype``, else the compute dtype); other tensors go as they are."""
        state = plan(self.cfg, tuple(shape))
        if state.matrix is None:
            return raw(shape, dtype)
        number = itemsize(self.cfg.wire_dtype or compute_dtype(dtype))
        return self.scheme.transfers(*state.matrix, state.rank, number)

    def initial_factor(self, size: int, rank: int, side: str = "q"):
        """The seeded Gaussian size×r initial factor of ``side`` (`SharedFactors.initial`)."""
        return self.factors.initial(size, rank, side)

    # ------------------------------------------------------------------ per-tensor state
    def _state(self, ctx: Ctx) -> TensorState:
        name = ctx.identity.name
        state = self._tensors.get(name)
        if state is None:
            state = self._tensors[name] = plan(self.cfg, ctx.shape)
            state.step = self._new_slot(0, f"{name}/step")
        elif state.shape != ctx.shape:
            raise ValueError(f"PowerSGD: gradient {name!r} changed shape from {state.shape} to "
                             f"{ctx.shape}; state is keyed by parameter name")
        return state

    def _error(self, name: str, state: TensorState, like, dtype: str):
        b = self.backend
        if state.error is None:
            state.error = self._new_slot(b.zeros(state.matrix, dtype, like=like), f"{name}/error")
        self._into_step_units(name, [state.error])
        error = b.read_state(state.error)
        moved = b.to_device_of(error, like)
        if moved is not error:  # restored on the host: keep the device copy (it is written in place)
            b.write_state(state.error, moved)
        return moved

    # ------------------------------------------------------------------ phase 1: compress
    def _compress(self, tensor, ctx: Ctx):
        b = self.backend
        state = self._state(ctx)
        step = b.read_state(state.step)
        if state.matrix is None or self._steps.warming_up(step):
            b.write_state(state.step, step + 1)
            ctx.compressed = False
            return tensor, ctx
        dtype, name = compute_dtype(ctx.dtype), ctx.identity.name
        # M shares the gradient's memory where it can: Horovod replaces the gradient with our result
        M = b.reshape(b.cast(tensor, dtype), state.matrix)
        if self.cfg.error_feedback:
            M = b.add_(M, self._error(name, state, M, dtype))
        if self.cfg.warm_start:  # every slot exists before any branch of the scheme reads one
            for side in self.scheme.warm_sides:
                self.factors.create_slot(name, state, side, M, dtype, zero=side in self.scheme.zero_sides)
        job = Job(ctx, state, step, step - self.cfg.start_step, dtype, M, tensor)
        ctx.payload = job
        return self._steps.send(job), ctx

    # ------------------------------------------------------------------ phase 2: decompress
    def _decompress(self, reduced, ctx: Ctx):
        job, ctx.payload = ctx.payload, None
        return self._steps.receive(job, self.backend.cast(reduced, job.dtype))

    def _run_own_rounds(self) -> None:
        self._steps.end_of_step()

    def _update(self, job: Job, out=None) -> Update:
        """The n×m gradient leftᵀ·right (written into ``out``, else into the spare buffer if there
        is one) and the state that goes with it."""
        gradient = self.backend.outer(job.left, job.right,
                                      out=self._take_spare(job.state) if out is None else out)
        error = self.scheme.error(job, gradient) if self.cfg.error_feedback else None
        return Update(gradient, error, job.kept, job.finite)

    def _stage(self, job: Job, update: Update, step_if_not_finite=None) -> None:
        """Stage ``update``'s state for the step's end (`Compressor._stage_write`)."""
        b, state = self.backend, job.state
        if update.finite is not None:
            self._step_finite.append(update.finite)
        if update.error is not None:
            if self._steps.keeps_tensors:
                self._retiring.append((state, b.read_state(state.error)))
            self._stage_write(state.error, update.error)
        for side, value in update.kept.items():
            self._stage_write(getattr(state, side), value)
        self._stage_write(state.step, job.step + 1, otherwise=step_if_not_finite)

    def _take_spare(self, state: TensorState):
        """The n×m buffer the last finite step's error retired (None: none), handed out once.

        Reusing it is safe because nothing outside holds it: it was a gradient given to `compress`
        (Horovod's optimizer points ``p.grad`` at our output instead) or a buffer we allocated,
        and it served only as this rank's error buffer since."""
        spare, state.spare = state.spare, None
        return spare

    def _commit_step(self):
        retiring, self._retiring = self._retiring, []
        finite = super()._commit_step()
        if finite is True:  # eager backends: the retired error buffers become next step's outputs
            for state, retired in retiring:
                if retired is not None:
                    state.spare = retired
        return finite

    def _abandon_step(self) -> None:
        super()._abandon_step()
        self._retiring.clear()
        self._steps.abandon()

    def _scaled_slots_of(self, state: TensorState):
        """The error buffer: it holds gradient mass, in the loss scale's units."""
        return [] if state.error is None else [state.error]

    # ------------------------------------------------------------------ checkpointing
    def _export_tensor_state(self, state: TensorState) -> dict:
        b = self.backend
        return {"shape": list(state.shape), "step": int(b.read_state(state.step)),
                **{field: None if getattr(state, field) is None else export_value(b, getattr(state, field))
                   for field in ("q", "p", "error")}}

    def _merge_tensor_state(self, root_state: dict, own_state) -> dict:
        # the error buffer is this process's; Q, P and the step counter are rank 0's (shared)
        return {**root_state, "error": None if own_state is None else own_state["error"]}

    def _import_tensor_state(self, name: str, value: dict) -> TensorState:
        state = plan(self.cfg, tuple(value["shape"]))
        b = self.backend
        state.step = self._new_slot(int(value["step"]), f"{name}/step")
        for field in ("q", "p", "error"):
            if value.get(field) is not None:
                setattr(state, field, self._new_slot(b.import_tensor(value[field]), f"{name}/{field}"))
        return state


class _EagerSteps:
    """Eager backends (PyTorch): warm-up decided in Python (the gradient goes as it is); a scheme's
    own rounds run once for all of a step's tensors, at its end, filling the outputs handed to
    Horovod before (`_output_for`)."""

    keeps_tensors = True

    def __init__(self, compressor: PowerSGD):
        self.c = compressor
        self.pending: list = []  # jobs whose scheme runs rounds of its own at the step's end

    def warming_up(self, step) -> bool:
        return step < self.c.cfg.start_step

    def send(self, job: Job):
        return self.c.scheme.send(job)

    def receive(self, job: Job, reduced):
        c = self.c
        c.scheme.receive(job, reduced)
        if c.scheme.has_own_rounds:
            job.out = self._output_for(job)
            self.pending.append(job)
            return job.out
        update = c._update(job)
        c._stage(job, update)
        return c.backend.cast(c.backend.reshape(update.gradient, job.ctx.shape), job.ctx.dtype)

    def end_of_step(self) -> None:
        jobs, self.pending = self.pending, []
        if not jobs:
            return
        c = self.c
        c.scheme.own_rounds(jobs)
        for job in jobs:
            update = c._update(job, out=job.buffer)
            c._stage(job, update)
            if job.buffer is None:  # else the gradient was written into the buffer job.out views
                c.backend.fill(job.out, c.backend.cast(c.backend.reshape(update.gradient, job.ctx.shape),
                                                       job.ctx.dtype))
            job.M = job.left = job.right = job.buffer = None  # release the step's temporaries

    def _output_for(self, job: Job):
        """The tensor Horovod gets back now and `end_of_step` fills: an n×m buffer viewed in the
        gradient's shape, written directly by the product (a separate tensor to copy into where
        the gradient's dtype is not the compute dtype)."""
        b, ctx = self.c.backend, job.ctx
        if ctx.dtype != job.dtype:
            return b.empty(ctx.shape, ctx.dtype, like=job.left)
        job.buffer = self.c._take_spare(job.state)
        if job.buffer is None:
            job.buffer = b.empty(job.state.matrix, ctx.dtype, like=job.left)
        return b.reshape(job.buffer, ctx.shape)

    def abandon(self) -> None:
        self.pending.clear()


class _GraphSteps:
    """Graph backends (TensorFlow inside ``tf.function``): what Horovod all-reduces cannot change
    per step in Python, so warm-up (``start_step``) is chosen inside the graph — one all-reduce of
    a flat tensor whose length differs per step, which Horovod's all-reduce takes — and each tensor
    is completed where it is decompressed, its own rounds included."""

    keeps_tensors = False

    def __init__(self, compressor: PowerSGD):
        self.c = compressor

    def warming_up(self, step) -> bool:
        return False  # decided in the graph

    def _in_warmup(self, job: Job):
        return None if self.c.cfg.start_step == 0 else job.step < self.c.cfg.start_step

    def send(self, job: Job):
        c, b = self.c, self.c.backend
        wire = c.scheme.send(job)
        # warm-up aside, static: Horovod's round (the scheme's own rounds count what they send)
        job.ctx.sent_bytes = sum(t.nbytes for t in c.transfers(job.ctx.shape, job.ctx.dtype)
                                 if t.round == 0)
        warmup = self._in_warmup(job)
        if warmup is None:
            return wire
        return b.cond(warmup, lambda: b.reshape(c.scheme.to_wire(b.cast(job.gradient, job.dtype)), (-1,)),
                      lambda: wire)

    def receive(self, job: Job, reduced):
        c, b = self.c, self.c.backend
        fields = ["gradient", *(["error"] if c.cfg.error_feedback else []), "finite"]
        sides = [side for side in c.scheme.warm_sides if c.cfg.warm_start]

        def flat(update: Update) -> tuple:  # tf.cond's branches return tensors, not None
            return (*(getattr(update, field) for field in fields), *(update.kept[s] for s in sides))

        def compressed():
            c.scheme.receive(job, reduced)
            if c.scheme.has_own_rounds:
                c.scheme.own_rounds([job])
            update = c._update(job)
            finite = b.finite_flag(reduced) if update.finite is None else update.finite
            return flat(update._replace(finite=finite))

        def warm_up():  # the all-reduced gradient; the state as it was
            state = job.state
            return flat(Update(b.reshape(reduced[:numel(job.ctx.shape)], state.matrix),
                               b.read_state(state.error) if c.cfg.error_feedback else None,
                               {side: b.read_state(getattr(state, side)) for side in sides},
                               b.finite_flag(reduced)))

        warmup = self._in_warmup(job)
        values = compressed() if warmup is None else b.cond(warmup, warm_up, compressed)
        named = dict(zip(fields, values))
        update = Update(named["gradient"], named.get("error"),
                        dict(zip(sides, values[len(fields):])), named["finite"])
        # a warm-up step counts whether or not its gradient was finite, as on eager backends
        c._stage(job, update, None if warmup is None else b.where(warmup, job.step + 1, job.step))
        return b.cast(b.reshape(update.gradient, job.ctx.shape), job.ctx.dtype)

    def end_of_step(self) -> None:
        pass

    def abandon(self) -> None:
        pass
