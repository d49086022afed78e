"""Does compression pay on *my* network? A cost model of one data-parallel step, and a CLI.

    python -m horovod_powersgd.advisor --model resnet18 --bandwidth 10gbit --workers 8
    python -m horovod_powersgd.advisor --model 1024x1568,1024,10x1024 --bandwidth 1gbit --compute-ms 70
    python -m horovod_powersgd.advisor --fit fit.json     # calibrated on your cluster (`calibrate`)

Model of one step:

    t_step = t_compute + t_codec + t_exposed
    ring all-reduce of S bytes, k tensors:         t = 2(N−1)/N · S / (η·B) + 2(N−1)·α + β + k·γ
    ring all-gather of s bytes per rank, k tensors: t = (N−1) · s / (η·B) + (N−1)·α + β + k·γ

B is the per-worker link bandwidth, N the workers, η the fraction of B a collective achieves (TCP and
framing overhead, Horovod's pipeline), α the per-hop latency (``--latency-us``, default 50 µs), β the
fixed cost of one collective round in the framework (Horovod's negotiation and cycle, waking the
threads involved), γ the cost of each tensor in a round and σ what a whole Horovod step costs beyond
that (hooks, handles; γ and σ are 0 unless calibrated). Bytes per round come from each compressor's
own ``transfers`` (`traffic`): which collective, how many bytes and in which round, per gradient,
fused into rounds as Horovod runs them (`horovod_powersgd.core.wire`). E.g. classic PowerSGD sends
r·n numbers (with the uncompressed tensors) and r·m in two all-reduce rounds, ``alternate=True`` one
round of r·max(n, m) (P or Q, padded to one shape), ``two_sided=True`` one round of r(n+m);
all-gather compressors all-gather their messages
(SignNorm: signs and a scale, top-k: values and indices) next to a 4-byte placeholder all-reduce per
tensor, i.e. two rounds.

t_compute is the plain step (forward, backward, update, no Horovod). t_exposed, the communication
backprop does not hide, depends on what the fit knows of the model:

* with the backprop profile `horovod_powersgd.calibrate` measured on the model (when each gradient
  is ready, and when backward returns; `Fit.backprop_profile`), the rounds are scheduled as
  Horovod's background thread runs them (`overlapped_seconds`): the transfers of gradients ready
  so far go as one fused round per collective, the next round takes what became ready meanwhile;
  t_exposed = max(0, end of the last such round − end of backward) + the rounds the compressor
  runs itself after backprop (``Transfer.round`` ≥ 1) + σ;
* without one (presets, shapes, a fit made without ``--batch``), every round is charged one after
  the other, none hidden behind backprop (`communicate_seconds`): pessimistic for all, most for
  uncompressed all-reduce, whose early gradients travel during the rest of backprop.

t_codec = c·d summed over tensors, with c (seconds per element, per compressor; PowerSGD's scales
with the rank) fitted from this project's measurements, like η and β (see `fit`). The defaults come
from the fit shipped with the package, ``horovod_powersgd/data/default_fit.json`` (`FIT_PATH`), which
``benchmarks.run`` writes from its runs and which names the machine they ran on; without it the
advisor says so and falls back to built-in guesses (`Fit`'s defaults).
``--fit PATH`` reads a fit that `horovod_powersgd.calibrate` measured on *your* cluster instead:
its α, β, γ, σ, bandwidth, workers, compute and the codec of every spec measured on your shapes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import machine
from .core import wire
from .core.registry import build, parse_spec
from .core.shapes import numel
from .core.wire import Round

#: the default fit: package data (setup.cfg), written by ``benchmarks.report`` from the benchmark's runs
FIT_PATH = Path(__file__).resolve().parent / "data" / "default_fit.json"
Shape = Tuple[int, ...]


# ---------------------------------------------------------------------------- units and shapes
def parse_rate(text: str) -> float:
    """'10gbit' / '200mbit' / '1.5e9' → bits per second."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kmgt]?)(bit|bps|b/s)?\s*", text.lower())
    if not match:
        raise ValueError(f"cannot read a bandwidth from {text!r} (try 10gbit, 200mbit)")
    return float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[match.group(2)]


def format_rate(bps: float) -> str:
    return f"{bps / 1e9:.3g} Gbit/s" if bps >= 1e9 else f"{bps / 1e6:.3g} Mbit/s"


