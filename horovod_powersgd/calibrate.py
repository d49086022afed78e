"""Calibrate the advisor on *your* cluster: a short program every rank runs under your own launcher.

    horovodrun -np 2 -H host1:1,host2:1 python -m horovod_powersgd.calibrate --model fashion_cnn --out fit.json
    mpirun -np 2 python -m horovod_powersgd.calibrate --model mypkg.models:build --batch mypkg.data:loss --out fit.json
    sudo .venv/bin/python -m benchmarks.emulate --rate 1gbit --workers 2 -- \\
        .venv/bin/python -m horovod_powersgd.calibrate --model fashion_cnn --out /tmp/fit.json
    python -m horovod_powersgd.advisor --fit fit.json --bandwidth 10gbit --workers 16   # later, what-ifs

In a bounded time (``--budget``, default 120 s, progress shown on rank 0) it measures, with every rank
taking part, in the framework (PyTorch) and on the device you train with:

1. **the network as Horovod sees it**: all-reduce and all-gather of float32 tensors over a range of
   sizes, one tensor per round, several tensors fused into one round (grouped), and the same tensors
   as separate rounds. One least-squares fit over every sample, each weighted by its relative error,

       t(round) = (ring bytes)·8 / B + hops · α + β + tensors · γ
       ring bytes: 2(N−1)/N · S (all-reduce), (N−1) · s (all-gather); hops: 2(N−1) and N−1

   gives the effective bandwidth B, the per-hop latency α (all-reduce and all-gather differ in hops
   only), the per-round overhead β (fused vs separate rounds of the same tensors) and the per-tensor
   overhead γ; their spread (10th–90th percentile) comes from refitting on bootstrap resamples of
   the repetitions;
2. **each compressor's codec cost** for your gradient shapes on your device: every spec the advisor
   compares runs real steps of Horovod's DistributedOptimizer on parameters of your shapes;
   codec = the compressor's own compress + decompress + end-of-step work, without its waits (its
   ``stats``); the same steps' wall time, beyond codec and the fitted collectives, gives the
   per-step overhead σ of a Horovod step (hooks, handles, rounds launched from backprop);
3. optionally **your compute time** per step: ``--batch module:function`` gets the model built by
   ``--model module:function`` and returns a zero-argument callable giving one batch's loss; a step
   is zero_grad + backward + SGD, without Horovod (the slowest rank's median).

Rank 0 writes the fit (``--out``: the advisor's `Fit` plus the raw samples) and prints the advisor's
table for this cluster: predicted step time and speed-up of every spec, the bandwidth below which each
pays, and a one-sentence recommendation with its reason.

``--model`` takes the advisor's presets (``fashion_cnn``, ``ptb_lstm``, ``resnet18``), shapes
(``1024x1568,1024``), a ``.json`` list of shapes, or ``module:function`` returning a
``torch.nn.Module`` (its trainable parameters' shapes) or a list of shapes.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import advisor, machine
from .advisor import Fit, Shape
from .core import wire
from .core.shapes import numel

#: float32 elements; the network phase's smallest tensor
MIN_BYTES = 4 << 10
#: tensors per fused (or separate) round in the network phase
FUSED_TENSORS = 8
#: prefix of every object collective's name. Horovod's default name is the object's type name, so one
#: rank's ``int`` beside another's ``float`` would be two collectives, each waiting for the other forever
#: (it hung this tool 2 runs in 9 when a probe crossed the 64 MiB cap on one rank only)
_NAME = "horovod_powersgd.calibrate"


# ---------------------------------------------------------------------------- timing sources
class TimingSource:
    """What the network phase needs from a cluster; `HorovodSource` is the real one, tests use a
    synthetic one. Every rank makes the same calls in the same order."""

    size: int = 2

    def clock(self) -> float:
        return time.perf_counter()

    def allreduce(self, nbytes: Sequence[int], fused: bool) -> float:
        """Seconds to all-reduce float32 tensors of these sizes: one fused round or one round each."""
        raise NotImplementedError

    def allgather(self, nbytes: Sequence[int], fused: bool) -> float:
        """Seconds to all-gather tensors of these sizes (bytes per rank)."""
        raise NotImplementedError

    def agree(self, value):
        """Rank 0's value, on every rank (decisions that depend on time must be the same everywhere)."""
        return value

    def combine(self, values: List[float]) -> List[float]:
        """Per-sample times from every rank → one time per sample (the mean over ranks)."""
        return values


