"""horovod_powersgd.calibrate: the network fit on a synthetic cluster, the fit file the advisor reads,
and a real 2-rank calibration under horovodrun --gloo and mpirun."""
import dataclasses
import json
import sys

import numpy as np
import pytest

from horovod_powersgd import advisor, calibrate
from horovod_powersgd.advisor import Fit
from tests.launch import run

SHAPES = [(64, 128), (64,), (10, 64), (10,)]


class SyntheticCluster(calibrate.TimingSource):
    """Times from known α, β, γ and bandwidth (a ring on ``size`` ranks), with multiplicative noise;
    a virtual clock, so the time budget is spent on simulated time."""

    def __init__(self, size=2, alpha=80e-6, beta=2e-3, gamma=150e-6, bps=9e8, noise=0.0, seed=0, burst=0):
        self.size, self.alpha, self.beta, self.gamma, self.bps = size, alpha, beta, gamma, bps
        self.burst = burst  # bytes per round sent at no cost, like a token bucket's burst allowance
        self.noise, self.rng, self.now, self.calls = noise, np.random.default_rng(seed), 0.0, 0

    def clock(self):
        return self.now

    def _round(self, ring_bytes, hops, tensors):
        return max(0, ring_bytes - self.burst) * 8 / self.bps + hops * self.alpha + self.beta + tensors * self.gamma

    def _op(self, nbytes, fused, allreduce):
        n = self.size
        def one(b, k):
            return (self._round(2 * (n - 1) / n * b, 2 * (n - 1), k) if allreduce
                    else self._round((n - 1) * b, n - 1, k))
        t = one(sum(nbytes), len(nbytes)) if fused else sum(one(b, 1) for b in nbytes)
        t *= float(np.exp(self.noise * self.rng.standard_normal()))
        self.now += t
        self.calls += 1
        return t

    def allreduce(self, nbytes, fused):
        return self._op(nbytes, fused, True)

    def allgather(self, nbytes, fused):
        return self._op(nbytes, fused, False)


@pytest.mark.parametrize("size", [2, 4])
def test_fit_recovers_known_latency_overhead_and_bandwidth(size):
    cluster = SyntheticCluster(size=size)
    points = calibrate.measure_network(cluster, budget_s=20.0)
    assert all(len(p.seconds) >= 3 for p in points)
    fit = calibrate.fit_network(points, size, bootstrap=20)
    assert fit.bandwidth_bps == pytest.approx(9e8, rel=1e-6)
    assert fit.latency_s == pytest.approx(80e-6, rel=1e-6)
    assert fit.round_overhead_s == pytest.approx(2e-3, rel=1e-6)
    assert fit.tensor_overhead_s == pytest.approx(150e-6, rel=1e-6)
    assert fit.burst_bytes == pytest.approx(0.0, abs=1.0)
    assert fit.median_error < 1e-6


def test_fit_with_noise_stays_close_and_reports_a_spread():
    cluster = SyntheticCluster(noise=0.05, seed=3)
    fit = calibrate.fit_network(calibrate.measure_network(cluster, budget_s=30.0), 2, bootstrap=100)
    assert fit.bandwidth_bps == pytest.approx(9e8, rel=0.05)
    assert fit.round_overhead_s == pytest.approx(2e-3, rel=0.25)
    assert fit.latency_s + fit.round_overhead_s / 2 == pytest.approx(80e-6 + 1e-3, rel=0.25)
    low, high = fit.spread["effective_bps"]
    assert low < high and low < 1.05 * 9e8 and high > 0.95 * 9e8
    for name in ("latency_s", "round_overhead_s", "tensor_overhead_s"):
        assert fit.spread[name][0] <= fit.spread[name][1]


def test_bandwidth_is_the_sustained_rate_not_a_burst_allowance():
    """A token bucket (the emulated links' tc tbf) lets the first 256 kB of a round through at no
    cost: the fitted bandwidth must still be the sustained rate that large all-reduces see."""
    cluster = SyntheticCluster(bps=2e8, burst=256 << 10)
    fit = calibrate.fit_network(calibrate.measure_network(cluster, budget_s=60.0), 2, bootstrap=10)
    assert fit.bandwidth_bps == pytest.approx(2e8, rel=1e-6)
    assert fit.burst_bytes == pytest.approx(256 << 10, rel=1e-3)
    assert fit.round_overhead_s + 2 * fit.latency_s == pytest.approx(2e-3 + 160e-6, rel=0.02)


