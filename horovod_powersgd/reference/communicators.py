"""Collectives for the NumPy reference backend.

A communicator provides ``rank``, ``size``, ``allreduce_async(array, name, op) -> handle``,
``allgather_async(array, name) -> handle`` and ``wait(handle) -> array``. Reductions add
contributions in rank order, so every rank gets bit-identical results.
"""
from __future__ import annotations

import threading
from typing import Dict

import numpy as np

from ..core.backend import ReduceOp


class ThreadGroup:
    """``size`` simulated ranks in one process, each driven by its own thread.

    ``run(fn)`` calls ``fn(communicator)`` on every rank concurrently and returns the results in rank
    order; an exception on any rank is re-raised (and releases the others) instead of hanging.
    """

    def __init__(self, size: int, timeout: float = 60.0):
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.timeout = timeout
        self._lock = threading.Condition()
        self._slots: Dict[str, dict] = {}
        self._failed: BaseException | None = None

    def communicator(self, rank: int) -> "ThreadCommunicator":
        return ThreadCommunicator(self, rank)

    def run(self, fn):
        results = [None] * self.size
        errors = [None] * self.size

        def target(rank):
            try:
                results[rank] = fn(self.communicator(rank))
            except BaseException as exc:  # noqa: BLE001 — re-raised below
                errors[rank] = exc
                with self._lock:
                    self._failed = exc
                    self._lock.notify_all()

        threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout)
        for rank, error in enumerate(errors):
            if error is not None:
                raise RuntimeError(f"simulated rank {rank} failed: {error!r}") from error
        if any(t.is_alive() for t in threads):
            raise TimeoutError(f"simulated ranks did not finish within {self.timeout} s")
        return results

    # -- used by ThreadCommunicator
    def _contribute(self, name: str, rank: int, kind: str, array, op):
        with self._lock:
            # A fast rank may reuse a name (next step, same tensor) before the slower ranks have
            # read the previous result: wait until that round is released.
            def free():
                return self._failed is not None or rank not in self._slots.get(name, {}).get("parts", ())

            released = self._lock.wait_for(free, timeout=self.timeout)
            if self._failed is not None:
                raise RuntimeError("another simulated rank failed")
            if not released:
                raise RuntimeError(f"collective {name!r} submitted twice by rank {rank} "
                                   f"(or its previous result was never read by every rank)")
            slot = self._slots.setdefault(name, {"kind": kind, "parts": {}, "readers": 0})
            if slot["kind"] != kind:
                raise RuntimeError(f"collective {name!r}: ranks disagree on the operation")
            slot["parts"][rank] = (np.array(array, copy=True), op)
            self._lock.notify_all()
        return name

    def _result(self, name: str):
        with self._lock:
            ok = self._lock.wait_for(
                lambda: self._failed is not None or len(self._slots[name]["parts"]) == self.size,
                timeout=self.timeout)
            if self._failed is not None:
                raise RuntimeError("another simulated rank failed")
            if not ok:
                raise TimeoutError(f"collective {name!r}: not every rank submitted it")
            slot = self._slots[name]
            parts = [slot["parts"][r] for r in range(self.size)]
            slot["readers"] += 1
            if slot["readers"] == self.size:
                del self._slots[name]
                self._lock.notify_all()
        arrays = [a for a, _ in parts]
        if slot["kind"] == "allgather":
            return np.concatenate(arrays, axis=0)
        ops = {op for _, op in parts}
        if len(ops) != 1:
            raise RuntimeError(f"collective {name!r}: ranks disagree on the reduction")
        total = arrays[0].copy()
        for a in arrays[1:]:
            total = total + a
        return total / self.size if ops.pop() is ReduceOp.AVERAGE else total


class ThreadCommunicator:
    def __init__(self, group: ThreadGroup, rank: int):
        self.group, self.rank, self.size = group, rank, group.size

    def allreduce_async(self, array, name, op=ReduceOp.AVERAGE):
        return self.group._contribute(name, self.rank, "allreduce", array, op)

    def allgather_async(self, array, name):
        return self.group._contribute(name, self.rank, "allgather", array, None)

    def wait(self, handle):
        return self.group._result(handle)


class MPICommunicator:
    """Collectives over mpi4py (``mpirun -np N``).

    MPI matches non-blocking collectives by call order, not by name, so every rank must submit in
    the same order — the reference driver does.
    """

    def __init__(self, comm=None):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def allreduce_async(self, array, name, op=ReduceOp.AVERAGE):
        send = np.ascontiguousarray(array)
        recv = np.empty_like(send)
        request = self.comm.Iallreduce(send, recv, op=self._MPI.SUM)
        return ("allreduce", request, send, recv, op)

    def allgather_async(self, array, name):
        send = np.ascontiguousarray(array)
        recv = np.empty((self.size * send.shape[0],) + send.shape[1:], dtype=send.dtype)
        request = self.comm.Iallgather(send, recv)
        return ("allgather", request, send, recv, None)

    def wait(self, handle):
        kind, request, _send, recv, op = handle
        request.Wait()
        if kind == "allreduce" and op is ReduceOp.AVERAGE:
            return recv / self.size
        return recv
