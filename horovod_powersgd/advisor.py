"""Does compression pay on *my* network? A cost model of one data-parallel step, and a CLI.

    python -m horovod_powersgd.advisor --model resnet18 --bandwidth 10gbit --workers 8
    python -m horovod_powersgd.advisor --model 1024x1568,1024,10x1024 --bandwidth 1gbit --compute-ms 70

Model of one step (no overlap of communication with backprop assumed, i.e. pessimistic for all):

    t_step = t_compute + t_codec + Σ_rounds t_round
    ring all-reduce of S bytes:         t = 2(N−1)/N · S / (η·B) + 2(N−1)·α + β
    ring all-gather of s bytes per rank: t = (N−1) · s / (η·B) + (N−1)·α + β

B is the per-worker link bandwidth, N the workers, η the fraction of B a collective achieves (TCP and
framing overhead, Horovod's pipeline), α the network's per-hop latency (a property of *your* network:
``--latency-us``, default 50 µs) and β the fixed cost of one collective round in the framework
(Horovod's negotiation and cycle, waking the threads involved). Bytes per step come from each
compressor's wire format (below, float32 gradients of d elements, a matrix being n×m):

    none     all-reduce 4d                        fp16/bf16  all-reduce 2d
    powersgd two all-reduce rounds 4nr and 4mr for matrices with nm ≥ 2r(n+m), others 4d in round 1
    signum   all-gather ⌈d/8⌉ (+ a 4-byte placeholder all-reduce per tensor)
    topk     all-gather 8k, k = round(ratio·d) (+ placeholder)     randomk  all-reduce 4k

t_codec = c·d summed over tensors, with c (seconds per element, per compressor; PowerSGD's scales
with the rank) fitted from this project's measurements, like η and β (see `fit`). The defaults come
from ``results/advisor_fit.json`` when present: *this* machine's CPU, one thread per worker — on a
GPU, scale the codec cost with ``--codec-scale``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

FIT_PATH = Path(__file__).resolve().parent.parent / "results" / "advisor_fit.json"
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


def numel(shape: Shape) -> int:
    return math.prod(int(d) for d in shape)


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
    """Bytes one rank hands to collectives in one step, by round."""

    allreduce_rounds: List[int]  # bytes per all-reduce round (each round = one fused collective)
    allgather_bytes: int = 0  # bytes per rank all-gathered (one fused round)
    compressed_elements: int = 0  # elements that went through a compressor's codec

    @property
    def total(self) -> int:
        return sum(self.allreduce_rounds) + self.allgather_bytes


def parse_spec(spec: str) -> Tuple[str, dict]:
    name, _, rest = spec.strip().partition(":")
    kwargs = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, _, value = item.partition("=")
        try:
            kwargs[key.strip()] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            kwargs[key.strip()] = value.strip()
    return name.strip().lower(), kwargs


def traffic(spec: str, shapes: Sequence[Shape]) -> Traffic:
    """Bytes per step for ``spec`` on float32 gradients of ``shapes`` (see the module docstring)."""
    name, kw = parse_spec(spec)
    sizes = [numel(s) for s in shapes]
    d = sum(sizes)
    if name == "none":
        return Traffic([4 * d])
    if name in ("fp16", "bf16"):
        return Traffic([2 * d], compressed_elements=d)
    if name == "powersgd":
        r, min_rate = int(kw.get("rank", 1)), float(kw.get("min_compression_rate", 2.0))
        iterations = int(kw.get("power_iterations", 1))
        first, second, compressed = 0, 0, 0
        for shape, size in zip(shapes, sizes):
            if len(shape) >= 2:
                n, m = shape[0], size // shape[0]
                rank = min(r, n, m)
                if n * m >= min_rate * rank * (n + m):
                    first, second, compressed = first + 4 * n * rank, second + 4 * m * rank, compressed + size
                    continue
            first += 4 * size
        p_rounds = [first] + [first - 4 * (d - compressed)] * (iterations - 1)  # later P rounds: matrices only
        rounds = [x for pair in zip(p_rounds, [second] * iterations) for x in pair]
        return Traffic(rounds, compressed_elements=compressed)
    placeholders = 4 * len(shapes)
    ratio = float(kw.get("ratio", 0.01))
    if name in ("signum", "signnorm"):
        return Traffic([placeholders], sum(math.ceil(s / 8) for s in sizes), compressed_elements=d)
    if name == "topk":
        return Traffic([placeholders], sum(8 * max(1, round(ratio * s)) for s in sizes), compressed_elements=d)
    if name == "randomk":
        return Traffic([sum(4 * max(1, round(ratio * s)) for s in sizes)], compressed_elements=d)
    raise ValueError(f"the advisor has no wire model for {name!r}")


# ---------------------------------------------------------------------------- time model
@dataclasses.dataclass
class Fit:
    efficiency: float = 0.85  # η: DESIGN §6 measured 85–96 % of the ring prediction at ≤ 1 Gbit/s
    latency_s: float = 50e-6  # α per hop: the network's, not fitted (the emulated links add none)
    codec_s_per_element: Dict[str, float] = dataclasses.field(default_factory=lambda: {
        "powersgd": 1.5e-9, "fp16": 1e-9, "bf16": 1e-9, "signum": 5e-9, "signnorm": 5e-9,
        "topk": 10e-9, "randomk": 5e-9})  # per element and (PowerSGD) per unit of rank
    source: str = "built-in defaults (no results/advisor_fit.json)"
    round_overhead_s: float = 1e-3  # β per collective round (framework), fitted

    @classmethod
    def load(cls, path: Path = FIT_PATH) -> "Fit":
        if path.is_file():
            data = json.loads(path.read_text())
            return cls(data["efficiency"], data["latency_s"], data["codec_s_per_element"],
                       data.get("source", str(path)), data.get("round_overhead_s", 1e-3))
        return cls()

    def save(self, path: Path = FIT_PATH) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")


def allreduce_seconds(nbytes: float, workers: int, bps: float, fit: Fit) -> float:
    n = workers
    if n < 2:
        return 0.0
    return (2 * (n - 1) / n * nbytes * 8 / (fit.efficiency * bps) + 2 * (n - 1) * fit.latency_s
            + fit.round_overhead_s)


def allgather_seconds(nbytes_per_rank: float, workers: int, bps: float, fit: Fit) -> float:
    n = workers
    if n < 2 or nbytes_per_rank == 0:
        return 0.0
    return (n - 1) * nbytes_per_rank * 8 / (fit.efficiency * bps) + (n - 1) * fit.latency_s + fit.round_overhead_s


def codec_seconds(spec: str, t: Traffic, fit: Fit, scale: float = 1.0) -> float:
    name, kw = parse_spec(spec)
    per_element = fit.codec_s_per_element.get(name, 0.0)
    if name == "powersgd":
        per_element *= int(kw.get("rank", 1)) * int(kw.get("power_iterations", 1))
    return per_element * t.compressed_elements * scale


@dataclasses.dataclass
class Prediction:
    spec: str
    compute_s: float
    codec_s: float
    communicate_s: float
    bytes_per_step: int

    @property
    def step_s(self) -> float:
        return self.compute_s + self.codec_s + self.communicate_s


def predict(spec: str, shapes: Sequence[Shape], bps: float, workers: int, compute_s: float,
            fit: Optional[Fit] = None, codec_scale: float = 1.0) -> Prediction:
    fit = fit or Fit.load()
    t = traffic(spec, shapes)
    comm = sum(allreduce_seconds(b, workers, bps, fit) for b in t.allreduce_rounds)
    comm += allgather_seconds(t.allgather_bytes, workers, bps, fit)
    return Prediction(spec, compute_s, codec_seconds(spec, t, fit, codec_scale), comm, t.total)


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
    (DESIGN.md §6); the benchmark still reports the prediction error for them.
    Codec costs: the median over measurements of codec_s / (elements × rank).
    """
    import numpy as np

    base = base or Fit()
    exact = Fit(1.0, 0.0, {}, "", 0.0)
    rows, target, codec = [], [], {}
    for m in measurements:
        name, kw = parse_spec(m["spec"])
        t = traffic(m["spec"], m["shapes"])
        n, bps = m["workers"], m["bps"]
        if 2 <= n <= max_workers:
            x = sum(allreduce_seconds(b, n, bps, exact) for b in t.allreduce_rounds)
            x += allgather_seconds(t.allgather_bytes, n, bps, exact)
            rounds = len(t.allreduce_rounds) + (t.allgather_bytes > 0)
            hops = 2 * (n - 1) * len(t.allreduce_rounds) + (n - 1) * (t.allgather_bytes > 0)
            rows.append([x, rounds])
            target.append(m["communicate_s"] - hops * base.latency_s)
        if t.compressed_elements and m.get("codec_s") is not None:
            scale = int(kw.get("rank", 1)) * int(kw.get("power_iterations", 1)) if name == "powersgd" else 1
            codec.setdefault(name, []).append(m["codec_s"] / (t.compressed_elements * scale))
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
DEFAULT_SPECS = ("fp16", "powersgd:rank=1", "powersgd:rank=2", "powersgd:rank=4", "signum",
                 "topk:ratio=0.01", "randomk:ratio=0.01")