def resnet18_shapes(classes: int = 1000) -> List[Shape]:
    """ResNet-18 (He et al. 2016, torchvision layout): 11.7M parameters (conv, BN weight+bias, fc)."""
    shapes: List[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    channels = 64
    for out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            cin = channels if block == 0 else out
            shapes += [(out, cin, 3, 3), (out,), (out,), (out, out, 3, 3), (out,), (out,)]
            if block == 0 and (stride != 1 or cin != out):
                shapes += [(out, cin, 1, 1), (out,), (out,)]
        channels = out
    return shapes + [(classes, 512), (classes,)]


def fashion_cnn_shapes(hidden: int = 1024) -> List[Shape]:
    """examples/torch_fashion_mnist.py's FashionCNN."""
    return [(16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (hidden, 1568), (hidden,), (10, hidden), (10,)]


def ptb_lstm_shapes(vocab: int = 10000, emb: int = 200, hidden: int = 200, layers: int = 2) -> List[Shape]:
    """examples/torch_ptb_lstm.py's WordLSTM (PyTorch nn.LSTM: W_ih, W_hh, b_ih, b_hh per layer)."""
    shapes: List[Shape] = [(vocab, emb)]
    for layer in range(layers):
        shapes += [(4 * hidden, emb if layer == 0 else hidden), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    return shapes + [(vocab, hidden), (vocab,)]


PRESETS = {"resnet18": resnet18_shapes, "fashion_cnn": fashion_cnn_shapes, "ptb_lstm": ptb_lstm_shapes}


def parse_model(text: str) -> List[Shape]:
    """A preset name, a JSON file with a list of shapes, or shapes like '1024x1568,1024,10x1024'."""
    if text in PRESETS:
        return PRESETS[text]()
    path = Path(text)
    if path.suffix == ".json" and path.is_file():
        return [tuple(int(d) for d in s) for s in json.loads(path.read_text())]
    try:
        return [tuple(int(d) for d in item.split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--model: {text!r} is neither a preset ({', '.join(PRESETS)}), a .json "
                         f"file of shapes, nor shapes like 1024x1568,1024") from None


# ---------------------------------------------------------------------------- wire formats
@dataclasses.dataclass
class Traffic:
    """What one rank hands to collectives in one step: the fused rounds (`core.wire.fuse` of every
    gradient's `transfers`), and how many elements went through a codec."""

    rounds: List[Round]
    compressed_elements: int = 0

    @property
    def allreduce_rounds(self) -> List[int]:
        """Bytes of each all-reduce round."""
        return [r.nbytes for r in self.rounds if r.collective == "allreduce"]

    @property
    def allgather_bytes(self) -> int:
        """Bytes this rank contributes to all-gathers."""
        return sum(r.nbytes for r in self.rounds if r.collective == "allgather")

    @property
    def total(self) -> int:
        return sum(r.nbytes for r in self.rounds)


def compressor_for(spec: str):
    """The core compressor a spec names (`core.registry.build`, no backend: it describes its traffic
    but runs nothing), None for ``"none"``. Raises for a spec the registry or the class refuses."""
    return build(spec)


def transfers(spec: str, shapes: Sequence[Shape], dtype: str = "float32") -> List[List[wire.Transfer]]:
    """Every gradient's ``transfers`` as ``spec``'s compressor states them (uncompressed: all-reduced
    as they are), gradient by gradient."""
    compressor = compressor_for(spec)
    return [wire.raw(s, dtype) if compressor is None else compressor.transfers(tuple(s), dtype) for s in shapes]


def traffic(spec: str, shapes: Sequence[Shape], dtype: str = "float32") -> Traffic:
    """The rounds one step of ``spec`` runs on gradients of ``shapes``: every gradient's
    `transfers`, fused."""
    per_tensor = transfers(spec, shapes, dtype)
    return Traffic(wire.fuse(t for ts in per_tensor for t in ts),
                   sum(numel(s) for s, ts in zip(shapes, per_tensor) if wire.compressed(ts)))


# ---------------------------------------------------------------------------- time model
#: built-in codec guesses (seconds per element; PowerSGD's per unit of rank), used for any compressor
#: a fit has no measurement of
DEFAULT_CODEC_S_PER_ELEMENT = {"powersgd": 1.5e-9, "unbiased_lowrank": 1.5e-9, "fp16": 1e-9, "bf16": 1e-9,
                               "signum": 5e-9, "signnorm": 5e-9, "topk": 10e-9, "randomk": 5e-9}


@dataclasses.dataclass
class Fit:
    efficiency: float = 0.85  # η: the benchmark measured 85–96 % of the ring prediction at ≤ 1 Gbit/s
    latency_s: float = 50e-6  # α per hop: the network's, not fitted (the emulated links add none)
    codec_s_per_element: Dict[str, float] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_CODEC_S_PER_ELEMENT))  # per element, (PowerSGD) per unit of rank
    source: str = "built-in defaults, no fit file"
    round_overhead_s: float = 1e-3  # β per collective round (framework), fitted
    # --- measured by `horovod_powersgd.calibrate` on the user's cluster (None/empty: not measured)
    tensor_overhead_s: float = 0.0  # γ: extra cost per tensor fused into a round (negotiation, copies)
    step_overhead_s: float = 0.0  # σ: a Horovod step's cost beyond codec and isolated collectives
    burst_bytes: float = 0.0  # bytes per round a link sends before its sustained rate applies (token bucket)
    bandwidth_bps: Optional[float] = None  # the link the fit was made on (the advisor's default)
    workers: Optional[int] = None  # ranks it was measured with
    codec_s_per_step: Dict[str, float] = dataclasses.field(default_factory=dict)  # spec -> s, on:
    codec_shapes: Optional[List[List[int]]] = None  # … these gradient shapes
    model: Optional[str] = None  # … of this model (as given to calibrate's --model)
    compute_s: Optional[float] = None  # measured compute per step for codec_shapes' model
    # when each gradient of codec_shapes is ready, and when backward returns: seconds from the start
    # of a compute_s step (forward included), the slowest rank's, median over steps
    gradient_ready_s: Optional[List[float]] = None
    backward_s: Optional[float] = None
    cycle_s: Optional[float] = None  # Horovod's cycle time (HOROVOD_CYCLE_TIME) during the calibration
    spread: Dict[str, List[float]] = dataclasses.field(default_factory=dict)  # name -> [p10, p90]
    machine: Dict[str, object] = dataclasses.field(default_factory=dict)  # CPU, cores, BLAS, device…

    @classmethod
    def load(cls, path: Path = FIT_PATH) -> "Fit":
        path = Path(path)
        if path.is_file():
            data = json.loads(path.read_text())
            known = {f.name for f in dataclasses.fields(cls)}
            fit_ = cls(**{k: v for k, v in data.items() if k in known})
            fit_.source = data.get("source", str(path))
            return fit_
        return cls(source=f"built-in defaults: no fit file at {path}")

    def save(self, path: Path = FIT_PATH) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")

    def calibrated_on(self, shapes: Sequence[Shape]) -> bool:
        """Whether calibrate measured codec (and compute) on exactly this model's shapes."""
        return self.codec_shapes is not None and (
            [list(map(int, s)) for s in shapes] == [list(map(int, s)) for s in self.codec_shapes])

    def measured_codec(self, spec: str, shapes: Sequence[Shape]) -> Optional[float]:
        """The codec seconds per step calibrate measured for ``spec`` on exactly these shapes."""
        if spec not in self.codec_s_per_step or not self.calibrated_on(shapes):
            return None
        return self.codec_s_per_step[spec]

    def backprop_profile(self, shapes: Sequence[Shape], compute_s: float
                         ) -> Optional[Tuple[List[float], float]]:
        """(each gradient's ready time, backward's end) for a step of ``compute_s`` on exactly the
        calibrated shapes: the measured profile, stretched in proportion to ``compute_s`` against
        the measured compute; None without a profile of these shapes."""
        if (self.gradient_ready_s is None or self.backward_s is None or not self.compute_s
                or not self.calibrated_on(shapes) or len(self.gradient_ready_s) != len(shapes)):
            return None
        stretch = compute_s / self.compute_s
        return [t * stretch for t in self.gradient_ready_s], self.backward_s * stretch


def collective_seconds(collective: str, nbytes: float, workers: int, bps: float, fit: Fit,
                       tensors: int = 1) -> float:
    """One fused round of ``collective`` to which each rank contributes ``nbytes`` in ``tensors``
    tensors: the bytes each rank moves over its link (`core.wire.link_bytes`, less the link's burst
    allowance) at η·B, a latency α per hop of the ring (`core.wire.hops`), β per round, γ per tensor."""
    if workers < 2:
        return 0.0
    sent = max(0.0, wire.link_bytes(collective, nbytes, workers) - fit.burst_bytes)
    return (sent * 8 / (fit.efficiency * bps) + wire.hops(collective, workers) * fit.latency_s
            + fit.round_overhead_s + tensors * fit.tensor_overhead_s)


def communicate_seconds(t: Traffic, workers: int, bps: float, fit: Fit) -> float:
    """Every round of one step, one after the other (no overlap with backprop assumed), plus the
    step's own overhead σ (calibrated fits only)."""
    if workers < 2:
        return 0.0
    return (sum(collective_seconds(r.collective, r.nbytes, workers, bps, fit, r.tensors) for r in t.rounds)
            + fit.step_overhead_s)


#: phases of Horovod's cycle against the step that `overlapped_seconds` averages over
CYCLE_PHASES = 8


def overlapped_seconds(per_tensor: Sequence[Sequence[wire.Transfer]], ready_s: Sequence[float],
                       backward_s: float, workers: int, bps: float, fit: Fit) -> float:
    """The communication of one step that backprop does not hide, with gradient ``i`` ready at
    ``ready_s[i]`` and backward returning at ``backward_s`` (seconds from the step's start).

    Round-0 transfers (started from backprop's hooks) are scheduled as Horovod's background thread
    runs them: a cycle starts every T = ``fit.cycle_s`` (``HOROVOD_CYCLE_TIME``), or as soon as the
    previous one's rounds are done if they took longer, and runs one fused round per collective
    over every transfer queued by then; what becomes ready later waits for a later cycle. A round
    costs `collective_seconds` less the wait for a cycle's start that β holds (calibrate times
    each round right after a barrier, i.e. one whole cycle later: min(T, β)). The step's phase
    against the cycle is not known, so the exposed time is averaged over `CYCLE_PHASES` phases.
    Exposed: how far the last round-0 round ends after backward, plus every later round
    (``Transfer.round`` ≥ 1, run after backprop, one after the other, each waiting for its cycle
    as calibrate's rounds do: `collective_seconds`) and σ."""
    if workers < 2:
        return 0.0
    queue = sorted(((ready, t) for ready, ts in zip(ready_s, per_tensor) for t in ts if t.round == 0),
                   key=lambda item: item[0])
    cycle = fit.cycle_s or 0.0
    waits = min(cycle, fit.round_overhead_s)
    exposed = []
    for phase in ([cycle * k / CYCLE_PHASES for k in range(CYCLE_PHASES)] if cycle else [0.0]):
        cycle_start, done, first = phase - cycle, 0.0, 0
        while first < len(queue):
            start = max(cycle_start + cycle, done)
            if queue[first][0] > start:  # idle cycles until the next gradient is ready
                start += math.ceil((queue[first][0] - start) / cycle) * cycle if cycle else queue[first][0] - start
            last = first
            while last < len(queue) and queue[last][0] <= start:
                last += 1
            done = start + sum(collective_seconds(r.collective, r.nbytes, workers, bps, fit, r.tensors) - waits
                               for r in wire.fuse(t for _, t in queue[first:last]))
            cycle_start, first = start, last
        exposed.append(max(0.0, done - backward_s))
    after = Traffic([r for r in wire.fuse(t for ts in per_tensor for t in ts) if r.index > 0])
    return sum(exposed) / len(exposed) + communicate_seconds(after, workers, bps, fit)  # σ included


def codec_key(spec: str) -> str:
    """Per-element codec costs are kept per compressor, PowerSGD's single-round schemes apart."""
    name, _ = parse_spec(spec)
    if name == "powersgd":
        cfg = compressor_for(spec).cfg
        for scheme in ("alternate", "two_sided"):
            if getattr(cfg, scheme):
                return f"powersgd.{scheme}"
    return name


def codec_units(spec: str) -> int:
    """What a per-element codec cost is per: PowerSGD's work grows with rank × power iterations
    (its products and orthogonalizations are r columns wide, k times), the others' with d alone."""
    if parse_spec(spec)[0] != "powersgd":
        return 1
    cfg = compressor_for(spec).cfg
    return cfg.rank * cfg.power_iterations


def codec_per_element(spec: str, t: Traffic, codec_s: float) -> float:
    """A measured codec time per step as the fit keeps it: per compressed element and `codec_units`."""
    return codec_s / (t.compressed_elements * codec_units(spec))


#: without a measurement, a single-round scheme's codec costs this fraction of the classic one's:
#: alternating, one product per step instead of two; two-sided, both products and a rank-2r rebuild
SINGLE_ROUND_CODEC_FRACTION = {"powersgd.alternate": 0.6, "powersgd.two_sided": 1.0}


def codec_seconds(spec: str, t: Traffic, fit: Fit, scale: float = 1.0) -> float:
    name, _ = parse_spec(spec)
    key = codec_key(spec)
    costs = {**DEFAULT_CODEC_S_PER_ELEMENT, **fit.codec_s_per_element}  # a fit may predate a compressor
    if key in costs:
        per_element = costs[key]
    else:
        per_element = costs.get(name, 0.0) * SINGLE_ROUND_CODEC_FRACTION.get(key, 1.0)
    return per_element * codec_units(spec) * t.compressed_elements * scale


@dataclasses.dataclass
class Prediction:
    spec: str
    compute_s: float
    codec_s: float
    communicate_s: float  # the communication backprop does not hide (all of it without a profile)
    bytes_per_step: int

    @property
    def step_s(self) -> float:
        return self.compute_s + self.codec_s + self.communicate_s


def predict(spec: str, shapes: Sequence[Shape], bps: float, workers: int, compute_s: float,
            fit: Optional[Fit] = None, codec_scale: float = 1.0) -> Prediction:
    """One step of ``spec`` with ``compute_s`` of plain compute; the module docstring has the model."""
    fit = fit or Fit.load()
    t = traffic(spec, shapes)
    profile = fit.backprop_profile(shapes, compute_s)
    comm = (communicate_seconds(t, workers, bps, fit) if profile is None
            else overlapped_seconds(transfers(spec, shapes), *profile, workers, bps, fit))
    measured = fit.measured_codec(spec, shapes)
    codec = codec_seconds(spec, t, fit, codec_scale) if measured is None else measured * codec_scale
    return Prediction(spec, compute_s, codec, comm, t.total)


def speedup(spec: str, shapes, bps, workers, compute_s, fit=None, codec_scale=1.0) -> float:
    """Predicted step-time speed-up of ``spec`` over uncompressed all-reduce (> 1: faster)."""
    base = predict("none", shapes, bps, workers, compute_s, fit, codec_scale).step_s
    return base / predict(spec, shapes, bps, workers, compute_s, fit, codec_scale).step_s


def break_even_bandwidth(spec, shapes, workers, compute_s, fit=None, codec_scale=1.0,
                         low=1e6, high=1e13) -> Optional[float]:
    """The bandwidth above which ``spec`` stops paying (speed-up = 1), by bisection in log space;
    None when it pays (or loses) across the whole range."""
    f = lambda bps: speedup(spec, shapes, bps, workers, compute_s, fit, codec_scale) - 1.0  # noqa: E731
    if f(low) <= 0 or f(high) >= 0:
        return None
    for _ in range(60):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if f(mid) > 0 else (low, mid)
    return math.sqrt(low * high)


# ---------------------------------------------------------------------------- fitting
def fit(measurements: Iterable[dict], base: Optional[Fit] = None, max_workers: int = 2) -> Fit:
    """Fit η, β and the codec costs from benchmark measurements (α stays the base's: a network
    property that the emulated links, which add no delay, cannot measure).

    Each measurement: {"spec", "shapes", "workers", "bps", "communicate_s", "codec_s"}. η and β come
    from a least-squares fit over every compressor's measured exposed communication,

        communicate − H·α ≈ X / η + R · β,

    X = the ideal transfer time of the spec's rounds (η = 1), R = its number of collective rounds,
    H = its hop count. Only runs with ≤ ``max_workers`` workers are fitted: on this 2-core machine
    more workers share cores, which adds CPU contention the network model must not absorb
    (measured by the benchmark); it still reports the prediction error for them.
    Codec costs: the median over measurements of codec_s / (elements × rank).
    """
    import numpy as np

    base = base or Fit()
    exact = Fit(1.0, 0.0, {}, "", 0.0)
    rows, target, codec = [], [], {}
    for m in measurements:
        t = traffic(m["spec"], m["shapes"])
        n, bps = m["workers"], m["bps"]
        if 2 <= n <= max_workers:
            x = sum(collective_seconds(r.collective, r.nbytes, n, bps, exact) for r in t.rounds)
            hops = sum(wire.hops(r.collective, n) for r in t.rounds)
            rows.append([x, len(t.rounds)])
            target.append(m["communicate_s"] - hops * base.latency_s)
        if t.compressed_elements and m.get("codec_s") is not None:
            codec.setdefault(codec_key(m["spec"]), []).append(codec_per_element(m["spec"], t, m["codec_s"]))
    efficiency, overhead = base.efficiency, base.round_overhead_s
    if len(rows) >= 2:
        A, y = np.asarray(rows, dtype=float), np.asarray(target, dtype=float)
        (inv_eta, beta), *_ = np.linalg.lstsq(A, y, rcond=None)
        if beta < 0:  # an overhead cannot be negative: refit the bandwidth term alone
            inv_eta, beta = float(A[:, 0] @ y / (A[:, 0] @ A[:, 0])), 0.0
        if inv_eta > 0:
            efficiency, overhead = float(min(1.0, 1.0 / inv_eta)), float(beta)
    per_element = dict(base.codec_s_per_element)
    per_element.update({k: float(np.median(v)) for k, v in codec.items()})
    return Fit(efficiency, base.latency_s, per_element,
               f"fitted by benchmarks.run on {len(rows)} runs with <= {max_workers} workers", overhead)


# ---------------------------------------------------------------------------- CLI
#: every registered compressor: PowerSGD at ranks 1/2/4 in its three schemes, and the baselines
DEFAULT_SPECS = ("fp16", "bf16", "powersgd:rank=1", "powersgd:rank=2", "powersgd:rank=4",
                 "powersgd:rank=1,alternate=True", "powersgd:rank=2,alternate=True",
                 "powersgd:rank=4,alternate=True", "powersgd:rank=1,two_sided=True",
                 "powersgd:rank=2,two_sided=True", "powersgd:rank=4,two_sided=True",
                 "unbiased_lowrank:rank=2", "signum", "signnorm",
                 "topk:ratio=0.01", "randomk:ratio=0.01")
# Compute-time assumptions for presets when --compute-ms is not given (forward+backward+update).
PRESET_COMPUTE_MS = {"resnet18": (60.0, "assumed: ResNet-18, batch 64 per GPU, one V100-class GPU"),
                     "fashion_cnn": (34.0, "measured by benchmarks.run: 1 CPU thread, batch 64"),
                     "ptb_lstm": (210.0, "measured by benchmarks.run: 1 CPU thread, batch 20×35")}


def available_specs(specs: Iterable[str]) -> Tuple[List[str], List[str]]:
    """(specs this version's compressors accept, the ones they refuse, with the reason)."""
    ok, refused = [], []
    for spec in specs:
        try:
            compressor_for(spec)
            ok.append(spec)
        except (TypeError, ValueError, KeyError) as error:
            refused.append(f"{spec} ({type(error).__name__}: {error})")
    return ok, refused


def table(shapes: Sequence[Shape], bps: float, workers: int, compute_s: float, fit_: Fit,
          specs: Sequence[str], codec_scale: float = 1.0, compare_bps: float = 100e9) -> List[dict]:
    """One row per spec ('none' first): predicted step time, its parts, speed-up, break-even."""
    base = predict("none", shapes, bps, workers, compute_s, fit_, codec_scale)
    rows = []
    for spec in ["none"] + [s for s in specs if s != "none"]:
        p = predict(spec, shapes, bps, workers, compute_s, fit_, codec_scale)
        t = traffic(spec, shapes)
        rows.append({"spec": spec, "step_ms": p.step_s * 1e3, "compute_ms": p.compute_s * 1e3,
                     "codec_ms": p.codec_s * 1e3, "communicate_ms": p.communicate_s * 1e3,
                     "MB_per_step": p.bytes_per_step / 1e6, "speedup": base.step_s / p.step_s,
                     "rounds": len(t.rounds),
                     "codec_measured": fit_.measured_codec(spec, shapes) is not None,
                     "speedup_at_compare": speedup(spec, shapes, compare_bps, workers, compute_s, fit_, codec_scale),
                     "break_even_bps": None if spec == "none" else
                     break_even_bandwidth(spec, shapes, workers, compute_s, fit_, codec_scale)})
    return rows


def pays_below(row: dict) -> str:
    if row["spec"] == "none":
        return "—"
    if row["break_even_bps"] is None:
        return "always" if row["speedup"] > 1 else "never"
    return format_rate(row["break_even_bps"])


#: what this project measured against a compressor's accuracy, said with any advice to use it
ACCURACY_CAVEATS = {
    "powersgd.alternate": "the alternating scheme trained markedly worse than classic under momentum "
                          "0.9 (docs, \"How it works\", the accuracy table)",
    "powersgd.two_sided": "the two-sided scheme trained about a point below classic under momentum "
                          "0.9 (docs, \"How it works\", \"Choosing a scheme\")",
    "unbiased_lowrank": "unbiased rank-2 low-rank diverged under momentum 0.9 and reached 0.647 "
                        "against 0.828 uncompressed without it in the momentum probe "
                        "(no error feedback: its variance goes straight into the step)",
}


#: predicted steps this close (relative) to the fastest are a tie at the model's accuracy (the
#: calibrated model's median error was 4–13 % in the calibration check, docs: advisor page)
TIE_MARGIN = 0.05


def tied_with_fastest(step_by_spec: dict, margin: float = TIE_MARGIN) -> list:
    """The specs whose predicted step is within ``margin`` of the fastest one, fastest first."""
    fastest = min(step_by_spec.values())
    return sorted((s for s, step in step_by_spec.items() if step <= fastest * (1 + margin)),
                  key=step_by_spec.get)


def accuracy_caveat(spec: str) -> Optional[str]:
    """What this project measured against ``spec``'s accuracy (`ACCURACY_CAVEATS`), None if nothing."""
    return ACCURACY_CAVEATS.get(codec_key(spec))


def advised(tied: list) -> str:
    """Among ``tied`` specs (fastest first), the fastest with no measured accuracy caveat, else the
    fastest."""
    return next((spec for spec in tied if accuracy_caveat(spec) is None), tied[0])


def recommendation(rows: List[dict], bps: float, workers: int, margin: float = TIE_MARGIN) -> str:
    """The advice in one sentence, with its reason.

    ``margin`` is also the least speed-up worth advising. Specs predicted within it of the fastest
    step are a tie (`tied_with_fastest`): the advice is the fastest of them without a measured
    accuracy caveat (`advised`, `ACCURACY_CAVEATS`), and says so; when all of them carry one, the
    advice is the fastest, its caveat said, and the fastest caveat-free spec that pays is named."""
    none = rows[0]
    by_spec = {r["spec"]: r for r in rows[1:]}
    tied = tied_with_fastest({spec: r["step_ms"] for spec, r in by_spec.items()}, margin) if by_spec else []
    fastest = by_spec[tied[0]] if tied else none
    where = f"at {format_rate(bps)} with {workers} workers"
    comm_share = none["communicate_ms"] / none["step_ms"] if none["step_ms"] else 0.0
    if fastest is none or fastest["speedup"] < 1 + margin:
        return (f"Recommendation: don't compress — no compressor is predicted more than {margin:.0%} faster "
                f"per step {where} (best: {fastest['spec']}, {fastest['speedup']:.2f}×), because the uncompressed "
                f"all-reduce is only {none['communicate_ms']:.1f} ms ({comm_share:.0%}) of its "
                f"{none['step_ms']:.1f} ms step and compressing costs about as much as it saves.")
    best = by_spec[advised(tied)]
    caveat = accuracy_caveat(best["spec"])
    accuracy = (f"accuracy is not modelled, and {caveat}: check it on your task" if caveat
                else "accuracy is not modelled: check it on your task")
    if best is not fastest:
        accuracy += (f"; {fastest['spec']}, predicted {fastest['step_ms']:.1f} ms, is within "
                     f"{margin:.0%} of it — a tie at the model's accuracy — but "
                     f"{accuracy_caveat(fastest['spec'])}")
    elif caveat:  # every spec in the tie has one: name the fastest that pays without
        clean = [r for r in by_spec.values() if accuracy_caveat(r["spec"]) is None and r["speedup"] >= 1 + margin]
        if clean:
            other = min(clean, key=lambda r: r["step_ms"])
            accuracy += (f"; the fastest spec with no such caveat, {other['spec']}, is predicted "
                         f"{other['step_ms']:.1f} ms ({other['speedup']:.2f}×)")
    return (f"Recommendation: {best['spec']} — predicted {best['speedup']:.2f}× faster per step "
            f"({best['step_ms']:.1f} vs {none['step_ms']:.1f} ms) {where}, because the uncompressed "
            f"all-reduce takes {none['communicate_ms']:.1f} ms ({comm_share:.0%}) of each step and it sends "
            f"{none['MB_per_step'] / max(best['MB_per_step'], 1e-12):.0f}× fewer bytes in {best['rounds']} "
            f"round(s) for {best['codec_ms']:.1f} ms of codec ({accuracy}).")


def format_table(rows: List[dict], compare: str) -> str:
    lines = [f"{'compressor':<32}{'MB/step':>9}{'compute':>9}{'codec':>8}{'comm':>9}{'step ms':>9}"
             f"{'speed-up':>10}{'@' + compare:>12}  pays below"]
    for r in rows:
        codec = f"{r['codec_ms']:.1f}" + ("" if r["codec_measured"] or r["spec"] == "none" else "*")
        lines.append(f"{r['spec']:<32}{r['MB_per_step']:>9.3f}{r['compute_ms']:>9.1f}{codec:>8}"
                     f"{r['communicate_ms']:>9.1f}{r['step_ms']:>9.1f}{r['speedup']:>9.2f}×"
                     f"{r['speedup_at_compare']:>11.2f}×  {pays_below(r)}")
    return "\n".join(lines)


def describe_overlap(fit_: Fit, shapes: Sequence[Shape], compute_s: float) -> str:
    """How the table treats communication during backprop, in words."""
    profile = fit_.backprop_profile(shapes, compute_s)
    if profile is None:
        return ("no backprop profile for this model: every round is charged after backprop, none hidden "
                "(pessimistic, most for uncompressed; calibrate with --batch to measure one)")
    ready, backward = profile
    cycle = f", Horovod cycle {fit_.cycle_s * 1e3:g} ms" if fit_.cycle_s else ""
    return (f"backprop profile: gradients ready {min(ready) * 1e3:.1f}–{max(ready) * 1e3:.1f} ms into the step, "
            f"backward done at {backward * 1e3:.1f} ms; comm = what the rounds started from backprop do not "
            f"hide{cycle}")


def describe_fit(fit_: Fit) -> str:
    spread = lambda key, unit, f: (f" [{f(fit_.spread[key][0]):.3g}–{f(fit_.spread[key][1]):.3g}]"  # noqa: E731
                                   if key in fit_.spread else "")
    text = (f"η={fit_.efficiency:.2f}, α={fit_.latency_s * 1e6:.0f} µs/hop{spread('latency_s', 'us', lambda v: v * 1e6)}, "
            f"β={fit_.round_overhead_s * 1e3:.2f} ms/round{spread('round_overhead_s', 'ms', lambda v: v * 1e3)}")
    if fit_.tensor_overhead_s:
        text += f", γ={fit_.tensor_overhead_s * 1e6:.0f} µs/tensor{spread('tensor_overhead_s', 'us', lambda v: v * 1e6)}"
    if fit_.burst_bytes:
        text += f", burst={fit_.burst_bytes / 1e3:.0f} kB/round{spread('burst_bytes', 'kB', lambda v: v / 1e3)}"
    if fit_.step_overhead_s:
        text += f", σ={fit_.step_overhead_s * 1e3:.1f} ms/step{spread('step_overhead_s', 'ms', lambda v: v * 1e3)}"
    if fit_.bandwidth_bps:
        text += f", B_eff={format_rate(fit_.efficiency * fit_.bandwidth_bps)}"
        if "effective_bps" in fit_.spread:
            text += f" [{fit_.spread['effective_bps'][0] / 1e6:.0f}–{fit_.spread['effective_bps'][1] / 1e6:.0f} Mbit/s]"
    where = f"; on {machine.one_line(fit_.machine)}" if fit_.machine else ""
    return text + f" ({fit_.source}{where})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m horovod_powersgd.advisor",
                                     description="Predict whether gradient compression pays per step.")
    parser.add_argument("--model", default=None,
                        help=f"preset ({', '.join(PRESETS)}), shapes like 1024x1568,1024, or a .json list "
                             f"(default: the model the --fit was calibrated on, else resnet18)")
    parser.add_argument("--fit", type=Path, default=None,
                        help="a fit file written by `python -m horovod_powersgd.calibrate --out PATH` (default: "
                             "the package's data/default_fit.json, fitted by the benchmark on the machine it names)")
    parser.add_argument("--bandwidth", default=None,
                        help="per-worker link, e.g. 1gbit, 10gbit (default: the --fit's link, else 10gbit)")
    parser.add_argument("--workers", type=int, default=None, help="default: the --fit's, else 8")
    parser.add_argument("--compute-ms", type=float, default=None,
                        help="forward+backward+update time of one step without communication")
    parser.add_argument("--codec-scale", type=float, default=None,
                        help="multiply the fitted codec cost (below 1 for a faster device than the fit's)")
    parser.add_argument("--specs", default=";".join(DEFAULT_SPECS),
                        help="';'-separated compressor specs to compare with none")
    parser.add_argument("--compare-bandwidth", default="100gbit",
                        help="a second bandwidth for the one-line verdict")
    parser.add_argument("--latency-us", type=float, default=None, help="per-hop network latency α")
    parser.add_argument("--round-overhead-ms", type=float, default=None,
                        help="fixed cost β of one collective round (default: the fit's)")
    parser.add_argument("--json", action="store_true", help="print machine-readable output")
    args = parser.parse_args(argv)

    if args.fit is not None and not args.fit.is_file():
        parser.error(f"--fit {args.fit}: no such file")
    fit_path = args.fit if args.fit is not None else FIT_PATH
    fit_ = Fit.load(fit_path)
    if args.model is None and fit_.codec_shapes is not None:
        args.model, shapes = fit_.model or "calibrated model", [tuple(s) for s in fit_.codec_shapes]
    else:
        args.model = args.model or "resnet18"
        shapes = parse_model(args.model)
    bps = parse_rate(args.bandwidth) if args.bandwidth else (fit_.bandwidth_bps or 10e9)
    workers = args.workers or fit_.workers or 8
    other = parse_rate(args.compare_bandwidth)
    if args.compute_ms is not None:
        compute_s, compute_note = args.compute_ms / 1e3, "given"
    elif fit_.compute_s is not None and fit_.calibrated_on(shapes):
        compute_s, compute_note = fit_.compute_s, "measured by calibrate"
    elif args.model in PRESET_COMPUTE_MS:
        ms, compute_note = PRESET_COMPUTE_MS[args.model]
        compute_s = ms / 1e3
    else:
        parser.error("--compute-ms is required for a model given by shapes (or calibrate it with --batch)")
    codec_scale = 1.0 if args.codec_scale is None else args.codec_scale
    if args.latency_us is not None:
        fit_.latency_s = args.latency_us * 1e-6
    if args.round_overhead_ms is not None:
        fit_.round_overhead_s = args.round_overhead_ms * 1e-3
    specs, refused = available_specs(s.strip() for s in args.specs.split(";") if s.strip())
    rows = table(shapes, bps, workers, compute_s, fit_, specs, codec_scale, other)
    advice = recommendation(rows, bps, workers)
    if args.json:
        print(json.dumps({"model": args.model, "parameters": sum(map(numel, shapes)), "bps": bps,
                          "workers": workers, "compute_s": compute_s, "fit": dataclasses.asdict(fit_),
                          "rows": rows, "recommendation": advice, "refused_specs": refused}, indent=1))
        return 0
    print(f"{args.model}: {sum(map(numel, shapes)) / 1e6:.2f}M parameters, {workers} workers, "
          f"{format_rate(bps)} per worker, compute {compute_s * 1e3:.0f} ms/step ({compute_note}), "
          f"codec cost ×{codec_scale:g}; {describe_fit(fit_)}")
    print(describe_overlap(fit_, shapes, compute_s))
    if not fit_path.is_file():
        print(f"No fit: {fit_path} is missing (a source checkout whose benchmark never ran, or a damaged "
              f"install). Every figure below uses built-in guesses — η={fit_.efficiency:.2f}, "
              f"β={fit_.round_overhead_s * 1e3:.0f} ms/round, per-element codec costs — not measurements; "
              f"measure your cluster with python -m horovod_powersgd.calibrate and pass --fit.")
    print(format_table(rows, args.compare_bandwidth))
    if any(not r["codec_measured"] and r["spec"] != "none" for r in rows):
        print("* codec from a per-element cost (not measured for these shapes on this device)")
    for spec in refused:
        print(f"skipped: {spec}")
    psgd = next((r for r in rows if r["spec"] == "powersgd:rank=2"), None)
    if psgd is not None:
        verdict = lambda s: f"{s:.2f}× faster" if s >= 1 else f"slower ({s:.2f}×)"  # noqa: E731
        print(f"\nrank-2 PowerSGD predicted {verdict(psgd['speedup'])} per step at {format_rate(bps)} "
              f"with {workers} workers; {verdict(psgd['speedup_at_compare'])} at {format_rate(other)}.")
    print(advice)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
