"""The two data-parallel engines the PyTorch examples train with, around one training loop.

``--engine horovod`` (the default): Horovod's ``DistributedOptimizer`` with a compressor from this
package (``--compression powersgd:rank=2``, or ``none``: Horovod's own, counted). Launch with
``horovodrun``. A compressed run reduces all gradients in one grouped all-reduce (``groups=1``, the
recommended line, docs "Configuration"); ``--groups 0`` gives Horovod's default of one all-reduce per
gradient as backprop produces it, which uncompressed runs keep.

``--engine ddp``: PyTorch's ``DistributedDataParallel`` over torch.distributed's gloo backend —
what a PyTorch user has without us — with ``--compression none`` (DDP's own all-reduce of 25 MB
buckets) or ``--compression powersgd:rank=r``, DDP's built-in ``powerSGD_hook`` at rank r with
error feedback, warm start, compression from step 2 (the hook needs > 1 with error feedback) and
``min_compression_rate`` 2, as our defaults. Launch with ``torchrun`` (or anything that sets
``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE``).

``--engine local``: one process, no communication at all — the compute floor of the same steps
(give it one rank's share of the data, e.g. half of ``--train-limit`` for 2 ranks).

The engines give the loop the same model, data shards and order, optimizer and schedule, so their
accuracies and times compare the engines alone. Each reports its bytes per step through a
`CompressionStats` (``engine.stats``): ours and Horovod's from the compressor, DDP's from the
tensors its hooks hand to ``all_reduce`` (all gradients, without a hook).
"""
from __future__ import annotations

import datetime
import os
import sys

import torch

from horovod_powersgd import parse_spec
from horovod_powersgd.core.stats import CompressionStats

from . import _common

ENGINES = ("horovod", "ddp", "local")

#: the options of ``--engine ddp --compression powersgd:...`` (the hook's), all others refused
DDP_HOOK_OPTIONS = ("rank",)


def add_engine_flag(parser) -> None:
    parser.add_argument("--engine", choices=ENGINES, default="horovod",
                        help="horovod: Horovod + --compression from this package (horovodrun); ddp: "
                             "PyTorch DDP, --compression none or powersgd:rank=R for its powerSGD_hook "
                             "(torchrun); local: one process, no communication (the compute floor)")
    parser.add_argument("--groups", type=int, default=None,
                        help="--engine horovod: DistributedOptimizer(groups=N); 0 = one all-reduce "
                             "per gradient (Horovod's default). Default: 1 when --compression "
                             "compresses, else 0")


def make_engine(args):
    """The engine ``args.engine`` names, with ``args.compression``."""
    if args.engine != "horovod" and (args.checkpoint is not None or args.resume):
        raise SystemExit(f"--engine {args.engine}: --checkpoint/--resume are not supported (a "
                         f"comparison run; checkpoint with --engine horovod)")
    if args.engine == "ddp":
        return DDPEngine(args.compression)
    if args.engine == "local":
        return LocalEngine(args.compression)
    return HorovodEngine(args.compression, getattr(args, "groups", None))


class _Engine:
    """What every engine does alike unless it says otherwise: one process's view (rank 0 of 1),
    the model and optimizer as they are, the gradient stepped as ``backward`` left it."""

    def rank(self) -> int:
        return 0

    def size(self) -> int:
        return 1

    def distribute(self, model, optimizer):
        """(the model to train, the optimizer to step) for this engine."""
        return model, optimizer

    def start_from_rank_0(self, model, optimizer) -> None:
        """Make every rank start from rank 0's weights and optimizer state (nothing to do here)."""

    @property
    def compression(self):
        raise TypeError(f"--engine {self.name} has no compressor state to checkpoint")

    def step(self, optimizer, before_step=None) -> None:
        """``optimizer.step()`` on the averaged gradient; ``before_step()`` (e.g. clipping) sees it
        first, identically on every rank."""
        if before_step is not None:
            before_step()
        optimizer.step()

    def total(self, value: float, name: str) -> float:
        """The sum of a Python number over all ranks."""
        return float(value)

    def average(self, value: float, name: str) -> float:
        return self.total(value, name) / self.size()

    def close(self) -> None:
        """Leave the job (nothing to do here)."""


