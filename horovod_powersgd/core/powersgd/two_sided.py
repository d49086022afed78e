"""Two-sided single-round PowerSGD (``two_sided=True``): one all-reduce per step carrying both
factors, each multiplied with the *other* side's shared factor of the previous step:

    P̂ ← orthogonalize(P̄ of step t−1),  Q̂ ← orthogonalize(Q̄ of step t−1)   (renewed; seeded at t = 0)
    Pᵀ ← Q̂ᵀ Mᵀ,  Qᵀ ← P̂ᵀ M,  (P̄ᵀ, Q̄ᵀ) ← all-reduce(Pᵀ, Qᵀ)                 one round
    G' ← P̂ Q̄ᵀ + (P̄ − P̂ P̂ᵀ P̄) Q̂ᵀ  =  M̄ − (I − P̂P̂ᵀ) M̄ (I − Q̂Q̂ᵀ)
    E  ← M − (the same with this rank's own P and Q)

G' keeps everything of M̄ that lies in the column space of P̂ *or* the row space of Q̂: the
projection onto both subspaces, rank ≤ 2r, where the alternating scheme keeps one of them per step.
It is linear in M because P̂ and Q̂ are identical on every rank, so one all-reduce of the pair gives
the average of every rank's own approximation. Each side's factor moves half a power iteration per
step, P from Q̂ and Q from P̂: two interleaved warm-started chains, each tracking the dominant
subspace as the alternating scheme's one chain does. It sends classic's r(n+m) numbers per step in
one round, P and Q flat in one tensor.
"""
from __future__ import annotations

from ..wire import Transfer, Wire
from .scheme import OneRound
from .state import Job


class TwoSided(OneRound):
    name = "two_sided"
    wire = Wire("32·r·(n+m)/(n·m)", biased=True, error_feedback=True,
                note="one all-reduce per step: P = MQ̂ and Q = MᵀP̂ together, rank ≤ 2r")

    def transfers(self, n, m, rank, number):
        return [Transfer("allreduce", rank * (n + m) * number, 0, "P and Q")]

    def send(self, job: Job):
        b, f = self.backend, self.factors
        P_hat, Q_hat = f.orthonormal(f.shared(job, "p")), f.orthonormal(f.shared(job, "q"))
        P, Q = b.matmul(Q_hat, job.M, transpose_b=True), b.matmul(P_hat, job.M)
        job.left, job.right = self.approximation(P_hat, Q_hat, P, Q)
        self.keep_local_error(job)
        return b.concat([b.reshape(self.to_wire(P), (-1,)), b.reshape(self.to_wire(Q), (-1,))])

    def receive(self, job: Job, reduced) -> None:
        r, (n, m) = job.rank, job.state.matrix
        P_bar, Q_bar = self.reduced_factor(reduced, 0, r, n), self.reduced_factor(reduced, r * n, r, m)
        # this rank's left is [P̂; P_off] and right [Q; Q̂]: the shared factors are their first and
        # last r rows
        job.left, job.right = self.approximation(job.left[:r], job.right[r:], P_bar, Q_bar)
        if self.cfg.warm_start:
            job.kept = {"p": P_bar, "q": Q_bar}

    def approximation(self, P_hat, Q_hat, P, Q):
        """The rows (2r×n, 2r×m) of P̂ Qᵀ + (P − P̂ P̂ᵀ P) Q̂ᵀ, for P = M Q̂ and Q = Mᵀ P̂ — all
        transposed, as the factors are kept. That is M − (I − P̂P̂ᵀ) M (I − Q̂Q̂ᵀ): Qᵀ carries
        M's part in P̂'s column space, and P with that part taken out (P̂ᵀ P = P̂ᵀ M Q̂ would be
        counted twice) the rest of its part in Q̂'s row space."""
        b = self.backend
        P_off = P - b.matmul(b.matmul(P, P_hat, transpose_b=True), P_hat)  # not in place: P is kept
        return b.concat([P_hat, P_off]), b.concat([Q, Q_hat])
