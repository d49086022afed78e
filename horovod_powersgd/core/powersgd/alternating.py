"""Alternating single-round PowerSGD (``alternate=True``): one all-reduce per step, the left and right
multiplications of the power iteration on alternate steps (as in the authors' current package, and
ACP-SGD, Zhang et al., ICDCS 2023). Counting compressed steps t = 0, 1, ...:

    even t (P-step):  Q̂ ← orthogonalize(Q̄ of step t−1, renewed; the seeded Q at t = 0)
                      Pᵀ ← Q̂ᵀ Mᵀ,  P̄ᵀ ← all-reduce(Pᵀ),  G' ← P̄ Q̂ᵀ,  E ← M − P Q̂ᵀ
    odd t  (Q-step):  P̂ ← orthogonalize(P̄ of step t−1, renewed)
                      Qᵀ ← P̂ᵀ M,   Q̄ᵀ ← all-reduce(Qᵀ),  G' ← P̂ Q̄ᵀ,  E ← M − P̂ Qᵀ

Why one round is enough: the factor that is not sent (Q̂ or P̂) was orthogonalized from an
all-reduced factor, so it is bit-identical on every rank. The step is then linear in M,
mean_i(M_i Q̂) Q̂ᵀ = mean_i(M_i Q̂ Q̂ᵀ), so all-reducing the sent factor gives exactly the average of
every rank's own rank-r approximation. Each step is one half of a power iteration warm-started from
the last, so over two steps the factors track the dominant subspace as the classic k = 1 iteration
does, with half the rounds and half the bytes per step. Under momentum it trains markedly worse than
the classic scheme (the user guide's accuracy table).

P and Q go zero-padded to r·max(n, m) numbers, so that Horovod sees one shape per tensor: its
response cache renegotiates a tensor whose shape changed, which would cost every tensor extra
collective rounds every step. Without warm start every step is a P-step from a fresh seeded Q.
"""
from __future__ import annotations

from ..wire import Transfer, Wire
from .scheme import OneRound
from .state import Job


class Alternating(OneRound):
    name = "alternating"
    wire = Wire("32·r·max(n,m)/(n·m)", biased=True, error_feedback=True,
                note="one all-reduce per step: P and Q on alternate steps, padded to one shape")
    zero_sides = ("p",)  # only read after a P-step wrote it

    def transfers(self, n, m, rank, number):
        return [Transfer("allreduce", rank * max(n, m) * number, 0, "P or Q, padded")]

    def send(self, job: Job):
        b, state = self.backend, job.state
        job.sends_p = (job.compressed_step % 2 == 0) if self.cfg.warm_start else True

        def flat(factor):
            return b.pad(b.reshape(self.to_wire(factor), (-1,)), state.rank * max(state.matrix))

        def p_step():  # (what to send, left, right): the approximation is leftᵀ right
            Q_hat = self.factors.orthonormal(self.factors.shared(job, "q"))
            P = b.matmul(Q_hat, job.M, transpose_b=True)
            return flat(P), P, Q_hat

        def q_step():
            P_hat = self.factors.orthonormal(self.factors.shared(job, "p"))
            Q = b.matmul(P_hat, job.M)
            return flat(Q), P_hat, Q

        wire, job.left, job.right = b.cond(job.sends_p, p_step, q_step)
        self.keep_local_error(job)
        return wire

    def receive(self, job: Job, reduced) -> None:
        """G' = P̄ Q̂ᵀ after a P-step, P̂ Q̄ᵀ after a Q-step; the reduced factor is kept, the other
        slot keeps its value."""
        b, state = self.backend, job.state
        r, (n, m) = state.rank, state.matrix
        P_bar = lambda: self.reduced_factor(reduced, 0, r, n)  # noqa: E731
        Q_bar = lambda: self.reduced_factor(reduced, 0, r, m)  # noqa: E731
        job.left, job.right = b.cond(job.sends_p, lambda: (P_bar(), job.right),
                                     lambda: (job.left, Q_bar()))
        if self.cfg.warm_start:
            old = {side: b.read_state(getattr(state, side)) for side in self.warm_sides}
            job.kept = dict(zip(self.warm_sides, b.cond(
                job.sends_p, lambda: (job.left, old["q"]), lambda: (old["p"], job.right))))
