"""Per-tensor state for the baseline compressors: a few named buffers and a step counter.

Error buffers, momentum and counters are keyed by the rank-consistent parameter name, created zero
at a tensor's first compression (so graph backends can make them variables), read and written only
through `Backend.read_state` / `write_state`, and exported exactly for checkpoints.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from typing import Dict, Tuple

from .backend import compute_dtype
from .compressor import Compressor, Ctx, export_value
from .shapes import numel


@dataclasses.dataclass
class TensorState:
    shape: tuple
    slots: Dict[str, object]  # field -> backend slot ("step" holds an integer counter)


class StatefulCompressor(Compressor):
    """Base for compressors whose per-tensor state is flat buffers of the gradient's size.

    Subclasses name their buffers in `buffers` (each d elements, the gradient's compute dtype, zero
    at first) and set `counts_steps` when they draw fresh shared randomness every step. Buffers are
    written with `_stage_write` (kept as they were by a non-finite step); counters advance always (the
    same on every rank either way).
    """

    buffers: Tuple[str, ...] = ()
    counts_steps: bool = False

    def _slots(self, ctx: Ctx, like) -> Dict[str, object]:
        name = ctx.identity.name
        state = self._tensors.get(name)
        if state is None:
            b = self.backend
            slots = {field: self._new_slot(b.zeros((numel(ctx.shape),), compute_dtype(ctx.dtype),
                                                   like=like), f"{name}/{field}")
                     for field in self.buffers}
            if self.counts_steps:
                slots["step"] = self._new_slot(0, f"{name}/step")
            state = self._tensors[name] = TensorState(ctx.shape, slots)
        elif state.shape != ctx.shape:
            raise ValueError(f"{type(self).__name__}: gradient {name!r} changed shape from "
                             f"{state.shape} to {ctx.shape}; state is keyed by parameter name")
        self._into_step_units(name, self._scaled_slots_of(state))
        return state.slots

    def _read(self, slots, field, like):
        return self.backend.to_device_of(self.backend.read_state(slots[field]), like)

    def _next_step(self, slots):
        """This tensor's step number (0 first); advances the counter."""
        step = self.backend.read_state(slots["step"])
        self.backend.write_state(slots["step"], step + 1)
        return step

    def _guard_output(self, out, finite):
        return self._poisoned_output(out, finite)  # votes and scatters can hide an overflow

    def _scaled_slots_of(self, state: TensorState):
        return [state.slots[field] for field in self.buffers]  # error buffers, momentum: gradient units

    # ------------------------------------------------------------------ checkpointing
    def _export_tensor_state(self, state: TensorState) -> dict:
        b = self.backend
        return {"shape": list(state.shape),
                "slots": {field: int(b.read_state(slot)) if field == "step" else export_value(b, slot)
                          for field, slot in sorted(state.slots.items())}}

    def _merge_tensor_state(self, root_state: dict, own_state) -> dict:
        slots = dict(root_state["slots"])
        for field in self.buffers:  # this process's own buffers; zero where it has none
            mine = None if own_state is None else own_state["slots"].get(field)
            slots[field] = mine if mine is not None else np.zeros_like(np.asarray(slots[field]))
        return {**root_state, "slots": slots}

    def _import_tensor_state(self, name: str, value: dict) -> TensorState:
        b = self.backend
        expected = set(self.buffers) | ({"step"} if self.counts_steps else set())
        if set(value["slots"]) != expected:
            raise ValueError(f"{type(self).__name__}: saved state of {name!r} has fields "
                             f"{sorted(value['slots'])}, expected {sorted(expected)}")
        slots = {field: self._new_slot(int(saved) if field == "step" else b.import_tensor(saved),
                                       f"{name}/{field}")
                 for field, saved in value["slots"].items()}
        return TensorState(tuple(value["shape"]), slots)


def flat(backend, tensor, dtype: str):
    """The gradient as a 1-D tensor of its compute dtype."""
    return backend.reshape(backend.cast(tensor, dtype), (numel(backend.shape(tensor)),))


def restore(backend, flat_result, ctx: Ctx):
    """A flat result back in the gradient's shape and dtype."""
    return backend.cast(backend.reshape(flat_result, ctx.shape), ctx.dtype)
