"""What every compressor shares: Horovod's interface, per-tensor state, step bookkeeping, stats.

Horovod calls ``compress(tensor) -> (tensor, ctx)`` before its all-reduce and ``decompress(tensor,
ctx)`` on the result. Which gradient ``tensor`` is comes from the framework adapter (`identify`,
which finds Horovod's optimizer) or, for the core classes on their own, from the caller
(``compress(tensor, identity)``). Subclasses implement the algorithm in `_compress` /
`_decompress` and, when they need collectives of their own after Horovod's, `_run_own_rounds`,
which runs once the last tensor of a step has been decompressed (deferred backends) — the place
where a second round is sent and waited for.

Reliability rules every compressor follows (the user guide's troubleshooting page lists what the
user sees of them):

* Agreement: at the first step, and again after every `load_state_dict`, the ranks prove with one
  tiny collective that their compressors have the same class and configuration (`agreement`).
* Non-finite steps: a step whose *reduced* result is not finite (a rank's gradient overflowed) leaves
  every piece of state untouched — error buffers, momentum, warm starts — and hands the non-finite
  gradient on, so that a loss scaler skips the step. The decision is made on reduced values only, so
  every rank makes it identically: compressors must make what Horovod reduces non-finite whenever any
  rank's input is (`poison`). State updates are therefore *staged* (`_stage_write`) and committed at
  the end of the step (`_commit_step`): graph backends as ``where(step finite, new, old)``, ops
  without a host round trip; eager backends after one host decision per step, by adopting the new
  values (no pass over any buffer) or keeping the old.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List

import numpy as np

from .agreement import check_agreement
from .backend import FLOAT_DTYPES, Backend, TensorIdentity, itemsize
from .shapes import numel
from .stats import CompressionStats
from .wire import Transfer, raw


@dataclasses.dataclass
class Ctx:
    """What `compress` hands `decompress` through Horovod for one tensor."""

    identity: TensorIdentity
    shape: tuple
    dtype: str
    compressed: bool  # False: the tensor went over the wire as it is
    payload: Any = None
    sent_bytes: Any = None  # bytes put on the wire, where the wire tensor's shape is not static


class Compressor:
    """Base class: Horovod's Compression interface over a `Backend`.

    Instances are stateful (error buffers, warm starts, counters, keyed by the rank-consistent
    parameter name) and hashable by identity, which TensorFlow's Horovod needs.
    """

    def __init__(self, backend: Backend):
        self.backend = backend
        self._tensors: Dict[str, Any] = {}
        self._in_flight: set = set()
        self._stats = CompressionStats()
        self._agreed = False  # ranks proved to agree on class and config (re-armed by a restore)
        self._restored_names: set | None = None  # tensor names of the last load_state_dict, unclaimed
        self._staged: list = []  # (slot, new value, value if not finite or None) for the step's end
        self._guarded: list = []  # eager: outputs to poison in place at the step's end if it was not
        self._step_finite: list = []  # one boolean scalar per reduced tensor of the current step
        self._loss_scale = None  # the loss scale the buffers are in (None: never given)
        self._scale_reader = None  # `follow_loss_scale`'s source of each step's scale
        self._buffer_scales: Dict[str, Any] = {}  # graph backends following a scale: per tensor
        self._warned_loss_scale = False

    @property
    def stats(self) -> CompressionStats:
        """Bytes saved and time spent (see `CompressionStats`)."""
        return self._stats

    # ------------------------------------------------------------------ what goes on the wire
    def transfers(self, shape, dtype: str = "float32") -> List[Transfer]:
        """What this rank hands to collectives per step for one gradient of ``shape`` and
        ``dtype`` (after any warm-up): which collective, how many bytes, in which round. The one
        description of a compressor's traffic; `wire_bytes`, the advisor and the README's table
        derive from it (`horovod_powersgd.core.wire`). Depends on the configuration alone. A
        gradient with no elements goes as it is (`compress`); every other is `_transfers`."""
        if numel(shape) == 0:
            return raw(shape, dtype)
        return self._transfers(shape, dtype)

    def _transfers(self, shape, dtype: str) -> List[Transfer]:
        """`transfers` of a gradient with at least one element: what the subclass sends."""
        raise NotImplementedError

    def wire_bytes(self, shape, dtype: str = "float32") -> int:
        """Bytes this rank sends per step for one gradient of ``shape`` (all its `transfers`)."""
        return sum(t.nbytes for t in self.transfers(shape, dtype))

    # ------------------------------------------------------------------ Horovod's interface
    def compress(self, tensor, identity: TensorIdentity | None = None):
        """Compress a gradient; returns (tensor for Horovod's collective, ctx). ``identity`` says
        which gradient it is; None asks `identify` (what Horovod's optimizers get)."""
        start = self.backend.clock()
        if identity is None:
            identity = self.identify(tensor)
        dtype = self.backend.dtype_name(tensor)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{type(self).__name__}: gradient {identity.name!r} has dtype {dtype}; "
                            f"only floating-point gradients can be compressed")
        if not self._agreed:
            self._agree(identity, tensor)
        if identity.name in self._in_flight:
            raise RuntimeError(
                f"{type(self).__name__}: gradient {identity.name!r} was compressed again before the "
                f"previous result was decompressed (a step was abandoned halfway, or two optimizers "
                f"share one compressor object); use one compressor per optimizer")
        if not self._in_flight:
            self._stats.begin_step()
            self._read_loss_scale()
        self._in_flight.add(identity.name)
        shape = tuple(self.backend.shape(tensor))
        if numel(shape) == 0:
            # nothing to compress (a placeholder parameter, a layer of width 0): it goes as it is,
            # and no codec meets a mean over 0 elements or k ≥ 1 indices out of 0
            wire, ctx = tensor, Ctx(identity, shape, dtype, compressed=False)
        else:
            wire, ctx = self._compress(tensor, Ctx(identity, shape, dtype, compressed=True))
        sent = self._nbytes(wire) if ctx.sent_bytes is None else ctx.sent_bytes
        self._stats.add(uncompressed=self._nbytes(tensor), sent=sent,
                       compressed_tensor=ctx.compressed)
        self._stats.compress_seconds += self.backend.clock() - start
        return wire, ctx

    def decompress(self, tensor, ctx):
        """Turn Horovod's reduced tensor back into a gradient of the original shape and dtype."""
        if ctx is None:  # Horovod passes sparse gradients through without compressing them
            return tensor
        start, waited = self.backend.clock(), self._stats.wait_seconds
        finite = self.backend.finite_flag(tensor)  # reduced: the same on every rank
        self._step_finite.append(finite)
        out = self._guard_output(self._decompress(tensor, ctx), finite) if ctx.compressed else tensor
        self._in_flight.discard(ctx.identity.name)
        step_ends = not self._in_flight
        if step_ends:
            self._run_own_rounds()
            self._commit_step()
        # the compressor's own work, end-of-step work included; time blocked on its own
        # collectives is communication, counted in wait_seconds instead
        self._stats.decompress_seconds += (self.backend.clock() - start
                                           - (self._stats.wait_seconds - waited))
        if step_ends:
            self._stats.end_step()
        return out

    # ------------------------------------------------------------------ for the framework adapters
    def identify(self, tensor) -> TensorIdentity:
        """Which gradient ``tensor`` is (a rank-consistent name) and how Horovod reduces it. The
        framework adapters (``horovod_powersgd.torch``, ``.tensorflow``) find it from Horovod's
        optimizer; a core class on its own knows no optimizer and needs ``compress(tensor, identity)``."""
        raise TypeError(f"{type(self).__name__}: which gradient is this? Pass compress(tensor, "
                        f"identity), or use the class from horovod_powersgd.torch or .tensorflow")

    def _known_names(self):
        """Names of every parameter the calling optimizer reduces (to match restored state
        against), or None where they are unknown (the adapters ask Horovod's optimizer)."""
        return None

    def _new_slot(self, value, key: str):
        """A backend slot for per-tensor state holding ``value``; ``key`` (``<tensor name>/<field>``)
        is stable and rank-independent. Every piece of state is created here: the TensorFlow adapter
        extends it to track the variable for ``tf.train.Checkpoint``."""
        return self.backend.new_state(value, key=key)

    # ------------------------------------------------------------------ for subclasses
    def _compress(self, tensor, ctx: Ctx):
        raise NotImplementedError

    def _decompress(self, tensor, ctx: Ctx):
        raise NotImplementedError

    def _run_own_rounds(self) -> None:
        """The compressor's own collective rounds after Horovod's: runs once the last in-flight
        tensor of a step was decompressed, before the step's state is committed."""

    def _guard_output(self, out, finite):
        """The output handed to Horovod, given whether the reduced input was finite. Compressors
        whose decoding can hide an overflow (a majority vote, a scatter) return `_poisoned_output`;
        those that fill their outputs later (deferred PowerSGD) guard them when filling."""
        return out

    def _poisoned_output(self, out, finite):
        """``out``, all NaN unless ``finite``. Graph backends decide per tensor with `poisoned`
        (one ``where`` pass); eager backends hand ``out`` on as it is and fill it with NaN in place
        at the step's end, once the step's one host decision says it was not finite: a finite step
        — nearly every step — pays nothing."""
        if self.backend.deferred:
            self._guarded.append(out)
            return out
        return poisoned(self.backend, out, finite)

    # ------------------------------------------------------------------ non-finite steps
    def _stage_write(self, slot, value, otherwise=None) -> None:
        """Write ``value`` into ``slot`` at the end of the step, if the step's reduced results were
        all finite; else ``otherwise`` where given (the slot keeps its value where not)."""
        self._staged.append((slot, value, otherwise))

    def _commit_step(self):
        """Apply the staged writes if the step was finite and count a non-finite step; returns
        whether it was (None for a step that reduced nothing), so subclasses with state of their
        own reuse the one decision.

        Graph backends write ``where(all finite, new, old)``, ops in the graph (the result is a
        boolean tensor). Eager backends decide once per step on the host (on a GPU, one
        synchronization per step; the result is a bool) and then either adopt the new values as
        they are — no pass over any buffer — or leave the slots alone and poison the step's
        guarded outputs in place."""
        b = self.backend
        flags, self._step_finite = self._step_finite, []
        staged, self._staged = self._staged, []
        guarded, self._guarded = self._guarded, []
        if not flags:
            return None
        finite = b.all_true(flags)
        if b.deferred:
            finite = bool(finite)
            for slot, value, otherwise in staged:
                if finite or otherwise is not None:
                    b.write_state(slot, value if finite else otherwise)
            for out in () if finite else guarded:
                b.fill(out, out * float("nan"))
        else:
            for slot, value, otherwise in staged:
                old = b.to_device_of(b.read_state(slot), value) if otherwise is None else otherwise
                b.write_state(slot, b.where(finite, value, old))
        self._count_nonfinite(finite)
        return finite

    def _count_nonfinite(self, finite) -> None:
        """Count a step whose reduced result was not finite (graph backends override: a variable)."""
        if not bool(finite):
            self._stats.nonfinite_steps += 1
            self._warn_unknown_loss_scale()

    def _warn_unknown_loss_scale(self) -> None:
        """Once: a non-finite step while no loss scale was ever given. Under a loss scaler that
        means an overflow, after which the scale changes, and buffers in gradient units would then
        be added to gradients of another scale."""
        if self._scaled_slots() and self._loss_scale is None and not self._warned_loss_scale:
            self._warned_loss_scale = True
            warnings.warn(
                f"{type(self).__name__}: a step's reduced gradient was not finite (skipped, state "
                f"kept), and this compressor was never told the loss scale. If a loss scaler (AMP) "
                f"is at work, its buffers must follow the scale: call "
                f"compression.follow_loss_scale(scaler) once before training, with the GradScaler "
                f"or Keras LossScaleOptimizer (or set_loss_scale(scale) before every step).",
                RuntimeWarning,
                stacklevel=3)

    def _scaled_slots(self):
        """Slots holding values in units of the gradient (error buffers, momentum): what a change
        of loss scale must rescale. Warm-start factors are scale-free (P̂ is orthonormalized)."""
        return [slot for state in self._tensors.values() for slot in self._scaled_slots_of(state)]

    def _scaled_slots_of(self, state):
        """The slots of one tensor's state that `_scaled_slots` lists (existing ones only)."""
        return ()

    def rescale_state(self, factor: float) -> None:
        """Multiply every state buffer in gradient units by ``factor``.

        With a loss scaler (AMP) the compressor sees *scaled* gradients g·s, so its error buffers
        hold scaled values. When the scaler changes s to s', call ``rescale_state(s' / s)`` before
        the next step, or the buffers would be added to gradients of a different scale (a halved
        scale after an overflow would make the old errors count double). `set_loss_scale` does the
        bookkeeping for you."""
        if self._in_flight:
            raise RuntimeError("rescale_state() called in the middle of a step (tensors in flight)")
        self._multiply_slots(self._scaled_slots(), factor)
        # the buffers' units moved with them (0, unknown, stays 0)
        self._multiply_slots(self._buffer_scales.values(), factor)

    def _multiply_slots(self, slots, factor: float) -> None:
        b = self.backend
        for slot in slots:
            b.write_state(slot, b.read_state(slot) * float(factor))

    def set_loss_scale(self, scale: float) -> None:
        """Tell the compressor the loss scale that the *next* step's gradients are multiplied by;
        buffers are rescaled when it changed since the last call. The first call only records it,
        so it must come before the first step (then before or after every step, as long as no step
        runs in between a change of scale and the call). `follow_loss_scale` makes the calls."""
        scale = float(scale)
        if self._loss_scale is not None and scale != self._loss_scale:
            self.rescale_state(scale / self._loss_scale)
        self._loss_scale = scale

    def follow_loss_scale(self, scale):
        """Read the loss scale of every step from ``scale``, so the buffers are always in the units
        of the gradients they are added to, for any schedule of the scaler (growth, backoff after
        an overflow, ``update(new_scale=)``). ``scale`` is PyTorch's ``GradScaler`` (its
        ``get_scale()``), Keras' ``LossScaleOptimizer`` (its ``loss_scale``), or a zero-argument
        callable returning the scale. Returns the compressor.

        Eager backends (PyTorch) read it at each step's first gradient, before any buffer is read,
        and call `set_loss_scale` with it; on a GPU, ``GradScaler.get_scale()`` reads the scale to
        the host: one synchronization per step.

        Graph backends (TensorFlow, in or out of ``tf.function``) read it inside the graph, once per
        gradient, so the callable must return a tensor or variable, not a Python number, which a
        trace would freeze. Each tensor remembers the scale s_b its buffers are in; before they are
        read they are multiplied by s/s_b, s the scale of this step's gradient (`_into_step_units`)."""
        if hasattr(scale, "get_scale"):
            reader = scale.get_scale
        elif hasattr(scale, "loss_scale") and not callable(scale):
            reader = lambda: scale.loss_scale  # noqa: E731 (the optimizer's variable, read per step)
        else:
            reader = scale
        if not callable(reader):
            raise TypeError(f"{type(self).__name__}.follow_loss_scale: expected a GradScaler, a "
                            f"LossScaleOptimizer or a callable returning the loss scale, got "
                            f"{type(scale).__name__}")
        self._scale_reader = reader
        return self

    def _read_loss_scale(self) -> None:
        """At a step's first gradient: the scale it was computed in (`follow_loss_scale`). Graph
        backends read it per tensor instead (`_into_step_units`)."""
        if self._scale_reader is not None and self.backend.deferred:
            self.set_loss_scale(self._scale_reader())

    def _follows_in_graph(self) -> bool:
        return self._scale_reader is not None and not self.backend.deferred

    def _into_step_units(self, name: str, slots) -> None:
        """Graph backends following a loss scale: multiply tensor ``name``'s buffers in gradient
        units (``slots``, just before they are read) by s/s_b and record s as their scale, where s
        is the scale of this step's gradients, read in the graph, and s_b the scale they were in
        (0: unknown, left as they are). A change of units, not of state, so it is not staged: a
        step that turns out non-finite keeps the buffers, and they stay right in s's units."""
        if not self._follows_in_graph() or not slots:
            return
        b = self.backend
        now = self._scale_reader()
        if isinstance(now, (int, float)):
            raise TypeError(f"{type(self).__name__}.follow_loss_scale: the callable returned the "
                            f"Python number {now!r}, which a traced graph would keep for ever; "
                            f"return a tensor or variable (or pass the LossScaleOptimizer)")
        now = b.cast(now, "float32")
        held = self._buffer_scales.get(name)
        if held is None:
            held = self._buffer_scales[name] = self._new_slot(
                np.float32(self._loss_scale or 0.0), f"{name}/scale")
        before = b.read_state(held)
        ratio = b.where(before > 0, now / before, 1.0)
        for slot in slots:
            value = b.read_state(slot)
            b.write_state(slot, value * b.cast(ratio, b.dtype_name(value)))
        b.write_state(held, now)

    def _settle_buffer_scales(self) -> None:
        """Graph backends following a loss scale, between steps: every tensor's buffers into the
        units of the scale the next step will use, which becomes ``loss_scale`` of `state_dict` —
        one scale for the whole state, as eager backends keep it."""
        if not self._follows_in_graph() or not self._buffer_scales:
            return
        b = self.backend
        target = float(self._scale_reader())
        for name, held in self._buffer_scales.items():
            before = float(b.read_state(held))
            state = self._tensors.get(name)
            if before > 0 and before != target and state is not None:
                self._multiply_slots(self._scaled_slots_of(state), target / before)
            b.write_state(held, np.float32(target))
        self._loss_scale = target

    # ------------------------------------------------------------------ agreement across ranks
    def _agree(self, identity: TensorIdentity, like) -> None:
        """One collective proving every rank built this compressor identically (and restored state
        that matches its parameters); see `agreement`. Raises on every rank otherwise."""
        unmatched = self._unmatched_restored_names()
        check_agreement(self, identity, like, extra={"restored state matching no parameter": unmatched})
        if unmatched:
            raise ValueError(
                f"{type(self).__name__}: the restored state has entries for {unmatched}, which match "
                f"no parameter of this optimizer (its parameters: {sorted(self._known_names() or [])}). "
                f"The parameter names changed since the state was saved; refusing to start those "
                f"tensors fresh silently. Rename the entries of state_dict['tensors'] to the new names.")
        self._agreed = True
        self._restored_names = None

    def _unmatched_restored_names(self) -> list:
        if not self._restored_names:
            return []
        known = self._known_names()
        return [] if known is None else sorted(self._restored_names - set(known))

    def _nbytes(self, tensor) -> int:
        return numel(self.backend.shape(tensor)) * itemsize(self.backend.dtype_name(tensor))

    def _sent(self, tensor) -> None:
        """Account for a tensor this compressor puts on the wire itself (second rounds)."""
        self._stats.add(sent=self._nbytes(tensor))

    def _wait(self, handle, group: bool = False):
        """The result of a collective this compressor started itself (`Backend.wait`; with
        ``group``, `Backend.wait_group`'s list). The time blocked is communication, counted in
        ``stats.wait_seconds`` and not as the compressor's own work."""
        start = self.backend.clock()
        result = self.backend.wait_group(handle) if group else self.backend.wait(handle)
        self._stats.wait_seconds += self.backend.clock() - start
        return result

    # ------------------------------------------------------------------ checkpointing
    def config(self) -> dict:
        """The hyper-parameters; restored state must come from a compressor with the same ones."""
        return {}

    def state_dict(self) -> dict:
        """Per-tensor state of *this rank* (error buffers differ between ranks: save one per rank)."""
        if self._in_flight:
            raise RuntimeError("state_dict() called in the middle of a step (tensors in flight)")
        self._settle_buffer_scales()
        return {"compressor": type(self).__name__, "config": self.config(),
                "loss_scale": self._loss_scale,  # shared by all ranks
                "tensors": {name: self._export_tensor_state(state)
                            for name, state in sorted(self._tensors.items())}}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("compressor") != type(self).__name__:
            raise ValueError(f"state was saved by {state_dict.get('compressor')!r}, "
                             f"not by {type(self).__name__}")
        if state_dict.get("config") != self.config():
            raise ValueError(f"state was saved with config {state_dict.get('config')}, this "
                             f"compressor has {self.config()}")
        self._tensors = {name: self._import_tensor_state(name, value)
                         for name, value in state_dict["tensors"].items()}
        if state_dict.get("loss_scale") is not None:  # absent from state saved without one
            self._loss_scale = float(state_dict["loss_scale"])
        for held in self._buffer_scales.values():  # the restored buffers are in one scale
            self.backend.write_state(held, np.float32(self._loss_scale or 0.0))
        self._abandon_step()
        self._restored_names = set(self._tensors)
        self._agreed = False  # another rank may have restored something else: check again

    def _abandon_step(self) -> None:
        """Forget a step cut short (a restore after a failed collective, an elastic reset)."""
        self._in_flight.clear()
        self._staged.clear()
        self._guarded.clear()
        self._step_finite.clear()

    def synchronized_state(self, root: dict) -> dict:
        """This rank's state after an elastic reset (workers joined or left), from rank 0's
        `state_dict` ``root``. The rule: everything the ranks share — configuration, step counters,
        warm-start factors — is rank 0's; what belongs to this process — error buffers, momentum,
        the gradient mass *its* compression has not yet delivered — is kept where this process has it
        and zero for a process that just joined (or a tensor it never saw)."""
        own = self.state_dict()["tensors"] if self._tensors else {}
        return {**root, "tensors": {name: self._merge_tensor_state(state, own.get(name))
                                    for name, state in root["tensors"].items()}}

    def _merge_tensor_state(self, root_state: dict, own_state) -> dict:
        """One tensor's `synchronized_state` (default: nothing per process)."""
        return root_state

    def _export_tensor_state(self, state) -> dict:
        raise NotImplementedError

    def _import_tensor_state(self, name: str, value: dict):
        raise NotImplementedError


def poisoned(backend: Backend, out, finite):
    """``out`` where ``finite``, else all NaN: the gradient a loss scaler must see as overflowed."""
    return backend.where(finite, out, out * float("nan"))


def poison(backend: Backend, local):
    """0 where every element of ``local`` is finite, NaN otherwise (a scalar, without a host round
    trip). Added to what Horovod reduces, it makes the reduced result non-finite on every rank as
    soon as one rank's input is — the evidence every rank's non-finite decision is made on."""
    return backend.where(backend.finite_flag(local), 0.0, float("nan"))  # one pass, no temporary


def export_value(backend: Backend, slot):
    """A slot's value in checkpoint form (None stays None)."""
    value = backend.read_state(slot)
    return None if value is None else backend.export_tensor(value)
