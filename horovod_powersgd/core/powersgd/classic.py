"""Classic PowerSGD (Vogels et al. 2019, Algorithms 1 and 2): k power iterations, two all-reduces each.

With M = G + E (this rank's gradient plus its error) and the factors kept transposed:

    Pᵀ ← Qᵀ Mᵀ                      Q: last step's Q̄, renewed (warm start); the seeded Q at first
    P̄ᵀ ← all-reduce(Pᵀ)             round 1 — Horovod's own, fused with every other tensor
    P̂ᵀ ← orthogonalize(P̄ᵀ)
    Qᵀ ← P̂ᵀ M
    Q̄ᵀ ← all-reduce(Qᵀ)             round 2 — ours, one grouped all-reduce for all layers
    G' ← P̂ Q̄ᵀ                       what the optimizer sees (identical on every rank)
    E  ← M − P̂ Q̄ᵀ                   local M minus the *averaged* approximation

k > 1 repeats the P and Q rounds from the reduced Q̄. k·r(n+m) numbers per step in 2k rounds.
"""
from __future__ import annotations

from typing import List

from ..backend import ReduceOp, compute_dtype
from ..wire import Transfer, Wire
from .scheme import Scheme
from .state import Job


class Classic(Scheme):
    name = "classic"
    wire = Wire("32·k·r·(n+m)/(n·m)", biased=True, error_feedback=True,
                note="k power iterations, each one P and one Q all-reduce; warm start")
    warm_sides = ("q",)
    has_own_rounds = True

    def transfers(self, n, m, rank, number):
        """Iteration i = 0 … k−1 sends Pᵀ (r·n) in round 2i and Qᵀ (r·m) in round 2i + 1; round 0 is
        Horovod's own all-reduce, the others ours (`_fused_allreduce`)."""
        return [Transfer("allreduce", rank * size * number, 2 * i + j, factor)
                for i in range(self.cfg.power_iterations)
                for j, (factor, size) in enumerate((("P", n), ("Q", m)))]

    def send(self, job: Job):
        Q = self.factors.shared(job, "q")
        return self.to_wire(self.backend.matmul(Q, job.M, transpose_b=True))

    def receive(self, job: Job, reduced) -> None:
        """P̂ from the reduced P̄, and this rank's Q = P̂ᵀ M for round 2 (`own_rounds`)."""
        b = self.backend
        # reshaped: on graph backends the wire's shape is only known per step (warm-up)
        job.left = self.factors.orthonormal(self.reduced_factor(reduced, 0, job.rank, job.state.matrix[0]))
        job.right = self.to_wire(b.matmul(job.left, job.M))

    def own_rounds(self, jobs: List[Job]) -> None:
        """Round 2 (Q̄) for all ``jobs`` as one fused round, then k − 1 further P and Q rounds.

        Sent as one grouped all-reduce: submitted one by one, as layers are decompressed, they
        would spread over several of Horovod's cycles (it fuses what every rank submitted by the
        same cycle), each a round with its own latency."""
        b = self.backend
        jobs = sorted(jobs, key=lambda job: job.ctx.identity.name)  # the same order on every rank
        for job, Q in zip(jobs, self._fused_allreduce(jobs, [job.right for job in jobs], "Q0")):
            job.right = Q
        for iteration in range(1, self.cfg.power_iterations):
            renewed = [self.factors.renewed(job.state, "q", job.right, job.dtype) for job in jobs]
            P = self._fused_allreduce(jobs, [self.to_wire(b.matmul(Q, job.M, transpose_b=True))
                                             for job, Q in zip(jobs, renewed)], f"P{iteration}")
            for job, P_reduced in zip(jobs, P):
                job.left = self.factors.orthonormal(P_reduced)
            Q = self._fused_allreduce(jobs, [self.to_wire(b.matmul(job.left, job.M)) for job in jobs],
                                      f"Q{iteration}")
            for job, Q_reduced in zip(jobs, Q):
                job.right = Q_reduced
        for job in jobs:
            job.finite = b.finite_flag(job.right)
            if self.cfg.warm_start:
                job.kept = {"q": job.right}

    def error(self, job: Job, gradient):
        """E ← M − P̂ Q̄ᵀ against the *average*: with ``op`` Average that is M minus the gradient
        just written (one pass over M, the gradient still in the cache); with Sum, Q̄/N."""
        b, identity = self.backend, job.ctx.identity
        if identity.op is ReduceOp.AVERAGE:
            return b.sub_(job.M, gradient)
        return b.sub_outer_(job.M, job.left, job.right / identity.group_size)

    def _fused_allreduce(self, jobs: List[Job], tensors: list, round_name: str) -> list:
        """All-reduce one tensor per job as a single fused round (one grouped all-reduce per
        reduction), wait for it, and return the results in the compute dtype, in job order."""
        b, compressor = self.backend, self.compressor
        groups = {}
        for index, job in enumerate(jobs):
            identity = job.ctx.identity
            groups.setdefault((identity.op, id(identity.process_set)), []).append(index)
        handles = []
        for indices in groups.values():
            first = jobs[indices[0]].ctx.identity
            group = [tensors[i] for i in indices]
            for tensor in group:
                compressor._sent(tensor)
            # rank-consistent: jobs are sorted by name, so the group and its name agree on all ranks
            name = f"powersgd.{round_name}.{len(group)}.{first.name}"
            handles.append((indices, b.grouped_allreduce_async(group, name, first)))
        results = [None] * len(jobs)
        for indices, handle in handles:
            for i, value in zip(indices, compressor._wait(handle, group=True)):
                results[i] = b.cast(value, compute_dtype(jobs[i].ctx.dtype))
        return results