# ---------------------------------------------------------------------------- network: measure
@dataclasses.dataclass
class Sample:
    op: str  # 'allreduce' or 'allgather'
    nbytes: int  # bytes per rank, all tensors together
    tensors: int
    fused: bool  # True: one round for all tensors; False: one round per tensor
    seconds: List[float] = dataclasses.field(default_factory=list)  # one per repetition

    @property
    def rounds(self) -> int:
        return 1 if self.fused else self.tensors


def plan_points(max_bytes: int) -> List[Sample]:
    """The measurement points: sizes from `MIN_BYTES` to ``max_bytes`` (×4 steps), single tensors,
    and `FUSED_TENSORS` tensors fused and separate at a few sizes, for both collectives."""
    sizes, size = [], MIN_BYTES
    while size < max_bytes:
        sizes.append(size)
        size *= 4
    sizes.append(max_bytes)
    points = []
    for op in ("allreduce", "allgather"):
        for size in sizes:
            points.append(Sample(op, size, 1, True))
        grouped = sizes[::2] if op == "allreduce" else sizes[:1] + sizes[-1:]
        for size in grouped:
            size = max(size, FUSED_TENSORS * MIN_BYTES // 4)
            points.append(Sample(op, size, FUSED_TENSORS, True))
            points.append(Sample(op, size, FUSED_TENSORS, False))
    return points


def _run_point(source: TimingSource, point: Sample) -> float:
    parts = [max(4, point.nbytes // point.tensors // 4 * 4)] * point.tensors
    op = source.allreduce if point.op == "allreduce" else source.allgather
    return op(parts, point.fused)


def measure_network(source: TimingSource, budget_s: float, max_round_s: float = 0.25,
                    min_repetitions: int = 3, progress: Optional[Callable[[str, float], None]] = None
                    ) -> List[Sample]:
    """Repeat every measurement point until ``budget_s`` is spent (at least ``min_repetitions``
    times). The largest size is chosen from a first probe so that one round takes ≈ ``max_round_s``."""
    start = source.clock()
    for _ in range(2):  # warm-up: connections, buffers, Horovod's first negotiation
        source.allreduce([1 << 20], True)
    probe = min(source.allreduce([1 << 20], True) for _ in range(2))
    bytes_per_s = (1 << 20) / max(probe, 1e-6)
    max_bytes = int(source.agree(float(min(64 << 20, max(1 << 20, bytes_per_s * max_round_s))))) // 4096 * 4096
    points = plan_points(max_bytes)
    repetition = 0
    while True:
        for point in points:
            point.seconds.append(_run_point(source, point))
        repetition += 1
        elapsed = source.clock() - start
        if progress:
            progress("network", elapsed)
        more = repetition < min_repetitions or elapsed * (repetition + 1) / repetition <= budget_s
        if not source.agree(more):
            break
    for point in points:
        point.seconds = source.combine(point.seconds)
    return points


# ---------------------------------------------------------------------------- network: fit
@dataclasses.dataclass
class NetworkFit:
    bandwidth_bps: float  # B: effective bits per second of one worker's link, as collectives see it
    latency_s: float  # α per hop
    round_overhead_s: float  # β per round
    tensor_overhead_s: float  # γ per tensor in a round
    spread: Dict[str, List[float]]  # parameter → [10th, 90th] percentile over bootstrap refits
    median_error: float  # median |relative error| of the fit over the measurement points
    burst_bytes: float = 0.0  # bytes per round a link lets through before its sustained rate applies


COLUMNS = ("inverse_bandwidth", "latency_s", "round_overhead_s", "tensor_overhead_s", "burst_bytes")


def round_seconds(coef, op: str, nbytes: float, tensors: int, rounds: int, workers: int) -> float:
    """The fitted model's time for one measurement (coef as `_solve` returns it)."""
    bits, hops, _, _ = design_row(op, nbytes / rounds, tensors, 1, workers)
    return (max(0.0, bits - 8 * coef[4]) * coef[0] + hops * coef[1] + coef[2]) * rounds + tensors * coef[3]


def design_row(op: str, nbytes: float, tensors: int, rounds: int, workers: int) -> List[float]:
    """Coefficients of (1/B, α, β, γ) in one measurement's time (the module docstring's model)."""
    return [wire.link_bytes(op, nbytes, workers) * 8, wire.hops(op, workers) * rounds, rounds, tensors]


def nonnegative_lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient ≥ 0: refit without the columns that came out negative
    (a latency or overhead cannot be negative; on a network without delay α is 0)."""
    active = list(range(A.shape[1]))
    x = np.zeros(A.shape[1])
    while active:
        coef, *_ = np.linalg.lstsq(A[:, active], y, rcond=None)
        if (coef >= 0).all():
            x[:] = 0
            x[active] = coef
            return x
        active.pop(int(np.argmin(coef)))
    return x


#: points whose bytes are at least this fraction of the largest fix the bandwidth
LARGE_FRACTION = 1 / 16
#: points whose transfer term is at most this share of their time fix α, β, γ
SMALL_SHARE = 0.3


def _weighted_nnls(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    w = 1.0 / np.maximum(y, 1e-9)  # relative errors: times span orders of magnitude
    scale = np.abs(A * w[:, None]).max(axis=0)
    scale[scale == 0] = 1.0
    return nonnegative_lstsq(A * w[:, None] / scale, y * w) / scale


def _solve(points: List[Sample], times: np.ndarray, workers: int) -> np.ndarray:
    """(1/B, α, β, γ, burst bytes) in two stages. The bandwidth is the slope of time over bytes among the largest
    single-round transfers, each kind of round (collective, tensors) with its own intercept: sustained
    throughput, which a link's burst allowance (a NIC's token bucket, switch buffers) does not
    flatter. Then α, β, γ from the points the transfer term hardly touches, with B fixed, and the
    burst (bytes a round gets through before the sustained rate applies: a token bucket's, as the
    emulated links' tc tbf has) from how far the large rounds' intercepts fall below α, β, γ."""
    A = np.array([design_row(p.op, p.nbytes, p.tensors, p.rounds, workers) for p in points], dtype=float)
    largest = max(p.nbytes for p in points)
    large = [i for i, p in enumerate(points) if p.nbytes >= largest * LARGE_FRACTION and p.rounds == 1]
    kinds = sorted({(points[i].op, points[i].tensors, points[i].fused) for i in large})
    X = np.array([[A[i, 0]] + [float((points[i].op, points[i].tensors, points[i].fused) == k) for k in kinds]
                  for i in large])
    inverse_bandwidth = 0.0
    if len({points[i].nbytes for i in large}) >= 2:
        # intercepts unconstrained: a burst allowance makes them negative
        w = 1.0 / np.maximum(times[large], 1e-9)
        scale = np.abs(X * w[:, None]).max(axis=0)
        scale[scale == 0] = 1.0
        coef, *_ = np.linalg.lstsq(X * w[:, None] / scale, times[large] * w, rcond=None)
        inverse_bandwidth = float(coef[0] / scale[0])
    if inverse_bandwidth <= 0:  # no usable slope: all points at once
        return np.concatenate([_weighted_nnls(A, times), [0.0]])
    intercepts = {kind: coef[1 + j] / scale[1 + j] for j, kind in enumerate(kinds)}
    burst_bits = 0.0
    for _ in range(3):  # α, β, γ from the points the transfer hardly touches; then the burst; again
        transfer = np.maximum(A[:, 0] - burst_bits, 0.0) * inverse_bandwidth
        small = [i for i in range(len(points)) if transfer[i] <= SMALL_SHARE * times[i]]
        if len(small) < 3:
            small = list(range(len(points)))
        alpha, beta, gamma = _weighted_nnls(A[small][:, 1:], np.maximum(times[small] - transfer[small], 0.0))
        # a burst allowance: the large rounds' intercepts fall short of α, β, γ by burst / B
        shortfall = [c - (design_row(op, 0, tensors, 1, workers)[1] * alpha + beta + tensors * gamma)
                     for (op, tensors, _fused), c in intercepts.items()]
        burst_bits = max(0.0, -float(np.median(shortfall)) / inverse_bandwidth)
    return np.array([inverse_bandwidth, alpha, beta, gamma, burst_bits / 8])


def fit_network(points: List[Sample], workers: int, bootstrap: int = 200, seed: int = 0) -> NetworkFit:
    """Fit (B, α, β, γ, burst) to the per-point medians; spread from refits on bootstrap resamples."""
    if workers < 2:
        raise ValueError("the network fit needs at least 2 ranks")
    medians = np.array([np.median(p.seconds) for p in points])
    coef = _solve(points, medians, workers)
    if coef[0] <= 0:
        raise ValueError("the fit found no bandwidth term: the largest transfers were too small to time")
    model = np.array([round_seconds(coef, p.op, p.nbytes, p.tensors, p.rounds, workers) for p in points])
    error = float(np.median(np.abs(model / medians - 1)))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        times = np.array([np.median(rng.choice(p.seconds, len(p.seconds))) for p in points])
        draws.append(_solve(points, times, workers))
    draws = np.array(draws)
    spread = {}
    for i, name in enumerate(COLUMNS):
        values = 1.0 / draws[:, 0][draws[:, 0] > 0] if i == 0 else draws[:, i]
        low, high = np.percentile(values, [10, 90]) if len(values) else (math.nan, math.nan)
        spread["effective_bps" if i == 0 else name] = [float(low), float(high)]
    return NetworkFit(1.0 / float(coef[0]), float(coef[1]), float(coef[2]), float(coef[3]), spread, error,
                      float(coef[4]))


# ---------------------------------------------------------------------------- Horovod (PyTorch)
class HorovodSource(TimingSource):
    """Horovod's own collectives on float32 tensors (``device``: 'cpu' or 'cuda')."""

    def __init__(self, hvd, device: str = "cpu"):
        import torch

        self.hvd, self.torch, self.device = hvd, torch, device
        self.size = hvd.size()
        self._cache: Dict[int, object] = {}

    def _tensor(self, nbytes: int, index: int):
        key = (nbytes, index)
        if key not in self._cache:
            self._cache[key] = self.torch.full((max(1, nbytes // 4),), 1.0, device=self.device)
        return self._cache[key]

    def _sync(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def _timed(self, fn) -> float:
        self.hvd.barrier()
        self._sync()
        start = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - start

    def _run(self, op: str, nbytes, fused: bool) -> float:
        # stable names, as a training loop's parameters have: Horovod's response cache then skips
        # the full negotiation, as it does in training
        name = f"calibrate.{op}.{len(nbytes)}x{nbytes[0]}"
        tensors = [self._tensor(b, i) for i, b in enumerate(nbytes)]
        single, grouped = ((self.hvd.allreduce, self.hvd.grouped_allreduce) if op == "allreduce"
                           else (self.hvd.allgather, self.hvd.grouped_allgather))
        if fused and len(tensors) > 1:
            return self._timed(lambda: grouped(tensors, name=f"{name}.fused"))
        return self._timed(lambda: [single(t, name=f"{name}.{i}") for i, t in enumerate(tensors)])

    def allreduce(self, nbytes, fused):
        return self._run("allreduce", nbytes, fused)

    def allgather(self, nbytes, fused):
        return self._run("allgather", nbytes, fused)

    def agree(self, value):
        return self.hvd.broadcast_object(value, 0, name=f"{_NAME}.agree")

    def combine(self, values):
        every = self.hvd.allgather_object(list(values), name=f"{_NAME}.combine")
        return [float(np.mean(column)) for column in zip(*every)]


# ---------------------------------------------------------------------------- codec and compute
def _parameters(shapes: Sequence[Shape], device: str):
    import torch

    return torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(s, device=device)) for s in shapes])


def measure_codec(hvd, specs: Sequence[str], shapes: Sequence[Shape], device: str, budget_s: float,
                  min_steps: int = 3, warmup: int = 2,
                  progress: Optional[Callable[[str, float], None]] = None) -> Dict[str, dict]:
    """Per spec: codec seconds per step (median over steps, slowest rank) and the synthetic step's
    wall time (no compute: gradients are fixed tensors), from real Horovod steps on ``shapes``."""
    import torch

    from .torch import from_spec

    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=generator).to(device) for s in shapes]
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

    def backward(params):  # gradient = the fixed random tensors: no compute worth the name
        sum((p * g).sum() for p, g in zip(params, grads)).backward()

    # the synthetic backward itself, without Horovod (subtracted from the step's wall time)
    params = _parameters(shapes, device)
    plain = torch.optim.SGD(params, lr=0.0)
    plain_times = []
    for _ in range(warmup + 5):
        plain.zero_grad()
        start = time.perf_counter()
        backward(params)
        plain.step()
        sync()
        plain_times.append(time.perf_counter() - start)
    plain_s = float(np.median(plain_times[warmup:]))
    results: Dict[str, dict] = {}
    start_all = time.perf_counter()
    for index, spec in enumerate(specs):
        per_spec = (budget_s - (time.perf_counter() - start_all)) / (len(specs) - index)
        compression = from_spec(spec)
        params = _parameters(shapes, device)  # fresh: Horovod's hooks stay on the parameters they wrap
        optimizer = hvd.DistributedOptimizer(torch.optim.SGD(params, lr=0.0),
                                             named_parameters=[(f"p{i}", p) for i, p in enumerate(params)],
                                             compression=compression)
        stats = getattr(compression, "stats", None)
        codec, walls = [], []
        step, spec_start = 0, time.perf_counter()
        while True:
            before = stats.as_dict() if stats is not None else None
            hvd.barrier()
            start = time.perf_counter()
            optimizer.zero_grad()
            backward(params)
            optimizer.step()
            sync()
            wall = time.perf_counter() - start
            if step >= warmup:
                walls.append(wall)
                if stats is not None:
                    after = stats.as_dict()
                    # the compressor's own work, end-of-step included, waits excluded (its stats)
                    codec.append(sum(after[k] - before[k] for k in ("compress_seconds", "decompress_seconds")))
                else:
                    codec.append(0.0)
            step += 1
            done = step >= warmup + min_steps and time.perf_counter() - spec_start >= per_spec
            if hvd.broadcast_object(bool(done or step >= warmup + 200), 0, name=f"{_NAME}.codec.done"):
                break
        # the slowest rank's median: a synchronous step waits for it
        codec_s = max(hvd.allgather_object(float(np.median(codec)), name=f"{_NAME}.codec.seconds"))
        wall_s = max(hvd.allgather_object(float(np.median(walls)), name=f"{_NAME}.codec.wall"))
        results[spec] = {"codec_s": codec_s, "synthetic_step_s": wall_s,
                         "synthetic_comm_codec_s": max(0.0, wall_s - plain_s), "steps": len(walls)}
        del optimizer, params
        gc.collect()
        if progress:
            progress(f"codec {index + 1}/{len(specs)}", time.perf_counter() - start_all)
    return results


@dataclasses.dataclass
class ComputeProfile:
    """One step of the model without Horovod (zero_grad, forward, backward, SGD step), each figure
    the median over steps of the slowest rank's in that step: a synchronous step waits for it."""

    step_s: float  # the whole step
    backward_s: float  # when backward returns, from the step's start
    gradient_ready_s: List[float]  # when each trainable parameter's gradient is accumulated


def measure_compute(hvd, model, batch: Callable, budget_s: float, min_steps: int = 5,
                    warmup: int = 2) -> ComputeProfile:
    """Time zero_grad + forward + backward + SGD step without Horovod, and when each gradient
    becomes ready in backward (a post-accumulate hook per parameter, where Horovod's own hook starts
    its all-reduce): the advisor's backprop profile (`advisor.Fit.backprop_profile`)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    cuda = next(iter(params)).is_cuda if params else False
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # on a GPU a gradient is ready when its kernels have run (Horovod's hook waits on an event
    # too): CUDA events, read after the step; on the CPU, the clock at the hook
    marks: List[object] = [None] * len(params)
    clock = {"start": 0.0, "event": None}

    def hook(index):
        def record(_param):
            if cuda:
                marks[index] = torch.cuda.Event(enable_timing=True)
                marks[index].record()
            else:
                marks[index] = time.perf_counter() - clock["start"]
        return record

    def ready_seconds(backward: float) -> List[float]:
        # a parameter backward left without a gradient is ready when backward is done
        if cuda:
            return [backward if m is None else clock["event"].elapsed_time(m) / 1e3 for m in marks]
        return [backward if m is None else m for m in marks]

    handles = [p.register_post_accumulate_grad_hook(hook(i)) for i, p in enumerate(params)]
    samples, start_all = [], time.perf_counter()  # per step: [step, backward, ready…]
    step = 0
    try:
        while True:
            hvd.barrier()
            sync()
            marks[:] = [None] * len(params)
            clock["start"] = start = time.perf_counter()
            if cuda:
                clock["event"] = torch.cuda.Event(enable_timing=True)
                clock["event"].record()
            optimizer.zero_grad()
            batch().backward()
            sync()
            backward = time.perf_counter() - start
            optimizer.step()
            sync()
            if step >= warmup:
                samples.append([time.perf_counter() - start, backward] + ready_seconds(backward))
            step += 1
            done = step >= warmup + min_steps and time.perf_counter() - start_all >= budget_s
            if hvd.broadcast_object(bool(done or step >= warmup + 500), 0, name=f"{_NAME}.compute.done"):
                break
    finally:
        for handle in handles:
            handle.remove()
    # a synchronous step waits for the slowest rank *of that step*: the median of per-step maxima
    every = np.array(hvd.allgather_object(samples, name=f"{_NAME}.compute.seconds"))
    median = np.median(every.max(axis=0), axis=0)
    return ComputeProfile(float(median[0]), float(median[1]), [float(t) for t in median[2:]])


# ---------------------------------------------------------------------------- model, machine
def load_object(text: str):
    """``module:function`` → the function, imported (the current directory is importable)."""
    module, _, name = text.partition(":")
    if not module or not name:
        raise ValueError(f"{text!r} is not module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module), name)


def resolve_model(text: str):
    """(shapes, torch model or None) from a preset, shapes, a JSON list or ``module:function``."""
    if ":" in text and not Path(text).is_file():
        built = load_object(text)()
        if hasattr(built, "parameters"):
            shapes = [tuple(p.shape) for p in built.parameters() if p.requires_grad]
            return shapes, built
        return [tuple(int(d) for d in s) for s in built], None
    return advisor.parse_model(text), None


def machine_info(hvd, device: str) -> dict:
    import torch

    controller = "mpi" if hvd.mpi_enabled() else "gloo" if hvd.gloo_enabled() else "unknown"
    info = {**machine.describe(), "torch_threads": torch.get_num_threads(), "device": device,
            "controller": controller, "nccl": bool(hvd.nccl_built()), "workers": hvd.size()}
    if device != "cpu":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def horovod_cycle_seconds() -> float:
    """Horovod's cycle time as this process set it (``HOROVOD_CYCLE_TIME``, ms; Horovod's default 1)."""
    return float(os.environ.get("HOROVOD_CYCLE_TIME", "1")) / 1e3


# ---------------------------------------------------------------------------- the program
def build_fit(network: NetworkFit, workers: int, codec: Dict[str, dict], shapes: Sequence[Shape],
              compute_s: Optional[float], link_bps: Optional[float], machine: dict,
              seconds: float, model_name: Optional[str] = None,
              profile: Optional[ComputeProfile] = None, cycle_s: Optional[float] = None) -> Fit:
    """The advisor's `Fit` from the measurements. With a nominal ``link_bps`` η = B / link;
    otherwise the fit's bandwidth is the measured B itself (η = 1). A measured ``profile`` (its
    step is ``compute_s``) gives the advisor when each gradient is ready in backprop, and
    ``cycle_s`` Horovod's cycle time, by which it schedules the rounds started in backprop."""
    efficiency = network.bandwidth_bps / link_bps if link_bps else 1.0
    per_element = dict(Fit().codec_s_per_element)
    for spec, result in codec.items():
        t = advisor.traffic(spec, shapes)
        if spec == "none" or not t.compressed_elements:
            continue
        per_element[advisor.codec_key(spec)] = advisor.codec_per_element(spec, t, result["codec_s"])
    spread = dict(network.spread)
    source = (f"calibrated by horovod_powersgd.calibrate: {workers} workers, {machine.get('controller')}, "
              f"{machine.get('device')}, {seconds:.0f} s; network fit median error {network.median_error:.1%}")
    fit_ = Fit(efficiency=efficiency, latency_s=network.latency_s, codec_s_per_element=per_element,
               source=source, round_overhead_s=network.round_overhead_s,
               tensor_overhead_s=network.tensor_overhead_s, burst_bytes=network.burst_bytes,
               bandwidth_bps=link_bps or network.bandwidth_bps, workers=workers,
               codec_s_per_step={spec: r["codec_s"] for spec, r in codec.items()},
               codec_shapes=[list(map(int, s)) for s in shapes], compute_s=compute_s,
               spread=spread, machine=machine, model=model_name,
               gradient_ready_s=None if profile is None else list(profile.gradient_ready_s),
               backward_s=None if profile is None else profile.backward_s, cycle_s=cycle_s)
    # σ: what a whole Horovod step costs beyond its codec and isolated collectives (hooks, handles,
    # synchronize), from the synthetic steps of every spec. They start right after a barrier with
    # every gradient ready, so each round waits a whole cycle as the network phase's do: the rounds
    # one after the other (`communicate_seconds`), not the backprop schedule
    residuals = [r["synthetic_comm_codec_s"] - r["codec_s"]
                 - advisor.communicate_seconds(advisor.traffic(spec, shapes), workers, fit_.bandwidth_bps, fit_)
                 for spec, r in codec.items() if "synthetic_comm_codec_s" in r]
    if residuals:
        fit_.step_overhead_s = max(0.0, float(np.median(residuals)))
        fit_.spread["step_overhead_s"] = [float(v) for v in np.percentile(residuals, [10, 90])]
    return fit_