class HorovodEngine(_Engine):
    """Horovod's ``DistributedOptimizer`` with the compressor ``spec`` names."""

    name = "horovod"
    compression = None  # set per instance: the compressor ``spec`` names

    def __init__(self, spec: str, groups=None):
        self.hvd = _common.init_horovod()
        self.compression = _common.compression_from_spec(spec)
        if groups is None:
            groups = 0 if parse_spec(spec)[0] == "none" else 1
        self.groups = groups or None  # Horovod's "no groups"

    def rank(self) -> int:
        return self.hvd.rank()

    def size(self) -> int:
        return self.hvd.size()

    @property
    def stats(self) -> CompressionStats:
        return self.compression.stats

    def distribute(self, model, optimizer):
        return model, self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                                    compression=self.compression, groups=self.groups)

    def start_from_rank_0(self, model, optimizer) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def step(self, optimizer, before_step=None) -> None:
        """With ``before_step``, Horovod's documented pattern: synchronize, then step without a
        second synchronization."""
        if before_step is None:
            optimizer.step()
            return
        optimizer.synchronize()
        before_step()
        with optimizer.skip_synchronize():
            optimizer.step()

    def total(self, value: float, name: str) -> float:
        return float(self.hvd.allreduce(torch.tensor([value], dtype=torch.float64), name=name,
                                        op=self.hvd.Sum).item())


class _CountingCollectives:
    """torch.distributed as a DDP comm hook module sees it, counting the bytes handed to
    ``all_reduce`` (everything else passes through)."""

    def __init__(self, counter: list):
        import torch.distributed as dist

        self._dist, self._counter = dist, counter

    def all_reduce(self, tensor, *args, **kwargs):
        self._counter[0] += tensor.numel() * tensor.element_size()
        return self._dist.all_reduce(tensor, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._dist, name)


class DDPEngine(_Engine):
    """``DistributedDataParallel`` (gloo), without a hook or with ``powerSGD_hook``. DDP broadcasts
    rank 0's parameters when it wraps the model, and averages the gradients during ``backward``."""

    name = "ddp"

    def __init__(self, spec: str):
        import torch.distributed as dist

        compressor, options = parse_spec(spec)
        if compressor not in ("none", "powersgd") or set(options) - set(DDP_HOOK_OPTIONS):
            raise ValueError(f"--engine ddp: --compression must be 'none' or 'powersgd:rank=R' (DDP's "
                             f"powerSGD_hook), got {spec!r}")
        self.hook_rank = int(options.get("rank", 1)) if compressor == "powersgd" else 0
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=10))
        torch.set_num_threads(_common.threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
        self.dist, self.stats = dist, CompressionStats()
        self._sent = [0]  # bytes the hook handed to all_reduce since the last step
        self._gradient_bytes = 0

    def rank(self) -> int:
        return self.dist.get_rank()

    def size(self) -> int:
        return self.dist.get_world_size()

    def distribute(self, model, optimizer):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
        from torch.nn.parallel import DistributedDataParallel as DDP

        self._gradient_bytes = sum(p.numel() * p.element_size() for p in model.parameters()
                                   if p.requires_grad)
        if not self.hook_rank:
            return DDP(model), optimizer
        # One bucket: with DDP's default buckets (1 MiB first, then 25 MiB) the hook deadlocked on
        # the gloo backend here (rank 0 stuck in Reducer::finalize_backward, both gloo threads
        # waiting on a future inside the hook's callbacks).
        ddp = DDP(model, bucket_cap_mb=10_000)
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=self.hook_rank,
                                            start_powerSGD_iter=2, min_compression_rate=2,
                                            use_error_feedback=True, warm_start=True, random_seed=0)
        counting = _CountingCollectives(self._sent)
        powerSGD_hook.dist = default_hooks.dist = counting  # the hook's collectives, counted
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return ddp, optimizer

    def step(self, optimizer, before_step=None) -> None:
        super().step(optimizer, before_step)
        self.stats.begin_step()
        sent = self._sent[0] if self.hook_rank else self._gradient_bytes
        self.stats.add(uncompressed=self._gradient_bytes, sent=sent)
        self.stats.end_step()
        self._sent[0] = 0

    def total(self, value: float, name: str) -> float:
        tensor = torch.tensor([value], dtype=torch.float64)
        self.dist.all_reduce(tensor)
        return float(tensor.item())

    def close(self) -> None:
        """Leave the job together and end the process (`leave_gloo_job`)."""
        leave_gloo_job(self.dist)


def leave_gloo_job(dist) -> None:
    """End a torch.distributed (gloo) process once every rank is done, without finalizing Python.

    The barrier keeps a rank from closing its gloo connections while its peer still uses them. The
    process then leaves with ``os._exit``: torch 2.13's gloo threads outlive
    ``destroy_process_group`` (its ``pt_gloo_runloop`` threads still run after it and a
    ``gc.collect()``) and meet interpreter finalization, where a thread that takes the GIL is ended
    by a forced unwind — "terminate called without an active exception", an abort after the
    results were printed. After the last barrier nothing is left to do, so nothing is lost.
    """
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class LocalEngine(_Engine):
    """One process, nothing communicated: the compute floor of the loop's steps."""

    name = "local"

    def __init__(self, spec: str):
        if parse_spec(spec)[0] != "none":
            raise SystemExit(f"--engine local communicates nothing: --compression must be none, got {spec!r}")
        torch.set_num_threads(_common.threads_per_rank(1))
        self.stats = CompressionStats()
