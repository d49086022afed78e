"""What every PyTorch example shares: flags, Horovod set-up, the compressor from its spec, byte and
time accounting, per-rank checkpoints, and the report.

The examples import it as ``from . import _common``; the benchmark (``benchmarks.step_worker``)
reuses the same pieces as ``examples._common``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from horovod_powersgd.core.stats import CompressionStats

from ._flags import add_common_flags  # noqa: F401  (re-exported for the examples)
from ._report import Reporter, progress  # noqa: F401


# ---------------------------------------------------------------------------- Horovod and threads
def threads_per_rank(local_ranks: int) -> int:
    """One share of this machine's cores per local rank (oversubscribing 2 cores with 2 ranks × N
    intra-op threads makes every step slower and every timing noisier); ``OMP_NUM_THREADS`` wins."""
    return int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, (os.cpu_count() or 1) // local_ranks)


def init_horovod():
    """hvd.init() and `threads_per_rank` intra-op threads."""
    import horovod.torch as hvd

    hvd.init()
    torch.set_num_threads(threads_per_rank(hvd.local_size()))
    return hvd


# ---------------------------------------------------------------------------- compression objects
class CountingCompression:
    """Wraps one of Horovod's stateless compressors (``Compression.none`` / ``.fp16``) so that it
    reports bytes and codec time through the same `CompressionStats` as ours.

    A step ends when no tensor is in flight, as in `horovod_powersgd.core.compressor.Compressor`.
    """

    def __init__(self, inner, name: str):
        self.inner, self.name = inner, name
        self.stats = CompressionStats()
        self._in_flight = 0

    def compress(self, tensor):
        start = time.perf_counter()
        if self._in_flight == 0:
            self.stats.begin_step()
        self._in_flight += 1
        wire, ctx = self.inner.compress(tensor)
        self.stats.add(uncompressed=tensor.numel() * tensor.element_size(),
                       sent=wire.numel() * wire.element_size(), compressed_tensor=wire is not tensor)
        self.stats.compress_seconds += time.perf_counter() - start
        return wire, ctx

    def decompress(self, tensor, ctx):
        start = time.perf_counter()
        out = self.inner.decompress(tensor, ctx)
        self._in_flight -= 1
        self.stats.decompress_seconds += time.perf_counter() - start
        if self._in_flight == 0:
            self.stats.end_step()
        return out

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def compression_from_spec(spec: str):
    """Our compressor for ``spec``; ``none`` is Horovod's own, wrapped to count bytes."""
    from horovod.torch import Compression

    from horovod_powersgd import parse_spec
    from horovod_powersgd.torch import from_spec

    if parse_spec(spec)[0] == "none":
        return CountingCompression(Compression.none, "none")
    return from_spec(spec)


# ---------------------------------------------------------------------------- checkpoints
def rank_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.name}.rank{rank}")


def save_checkpoint(path: Path, rank: int, epoch: int, model, optimizer, compression, extra=None):
    """One file per rank: the model and optimizer are the same everywhere, but the compressor's error
    buffers are this rank's own (they hold what *its* gradients lost to compression)."""
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "compression": compression.state_dict(), "torch_rng": torch.get_rng_state(),
             "extra": extra or {}}
    target = rank_path(path, rank)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)  # never leave a half-written checkpoint behind


def load_checkpoint(path: Path, rank: int, model, optimizer, compression) -> dict:
    target = rank_path(path, rank)
    if not target.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint for rank {rank} at {target} "
                                f"(was it saved with the same number of ranks?)")
    state = torch.load(target, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    compression.load_state_dict(state["compression"])
    torch.set_rng_state(state["torch_rng"])
    return state