# Compute-time assumptions for presets when --compute-ms is not given (forward+backward+update).
PRESET_COMPUTE_MS = {"resnet18": (60.0, "assumed: ResNet-18, batch 64 per GPU, one V100-class GPU"),
                     "fashion_cnn": (34.0, "measured by benchmarks.run: 1 CPU thread, batch 64"),
                     "ptb_lstm": (210.0, "measured by benchmarks.run: 1 CPU thread, batch 20×35")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m horovod_powersgd.advisor",
                                     description="Predict whether gradient compression pays per step.")
    parser.add_argument("--model", default="resnet18",
                        help=f"preset ({', '.join(PRESETS)}), shapes like 1024x1568,1024, or a .json list")
    parser.add_argument("--bandwidth", default="10gbit", help="per-worker link, e.g. 1gbit, 10gbit")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--compute-ms", type=float, default=None,
                        help="forward+backward+update time of one step without communication")
    parser.add_argument("--codec-scale", type=float, default=None,
                        help="multiply the fitted codec cost (fitted on this machine: 1 CPU thread "
                             "per worker); below 1 for a faster device", )
    parser.add_argument("--specs", default=",".join(DEFAULT_SPECS).replace(",", ";"),
                        help="';'-separated compressor specs to compare with none")
    parser.add_argument("--compare-bandwidth", default="100gbit",
                        help="a second bandwidth for the one-line verdict")
    parser.add_argument("--latency-us", type=float, default=None, help="per-hop network latency α")
    parser.add_argument("--round-overhead-ms", type=float, default=None,
                        help="fixed cost β of one collective round (default: the fit's)")
    parser.add_argument("--json", action="store_true", help="print machine-readable output")
    args = parser.parse_args(argv)

    shapes = parse_model(args.model)
    bps, other = parse_rate(args.bandwidth), parse_rate(args.compare_bandwidth)
    if args.compute_ms is not None:
        compute_s, compute_note = args.compute_ms / 1e3, "given"
    elif args.model in PRESET_COMPUTE_MS:
        ms, compute_note = PRESET_COMPUTE_MS[args.model]
        compute_s = ms / 1e3
    else:
        parser.error("--compute-ms is required for a model given by shapes")
    codec_scale = 1.0 if args.codec_scale is None else args.codec_scale
    fit_ = Fit.load()
    if args.latency_us is not None:
        fit_.latency_s = args.latency_us * 1e-6
    if args.round_overhead_ms is not None:
        fit_.round_overhead_s = args.round_overhead_ms * 1e-3
    specs = [s for s in args.specs.split(";") if s.strip()]
    base = predict("none", shapes, bps, args.workers, compute_s, fit_, codec_scale)
    rows = []
    for spec in ["none"] + specs:
        p = predict(spec, shapes, bps, args.workers, compute_s, fit_, codec_scale)
        rows.append({"spec": spec, "step_ms": p.step_s * 1e3, "compute_ms": p.compute_s * 1e3,
                     "codec_ms": p.codec_s * 1e3, "communicate_ms": p.communicate_s * 1e3,
                     "MB_per_step": p.bytes_per_step / 1e6, "speedup": base.step_s / p.step_s,
                     "speedup_at_compare": speedup(spec, shapes, other, args.workers, compute_s, fit_, codec_scale),
                     "break_even_bps": break_even_bandwidth(spec, shapes, args.workers, compute_s, fit_, codec_scale)})
    if args.json:
        print(json.dumps({"model": args.model, "parameters": sum(map(numel, shapes)), "bps": bps,
                          "workers": args.workers, "compute_s": compute_s, "fit": dataclasses.asdict(fit_),
                          "rows": rows}, indent=1))
        return 0
    print(f"{args.model}: {sum(map(numel, shapes)) / 1e6:.2f}M parameters, {args.workers} workers, "
          f"{format_rate(bps)} per worker, compute {compute_s * 1e3:.0f} ms/step ({compute_note}), "
          f"codec cost ×{codec_scale:g} of the fit; η={fit_.efficiency:.2f}, α={fit_.latency_s * 1e6:.0f} µs/hop, "
          f"β={fit_.round_overhead_s * 1e3:.1f} ms/round ({fit_.source})")
    print(f"{'compressor':<22}{'MB/step':>9}{'compute':>9}{'codec':>8}{'comm':>9}{'step ms':>9}{'speed-up':>10}"
          f"{'@' + args.compare_bandwidth:>12}  pays below")
    for r in rows:
        be = "always" if r["break_even_bps"] is None and r["speedup"] > 1 else (
            "never" if r["break_even_bps"] is None else format_rate(r["break_even_bps"]))
        be = "—" if r["spec"] == "none" else be
        print(f"{r['spec']:<22}{r['MB_per_step']:>9.2f}{r['compute_ms']:>9.1f}{r['codec_ms']:>8.1f}"
              f"{r['communicate_ms']:>9.1f}{r['step_ms']:>9.1f}{r['speedup']:>9.2f}×{r['speedup_at_compare']:>11.2f}×  {be}")
    psgd = next((r for r in rows if r["spec"] == "powersgd:rank=2"), None)
    if psgd is not None:
        verdict = lambda s: f"{s:.2f}× faster" if s >= 1 else f"slower ({s:.2f}×)"  # noqa: E731
        print(f"\nrank-2 PowerSGD predicted {verdict(psgd['speedup'])} per step at {format_rate(bps)} "
              f"with {args.workers} workers; {verdict(psgd['speedup_at_compare'])} at {format_rate(other)}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
