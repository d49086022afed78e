"""What a PowerSGD scheme is: the contract between `PowerSGD` and one way of compressing M.

`PowerSGD` (``compressor.py``) does everything the schemes share — plans each tensor, forms
M = G + E, decides warm-up, creates the warm-start slots, stages and commits the state, checkpoints
— and hands each compressed tensor's `Job` to its scheme in two (or three) calls:

``send(job) -> wire``
    Phase 1 (in ``compress``): what Horovod all-reduces for this tensor, computed from ``job.M`` and
    the shared factors (`SharedFactors.shared`). A single-round scheme also sets ``job.left``,
    ``job.right`` (this rank's own approximation leftᵀ·right) and ``job.error``.
``receive(job, reduced) -> None``
    Phase 2 (in ``decompress``): from Horovod's reduced tensor, set ``job.left`` and ``job.right`` so
    that leftᵀ·right is the gradient every rank gets, and ``job.kept`` (side -> the reduced factor
    the next step continues from, for every side in `warm_sides`, when warm-starting).
``own_rounds(jobs) -> None``
    Only where `has_own_rounds`: collectives of the scheme's own after Horovod's, for all of a
    step's jobs at once (eager backends: once the step's last tensor was decompressed; graph
    backends: per tensor, right after ``receive``); completes what ``receive`` began and sets
    ``job.finite`` to whether what it reduced was finite.

and `error(job, gradient)`, the next error buffer once the gradient is known. A scheme also states
its traffic (`transfers`, `wire`) — a function of the configuration and the shape alone — and the
schemes never ask which backend runs them: every branch is `Backend.cond`, which eager backends
evaluate in Python and graph backends build into the graph.
"""
from __future__ import annotations

from typing import List

from ..wire import Transfer, Wire
from .state import Job


class Scheme:
    """Base of the PowerSGD schemes. A new scheme sets `name`, `wire`, `warm_sides` and implements
    `transfers`, `send` and `receive` (and `own_rounds` with `has_own_rounds` if it runs collectives
    of its own); `PowerSGD` does the rest."""

    name: str = ""
    wire: Wire  # the per-element cost formula documented for the scheme
    warm_sides: tuple = ("q",)  # the factors a warm-started step continues from (state slots)
    zero_sides: tuple = ()  # of those, the ones whose slot starts at zero (written before read)
    has_own_rounds: bool = False

    def __init__(self, compressor):
        self.compressor = compressor
        self.backend, self.cfg, self.factors = compressor.backend, compressor.cfg, compressor.factors

    def transfers(self, n: int, m: int, rank: int, number: int) -> List[Transfer]:
        """What one compressed n×m matrix hands to collectives per step (``number``: bytes per
        number on the wire)."""
        raise NotImplementedError

    def send(self, job: Job):
        raise NotImplementedError

    def receive(self, job: Job, reduced) -> None:
        raise NotImplementedError

    def own_rounds(self, jobs: List[Job]) -> None:
        raise NotImplementedError

    def error(self, job: Job, gradient):
        """The next error buffer: M minus this rank's own approximation, formed while sending."""
        return job.error

    # ------------------------------------------------------------------ helpers for schemes
    def to_wire(self, tensor):
        """``tensor`` in ``wire_dtype`` (as it is without one)."""
        return tensor if self.cfg.wire_dtype is None else self.backend.cast(tensor, self.cfg.wire_dtype)

    def reduced_factor(self, reduced, offset: int, rows: int, size: int):
        """The rows×size factor stored flat in ``reduced`` from ``offset`` on."""
        return self.backend.reshape(reduced[offset:offset + rows * size], (rows, size))


class OneRound(Scheme):
    """Base of the single-round schemes: the factor(s) sent are M times factors every rank shares,
    so each rank's approximation is linear in its M and all-reducing what it sends averages the
    ranks' approximations exactly (see the schemes' docstrings); each rank's error keeps what *its*
    approximation missed, so Σ_i E_i = Σ_i M_i − N·G' as in the classic scheme."""

    warm_sides = ("p", "q")

    def keep_local_error(self, job: Job) -> None:
        """E ← M − leftᵀ·right, in place while M is still in the cache from the products (the step's
        end adopts it if the step was finite; the old error buffer is untouched until then)."""
        if self.cfg.error_feedback:
            job.error = self.backend.sub_outer_(job.M, job.left, job.right)