def test_no_latency_network_fits_zero_latency_not_a_negative_one():
    cluster = SyntheticCluster(alpha=0.0, gamma=0.0, beta=5e-3, bps=2e8)
    fit = calibrate.fit_network(calibrate.measure_network(cluster, budget_s=30.0), 2, bootstrap=10)
    assert fit.latency_s == pytest.approx(0.0, abs=1e-9) and fit.tensor_overhead_s == pytest.approx(0.0, abs=1e-9)
    assert fit.round_overhead_s == pytest.approx(5e-3, rel=1e-6)
    assert fit.bandwidth_bps == pytest.approx(2e8, rel=1e-6)


def test_the_budget_bounds_the_measurement():
    short, long_ = SyntheticCluster(), SyntheticCluster()
    calibrate.measure_network(short, budget_s=2.0)
    calibrate.measure_network(long_, budget_s=20.0)
    assert short.calls < long_.calls
    assert long_.now <= 20.0 * 1.2


def test_largest_size_follows_the_probed_bandwidth():
    fast = calibrate.measure_network(SyntheticCluster(bps=1e10), budget_s=1.0, min_repetitions=1)
    slow = calibrate.measure_network(SyntheticCluster(bps=1e8), budget_s=1.0, min_repetitions=1)
    assert max(p.nbytes for p in fast) > max(p.nbytes for p in slow)


class RecordingHorovod:
    """Stands in for horovod.torch: records the name each object collective would negotiate under
    (Horovod's own default is ``type(obj).__name__``)."""

    def __init__(self):
        self.names = []

    def size(self):
        return 2

    def barrier(self):
        pass

    def broadcast_object(self, obj, root_rank=0, name=None):
        self.names.append(name or type(obj).__name__)
        return obj

    def allgather_object(self, obj, name=None):
        self.names.append(name or type(obj).__name__)
        return [obj, obj]


def test_object_collectives_are_named_whatever_the_value_type():
    # the probe's cap is an int on a rank whose probe was fast and a float on a slower one: with
    # type-derived names the two ranks negotiated different collectives and hung (2 runs in 9)
    one, other = RecordingHorovod(), RecordingHorovod()
    calibrate.HorovodSource(one).agree(64 << 20)
    calibrate.HorovodSource(other).agree(51e6)
    calibrate.HorovodSource(one).combine([1, 2])
    calibrate.HorovodSource(other).combine([1.0, 2.0])
    assert one.names == other.names
    assert all(name.startswith("horovod_powersgd.") for name in one.names)


def _fit_file(tmp_path, compute_s=0.02):
    network = calibrate.fit_network(calibrate.measure_network(SyntheticCluster(), budget_s=10.0), 2, bootstrap=5)
    codec = {"powersgd:rank=2": {"codec_s": 0.004}, "fp16": {"codec_s": 0.001}}
    fit = calibrate.build_fit(network, 2, codec, SHAPES, compute_s, None, {"cpu": "test"}, 1.0, "tiny")
    path = tmp_path / "fit.json"
    fit.save(path)
    return fit, path