def refit(path: Path) -> Fit:
    """Re-analyse a fit file's raw samples and synthetic steps with this version's fitting (no
    Horovod, no measurement): ``python -m horovod_powersgd.calibrate --refit old.json --out new.json``."""
    data = json.loads(Path(path).read_text())
    cal = data["calibration"]
    points = [Sample(**p) for p in cal["samples"]]
    network = fit_network(points, data["workers"])
    shapes = [tuple(s) for s in data["codec_shapes"]]
    link = data["bandwidth_bps"] if data.get("efficiency", 1.0) != 1.0 else None
    profile = (ComputeProfile(data["compute_s"], data["backward_s"], data["gradient_ready_s"])
               if data.get("gradient_ready_s") is not None else None)
    return build_fit(network, data["workers"], cal["codec"], shapes, data.get("compute_s"), link,
                     data.get("machine", {}), cal.get("seconds", 0.0), data.get("model") or cal.get("model"),
                     profile, data.get("cycle_s"))


def write_fit(fit_: Fit, out: Path, calibration: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**dataclasses.asdict(fit_), "calibration": calibration}, indent=1) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m horovod_powersgd.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="preset, shapes like 1024x1568,1024, a .json list of shapes, or module:function")
    p.add_argument("--batch", default=None,
                   help="module:function(model) → a zero-argument callable returning one batch's loss "
                        "(measures compute; needs --model module:function building a torch model)")
    p.add_argument("--compute-ms", type=float, default=None,
                   help="your measured compute per step, if not measured with --batch")
    p.add_argument("--out", type=Path, default=Path("calibration.json"), help="the fit file (rank 0 writes it)")
    p.add_argument("--budget", type=float, default=120.0,
                   help="seconds for all measurements (default 120; start-up not included)")
    p.add_argument("--specs", default=";".join(advisor.DEFAULT_SPECS),
                   help="';'-separated compressor specs whose codec is measured and compared")
    p.add_argument("--link-rate", default=None,
                   help="the links' nominal rate (e.g. 10gbit): the fit then also gives η = B_eff / rate")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: torch's)")
    p.add_argument("--compare-bandwidth", default="100gbit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--refit", type=Path, default=None,
                   help="re-analyse the raw samples of a fit file written before (no Horovod) and write --out")
    args = p.parse_args(argv)
    if args.model is None and args.refit is None:
        p.error("--model is required")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.refit is not None:
        fit_ = refit(args.refit)
        calibration = json.loads(args.refit.read_text())["calibration"]
        write_fit(fit_, args.out, calibration)
        shapes = [tuple(s) for s in fit_.codec_shapes]
        print(report(fit_, shapes, fit_.model or "model", calibration["codec"], fit_.compute_s,
                     args.compare_bandwidth))
        print(f"\nwrote {args.out} (re-analysed {args.refit})")
        return 0
    import horovod.torch as hvd
    import torch

    hvd.init()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda":
        torch.cuda.set_device(hvd.local_rank())
    rank0 = hvd.rank() == 0
    if hvd.size() < 2:
        if rank0:
            print("calibrate: run it on 2+ ranks under your launcher (horovodrun -np N, mpirun -np N): "
                  "one process has no network to measure", file=sys.stderr)
        return 2
    cycle_s = horovod_cycle_seconds()  # read before measuring: a bad value fails every rank at once, early
    shapes, model = resolve_model(args.model)
    if args.batch and model is None:
        raise SystemExit("calibrate: --batch needs --model module:function that builds a torch model")
    specs, refused = advisor.available_specs(s.strip() for s in args.specs.split(";") if s.strip())
    specs = ["none"] + [s for s in specs if s != "none"]
    # the budget: network 45 %, codec 40 %, compute 15 % (codec gets it without --batch)
    shares = {"network": 0.45, "codec": 0.40 if args.batch else 0.55, "compute": 0.15 if args.batch else 0.0}
    started = time.perf_counter()
    bar = None
    if rank0 and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=round(args.budget), unit="s", desc="calibrate", file=sys.stdout,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s")

    def progress(phase, _elapsed):
        if bar is not None:
            bar.set_description(f"calibrate: {phase}")
            bar.update(min(args.budget, time.perf_counter() - started) - bar.n)

    compute_s = args.compute_ms / 1e3 if args.compute_ms is not None else None
    profile = None
    if args.batch:
        # first: measured after the network and codec phases, the LSTM's plain step read 10–30 %
        # slower than the benchmark's; the allocations those phases leave behind are the suspect
        progress("compute", 0)
        profile = measure_compute(hvd, model, load_object(args.batch)(model), args.budget * shares["compute"])
        compute_s = profile.step_s
    source = HorovodSource(hvd, device)
    points = measure_network(source, args.budget * shares["network"], progress=progress)
    network = fit_network(points, hvd.size())
    codec = measure_codec(hvd, specs, shapes, device, args.budget * shares["codec"], progress=progress)
    progress("done", 0)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    machine = machine_info(hvd, device)
    link = advisor.parse_rate(args.link_rate) if args.link_rate else None
    fit_ = build_fit(network, hvd.size(), codec, shapes, compute_s, link, machine, seconds, args.model, profile,
                     cycle_s)
    if rank0:
        write_fit(fit_, args.out, {
            "model": args.model, "seconds": seconds, "budget_s": args.budget,
            "network_median_error": network.median_error, "refused_specs": refused,
            "codec": codec, "samples": [dataclasses.asdict(p) for p in points]})
        print(report(fit_, shapes, args.model, codec, compute_s, args.compare_bandwidth, refused))
        print(f"\nwrote {args.out} ({seconds:.0f} s); the same table later, or for another link or worker "
              f"count: python -m horovod_powersgd.advisor --fit {args.out} [--bandwidth 10gbit] [--workers 16]"
              + ("" if compute_s is not None else " --compute-ms <your compute>"))
    hvd.barrier()
    return 0