def test_fit_file_feeds_the_advisor(tmp_path, capsys):
    fit, path = _fit_file(tmp_path)
    loaded = Fit.load(path)
    assert loaded == fit and loaded.workers == 2 and loaded.bandwidth_bps == pytest.approx(9e8)
    # the measured codec is used for the calibrated shapes, the per-element cost elsewhere
    assert advisor.predict("powersgd:rank=2", SHAPES, 9e8, 2, 0.0, loaded).codec_s == pytest.approx(0.004)
    elements = 64 * 128 + 10 * 64
    assert loaded.codec_s_per_element["powersgd"] == pytest.approx(0.004 / (elements * 2))
    other = [(128, 256)]
    assert advisor.predict("powersgd:rank=2", other, 9e8, 2, 0.0, loaded).codec_s == pytest.approx(
        0.004 / elements * 128 * 256)
    shapes = ",".join("x".join(map(str, s)) for s in SHAPES)
    assert advisor.main(["--fit", str(path), "--model", shapes]) == 0  # link, workers, compute: the fit's
    out = capsys.readouterr().out
    assert "900 Mbit/s per worker, compute 20 ms/step (measured by calibrate)" in out
    assert "Recommendation:" in out and "pays below" in out
    assert advisor.main(["--fit", str(path), "--bandwidth", "10gbit"]) == 0  # the model: the fit's
    out = capsys.readouterr().out
    assert out.startswith("tiny: ") and "10 Gbit/s per worker" in out
    assert advisor.main(["--fit", str(path), "--model", shapes, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["workers"] == 2 and data["bps"] == pytest.approx(9e8)
    rows = {r["spec"]: r for r in data["rows"]}
    assert rows["powersgd:rank=2"]["codec_measured"] and not rows["signum"]["codec_measured"]
    with pytest.raises(SystemExit):
        advisor.main(["--fit", str(tmp_path / "missing.json"), "--model", shapes])


def test_recommendation_gives_a_reason():
    fit = Fit(1.0, 0.0, {"powersgd": 1e-9}, "test", 1e-3)
    shapes = advisor.fashion_cnn_shapes()
    slow = advisor.table(shapes, 1e8, 2, 0.03, fit, ["powersgd:rank=2", "fp16"])
    assert advisor.recommendation(slow, 1e8, 2).startswith("Recommendation: powersgd:rank=2 — predicted")
    assert "because the uncompressed all-reduce takes" in advisor.recommendation(slow, 1e8, 2)
    fast = advisor.table(shapes, 1e12, 2, 0.03, fit, ["powersgd:rank=2", "fp16"])
    assert advisor.recommendation(fast, 1e12, 2).startswith("Recommendation: don't compress")


def test_traffic_comes_from_the_compressors_wire_bytes():
    shapes = advisor.fashion_cnn_shapes()
    specs, _ = advisor.available_specs(advisor.DEFAULT_SPECS)
    assert "powersgd:rank=2" in specs and "signum" in specs
    for spec in specs:
        compressor = advisor.compressor_for(spec)
        assert advisor.traffic(spec, shapes).total == sum(compressor.wire_bytes(s) for s in shapes), spec


def test_single_round_powersgd_is_priced_as_one_round():
    specs, refused = advisor.available_specs(["powersgd:rank=2,alternate=True"])
    if not specs:
        pytest.skip(f"this PowerSGD has no single-round variant: {refused}")
    shapes = advisor.fashion_cnn_shapes()
    one, two = advisor.traffic(specs[0], shapes), advisor.traffic("powersgd:rank=2", shapes)
    assert len(one.allreduce_rounds) == 1 and len(two.allreduce_rounds) == 2
    assert one.total < two.total
    fit = Fit(1.0, 0.0, {"powersgd": 1e-9}, "test", 5e-3)
    assert (advisor.predict(specs[0], shapes, 1e9, 2, 0.0, fit).communicate_s
            < advisor.predict("powersgd:rank=2", shapes, 1e9, 2, 0.0, fit).communicate_s)


def test_refit_reanalyses_a_fit_file(tmp_path):
    points = calibrate.measure_network(SyntheticCluster(), budget_s=10.0)
    network = calibrate.fit_network(points, 2, bootstrap=5)
    codec = {"none": {"codec_s": 0.0, "synthetic_comm_codec_s": 0.02}}
    fit = calibrate.build_fit(network, 2, codec, SHAPES, 0.01, None, {"cpu": "test"}, 1.0, "tiny")
    calibrate.write_fit(fit, tmp_path / "a.json", {"codec": codec, "seconds": 1.0,
                                                   "samples": [dataclasses.asdict(p) for p in points]})
    assert calibrate.main(["--refit", str(tmp_path / "a.json"), "--out", str(tmp_path / "b.json")]) == 0
    again = Fit.load(tmp_path / "b.json")
    assert again.bandwidth_bps == pytest.approx(fit.bandwidth_bps) and again.model == "tiny"
    assert again.step_overhead_s == pytest.approx(fit.step_overhead_s) and again.step_overhead_s > 0


def test_compute_profile_records_when_each_gradient_is_ready_in_backprop():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    unused = torch.nn.Parameter(torch.zeros(3))  # no gradient in backward: ready when backward is
    model.register_parameter("unused", unused)
    x = torch.randn(512, 64)
    hvd = RecordingHorovod()
    profile = calibrate.measure_compute(hvd, model, lambda: model(x).pow(2).mean(), budget_s=0.0, min_steps=3)
    never, first_w, first_b, last_w, last_b = profile.gradient_ready_s  # a module's own parameters first
    assert 0 < last_b <= last_w < first_w <= profile.backward_s <= profile.step_s  # backprop: the last layer first
    assert first_b <= profile.backward_s and never == profile.backward_s
    assert all(not hooks for p in model.parameters() for hooks in [p._post_accumulate_grad_hooks or {}])
    assert hvd.names.count("horovod_powersgd.calibrate.compute.seconds") == 1


def test_the_profile_and_cycle_reach_the_fit_and_survive_a_refit(tmp_path):
    points = calibrate.measure_network(SyntheticCluster(), budget_s=10.0)
    network = calibrate.fit_network(points, 2, bootstrap=5)
    codec = {"none": {"codec_s": 0.0, "synthetic_comm_codec_s": 0.02}}
    profile = calibrate.ComputeProfile(0.01, 0.009, [0.009, 0.008, 0.004, 0.004])
    fit = calibrate.build_fit(network, 2, codec, SHAPES, 0.01, None, {"cpu": "test"}, 1.0, "tiny", profile, 0.008)
    assert fit.gradient_ready_s == profile.gradient_ready_s and fit.backward_s == 0.009 and fit.cycle_s == 0.008
    assert fit.backprop_profile(SHAPES, 0.01) == (profile.gradient_ready_s, 0.009)
    calibrate.write_fit(fit, tmp_path / "a.json", {"codec": codec, "seconds": 1.0,
                                                   "samples": [dataclasses.asdict(p) for p in points]})
    assert calibrate.main(["--refit", str(tmp_path / "a.json"), "--out", str(tmp_path / "b.json")]) == 0
    again = Fit.load(tmp_path / "b.json")
    assert (again.gradient_ready_s, again.backward_s, again.cycle_s) == (fit.gradient_ready_s, 0.009, 0.008)
    # σ from the synthetic steps, whose rounds wait whole cycles after a barrier: the serial model's
    serial = advisor.communicate_seconds(advisor.traffic("none", SHAPES), 2, fit.bandwidth_bps,
                                         dataclasses.replace(fit, step_overhead_s=0.0))
    assert fit.step_overhead_s == pytest.approx(0.02 - serial) and again.step_overhead_s == pytest.approx(0.02 - serial)


def test_model_from_module_function():
    shapes, model = calibrate.resolve_model("tests.test_calibrate:tiny_model")
    assert shapes == [(16, 32), (16,)] and model is not None
    assert calibrate.resolve_model("tests.test_calibrate:tiny_shapes") == ([(3, 4), (5,)], None)
    assert calibrate.resolve_model("8x4,8") == ([(8, 4), (8,)], None)
    with pytest.raises(ValueError):
        calibrate.load_object("no_function_here")


# ---- helpers the 2-rank run imports by module:function
def tiny_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(32, 16)


def tiny_shapes():
    return [[3, 4], [5]]


def tiny_batch(model):
    import torch

    x = torch.randn(8, 32)
    return lambda: model(x).pow(2).mean()


@pytest.mark.distributed
@pytest.mark.parametrize("launcher,model,extra", [
    ("gloo", "64x128,64,10x64,10", ["--compute-ms", "5"]),
    ("mpi", "tests.test_calibrate:tiny_model", ["--batch", "tests.test_calibrate:tiny_batch"]),
])
def test_two_rank_calibration_writes_a_usable_fit(tmp_path, capsys, launcher, model, extra):
    out = tmp_path / "fit.json"
    argv = [sys.executable, "-m", "horovod_powersgd.calibrate", "--model", model, "--out", str(out),
            "--budget", "12", "--no-progress", "--threads", "1",
            "--specs", "fp16;powersgd:rank=2;signum;topk:ratio=0.01", *extra]
    rc, output = run(launcher, argv, np=2, timeout=300)
    assert rc == 0, output[-6000:]
    assert "Recommendation:" in output and f"wrote {out}" in output
    data = json.loads(out.read_text())
    assert data["workers"] == 2 and data["machine"]["controller"] == launcher
    assert data["bandwidth_bps"] > 0 and data["round_overhead_s"] >= 0 and data["latency_s"] >= 0
    assert set(data["codec_s_per_step"]) == {"none", "fp16", "powersgd:rank=2", "signum", "topk:ratio=0.01"}
    assert all(v >= 0 for v in data["codec_s_per_step"].values())
    assert data["compute_s"] > 0 and data["cycle_s"] > 0
    if "--batch" in extra:  # the backprop profile: the Linear's bias and weight, ready in backward
        assert len(data["gradient_ready_s"]) == 2
        assert 0 < max(data["gradient_ready_s"]) <= data["backward_s"] <= data["compute_s"]
    else:
        assert data["gradient_ready_s"] is None and data["backward_s"] is None
    assert {"allreduce", "allgather"} == {s["op"] for s in data["calibration"]["samples"]}
    shapes_arg = model if launcher == "gloo" else "16x32,16"
    assert advisor.main(["--fit", str(out), "--model", shapes_arg, "--compute-ms", "5"]) == 0
    assert "Recommendation:" in capsys.readouterr().out
    print(output[-400:])