def report(fit_: Fit, shapes, model_name: str, codec: Dict[str, dict], compute_s: Optional[float],
           compare: str, refused: Sequence[str] = ()) -> str:
    """What calibrate prints: the measured cluster, then the advisor's table and recommendation."""
    m = fit_.machine
    bps, workers = fit_.bandwidth_bps, fit_.workers
    note = "measured" if compute_s is not None else "not measured: communication and codec only (--batch / --compute-ms)"
    lines = [f"cluster: {workers} workers, {m.get('controller')}, {m.get('device')}"
             f"{' (' + m['gpu'] + ')' if m.get('gpu') else ''}; {m.get('cpu')}, {m.get('cores')} cores, "
             f"BLAS {m.get('blas')}, {m.get('torch_threads')} torch thread(s) per rank",
             f"network: {advisor.describe_fit(fit_)}",
             f"{model_name}: {sum(map(numel, shapes)) / 1e6:.2f}M parameters in {len(shapes)} tensors, "
             f"compute {(compute_s or 0) * 1e3:.1f} ms/step ({note})",
             advisor.describe_overlap(fit_, shapes, compute_s or 0.0), ""]
    rows = advisor.table(shapes, bps, workers, compute_s or 0.0, fit_, list(codec), 1.0,
                         advisor.parse_rate(compare))
    lines.append(advisor.format_table(rows, compare))
    lines += [f"skipped: {s}" for s in refused]
    lines += ["", advisor.recommendation(rows, bps, workers)]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
