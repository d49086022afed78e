"""The advisor's cost model: wire sizes, collective times, the fit, and the CLI."""
import dataclasses
import math

import pytest

from horovod_powersgd import advisor
from horovod_powersgd.advisor import Fit, collective_seconds, traffic

EXACT = Fit(efficiency=1.0, latency_s=0.0, codec_s_per_element={}, source="test", round_overhead_s=0.0)


def test_resnet18_has_torchvisions_parameter_count():
    assert sum(map(advisor.numel, advisor.resnet18_shapes())) == 11_689_512


def test_model_parsing():
    assert advisor.parse_model("1024x1568,1024") == [(1024, 1568), (1024,)]
    assert advisor.parse_model("fashion_cnn") == advisor.fashion_cnn_shapes()
    with pytest.raises(ValueError, match="preset"):
        advisor.parse_model("not-a-model")


@pytest.mark.parametrize("text,bps", [("1gbit", 1e9), ("200mbit", 2e8), ("10Gbit", 1e10), ("5e8", 5e8)])
def test_parse_rate(text, bps):
    assert advisor.parse_rate(text) == bps


def test_uncompressed_and_half_precision_bytes():
    shapes = [(1024, 1568), (1024,)]
    d = 1024 * 1568 + 1024
    assert traffic("none", shapes).allreduce_rounds == [4 * d]
    assert traffic("fp16", shapes).allreduce_rounds == [2 * d]


def test_powersgd_bytes_follow_r_times_n_plus_m():
    t = traffic("powersgd:rank=2", [(1024, 1568), (1024,), (16, 1, 5, 5), (4, 3)])
    # round 1: P (n×r) of each compressed matrix (the conv is 16×25), the bias and the 4×3 matrix
    # (12 < min_compression_rate · r(n+m) = 28) raw; round 2: Q (m×r)
    assert t.allreduce_rounds == [4 * (1024 * 2 + 16 * 2 + 1024 + 12), 4 * (1568 * 2 + 25 * 2)]
    assert t.compressed_elements == 1024 * 1568 + 400
    # two power iterations: two more rounds, the later P round carries matrices only
    assert traffic("powersgd:rank=2,power_iterations=2", [(1024, 1568), (1024,)]).allreduce_rounds == [
        4 * (2048 + 1024), 4 * 3136, 4 * 2048, 4 * 3136]


def test_allgather_compressors():
    shapes = [(1000, 1000)]
    assert traffic("signum", shapes).allgather_bytes == 125_000
    assert traffic("topk:ratio=0.01", shapes).allgather_bytes == 8 * 10_000
    assert traffic("randomk:ratio=0.01", shapes).allreduce_rounds == [4 * 10_000]


def test_ring_allreduce_and_allgather_times():
    # 1 MB at 8 Mbit/s = 1 s of raw transfer
    assert collective_seconds("allreduce", 1e6, 2, 8e6, EXACT) == pytest.approx(1.0)
    assert collective_seconds("allreduce", 1e6, 4, 8e6, EXACT) == pytest.approx(1.5)
    assert collective_seconds("allgather", 1e6, 4, 8e6, EXACT) == pytest.approx(3.0)
    assert collective_seconds("allreduce", 1e6, 1, 8e6, EXACT) == 0.0
    slow = Fit(efficiency=0.5, latency_s=1e-3, codec_s_per_element={}, round_overhead_s=0.01)
    assert collective_seconds("allreduce", 1e6, 2, 8e6, slow) == pytest.approx(2.0 + 2e-3 + 0.01)
    assert collective_seconds("allreduce", 1e6, 4, 8e6, slow) == pytest.approx(3.0 + 6e-3 + 0.01)
    assert collective_seconds("allgather", 1e6, 4, 8e6, slow) == pytest.approx(6.0 + 3e-3 + 0.01)


def test_allgather_loses_to_allreduce_as_workers_grow():
    """The paper's point: all-gather traffic grows with N, ring all-reduce traffic does not."""
    shapes = advisor.resnet18_shapes()
    ratio = [advisor.predict("signum", shapes, 1e9, n, 0.0, EXACT).communicate_s
             / advisor.predict("powersgd:rank=2", shapes, 1e9, n, 0.0, EXACT).communicate_s
             for n in (2, 8, 32)]
    assert ratio[0] < ratio[1] < ratio[2]


def test_compression_pays_on_slow_links_and_not_on_fast_ones():
    fit = Fit(0.9, 50e-6, {"powersgd": 2e-9}, "test")
    shapes = advisor.resnet18_shapes()
    assert advisor.speedup("powersgd:rank=2", shapes, 1e9, 8, 0.06, fit) > 1.5
    assert advisor.speedup("powersgd:rank=2", shapes, 400e9, 8, 0.06, fit) < 1.0
    edge = advisor.break_even_bandwidth("powersgd:rank=2", shapes, 8, 0.06, fit)
    assert 1e9 < edge < 400e9
    assert advisor.speedup("powersgd:rank=2", shapes, edge, 8, 0.06, fit) == pytest.approx(1.0, abs=1e-6)


def test_fit_recovers_efficiency_round_overhead_and_codec_cost():
    truth = Fit(0.8, 2e-4, {"powersgd": 3e-9}, "truth", round_overhead_s=4e-3)
    shapes = advisor.fashion_cnn_shapes()
    measurements = []
    for n, bps in ((2, 1e9), (3, 2e8), (4, 2e8), (2, 1e8)):
        for spec in ("none", "powersgd:rank=2"):
            p = advisor.predict(spec, shapes, bps, n, 0.05, truth)
            measurements.append({"spec": spec, "shapes": shapes, "workers": n, "bps": bps,
                                 "communicate_s": p.communicate_s, "codec_s": p.codec_s})
    fitted = advisor.fit(measurements, base=Fit(latency_s=2e-4))  # α is given, not fitted
    assert fitted.efficiency == pytest.approx(0.8, rel=1e-6)
    assert fitted.round_overhead_s == pytest.approx(4e-3, rel=1e-6)
    assert fitted.latency_s == 2e-4
    assert fitted.codec_s_per_element["powersgd"] == pytest.approx(3e-9, rel=1e-6)


def test_fit_round_trips_through_json(tmp_path):
    fit = Fit(0.7, 1e-4, {"topk": 1e-8}, "here", 3e-3)
    fit.save(tmp_path / "fit.json")
    assert Fit.load(tmp_path / "fit.json") == fit
    assert Fit.load(tmp_path / "missing.json").source.startswith("built-in")


def test_cli_prints_a_verdict(capsys):
    assert advisor.main(["--model", "resnet18", "--bandwidth", "10gbit", "--workers", "8"]) == 0
    out = capsys.readouterr().out
    assert "rank-2 PowerSGD predicted" in out and "10 Gbit/s with 8 workers" in out
    assert advisor.main(["--model", "fashion_cnn", "--bandwidth", "1gbit", "--workers", "2", "--json"]) == 0
    import json
    rows = {r["spec"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["none"]["speedup"] == 1.0
    assert rows["powersgd:rank=2"]["MB_per_step"] < rows["none"]["MB_per_step"] / 50
    assert not math.isnan(rows["powersgd:rank=2"]["step_ms"])


def advice_rows(*specs_and_steps):
    """Rows as `advisor.table` makes them: ``none`` at 100 ms, then each (spec, step ms)."""
    row = {"speedup": 1.0, "step_ms": 100.0, "communicate_ms": 60.0, "MB_per_step": 10.0, "rounds": 1,
           "codec_ms": 0.0}
    return [dict(row, spec="none")] + [dict(row, spec=spec, speedup=100.0 / step, step_ms=step,
                                            MB_per_step=0.1) for spec, step in specs_and_steps]


@pytest.mark.parametrize("spec, caveat", [
    ("powersgd:rank=2,alternate=True", "trained markedly worse than classic under momentum"),
    ("unbiased_lowrank:rank=2", "diverged under momentum 0.9"),
    ("powersgd:rank=2,two_sided=True", "trained about a point below classic under momentum"),
    ("powersgd:rank=2", "accuracy is not modelled: check it on your task")])
def test_recommendation_carries_what_was_measured_about_accuracy(spec, caveat):
    advice = advisor.recommendation(advice_rows((spec, 50.0)), 1e9, 2)
    assert advice.startswith(f"Recommendation: {spec} — predicted 2.00×") and caveat in advice


def test_a_tie_goes_to_the_fastest_spec_without_an_accuracy_caveat():
    """Within 5 % of the fastest step the model cannot tell specs apart: the advice takes the fastest
    one nothing was measured against, and names the faster one it passed over, and why."""
    rows = advice_rows(("powersgd:rank=1,alternate=True", 50.0), ("unbiased_lowrank:rank=2", 50.5),
                       ("powersgd:rank=1,two_sided=True", 51.5), ("powersgd:rank=2", 52.0))
    advice = advisor.recommendation(rows, 1e9, 2)
    assert advice.startswith("Recommendation: powersgd:rank=2 — predicted 1.92×")
    assert "powersgd:rank=1,alternate=True, predicted 50.0 ms, is within 5% of it" in advice
    assert "trained markedly worse than classic" in advice
    # beyond the margin, the fastest is the advice, its caveat said with it
    rows = advice_rows(("powersgd:rank=1,alternate=True", 50.0), ("powersgd:rank=1", 53.0))
    advice = advisor.recommendation(rows, 1e9, 2)
    assert advice.startswith("Recommendation: powersgd:rank=1,alternate=True")
    assert "accuracy is not modelled, and the alternating scheme trained markedly worse" in advice
    assert "the fastest spec with no such caveat, powersgd:rank=1, is predicted 53.0 ms (1.89×)" in advice


def test_a_caveated_advice_names_no_alternative_that_does_not_pay():
    """The caveat-free spec named next to a caveated advice must itself pay (beyond the margin)."""
    rows = advice_rows(("powersgd:rank=1,alternate=True", 50.0), ("powersgd:rank=2", 98.0))
    advice = advisor.recommendation(rows, 1e9, 2)
    assert advice.startswith("Recommendation: powersgd:rank=1,alternate=True") and "no such caveat" not in advice


def test_cli_needs_compute_time_for_raw_shapes():
    with pytest.raises(SystemExit):
        advisor.main(["--model", "100x100"])


def test_traffic_is_the_compressors_transfers_fused():
    """The advisor prices what each compressor states (`transfers`), nothing of its own."""
    from horovod_powersgd.core import registry, wire

    assert advisor.parse_spec is registry.parse_spec
    shapes = [(1024, 1568), (1024,), (16, 1, 5, 5)]
    for spec in advisor.DEFAULT_SPECS + ("powersgd:rank=2,wire_dtype='float16'", "signnorm"):
        compressor = registry.build(spec)
        assert traffic(spec, shapes).rounds == wire.fuse(t for s in shapes for t in compressor.transfers(s)), spec
    # bf16 all-gathers (Horovod 0.28.1 cannot all-reduce it); SignNorm gathers signs and a scale per tensor
    bf16 = traffic("bf16", shapes).rounds
    assert [(r.collective, r.tensors) for r in bf16] == [("allreduce", 3), ("allgather", 3)]
    signnorm = traffic("signnorm", [(1000, 1000)]).rounds
    assert [(r.collective, r.nbytes, r.tensors) for r in signnorm] == [("allreduce", 4, 1), ("allgather", 125_004, 2)]
    assert traffic("powersgd:rank=2,wire_dtype='float16'", [(1024, 1568)]).allreduce_rounds == [2 * 2048, 2 * 3136]
    assert traffic("unbiased_lowrank:rank=2", [(1024, 1568), (1024,)]).allreduce_rounds == [4 * (2048 + 1024)]


def test_default_fit_is_package_data_and_names_its_machine(capsys):
    from importlib import resources
    from pathlib import Path

    from horovod_powersgd import machine

    shipped = resources.files("horovod_powersgd").joinpath("data/default_fit.json")
    assert shipped.is_file() and Path(str(shipped)) == advisor.FIT_PATH
    fit = Fit.load()
    assert fit.source.startswith("fitted by benchmarks.run") and fit.machine.get("cpu")
    assert advisor.main(["--model", "fashion_cnn", "--bandwidth", "1gbit", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"on {machine.one_line(fit.machine)}" in out and "No fit" not in out


def test_cli_says_plainly_when_there_is_no_fit(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(advisor, "FIT_PATH", tmp_path / "default_fit.json")
    assert advisor.main(["--model", "fashion_cnn", "--bandwidth", "1gbit", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"No fit: {tmp_path / 'default_fit.json'} is missing" in out and "built-in guesses" in out


# ---- the backprop schedule: what a measured profile hides
CNN = advisor.fashion_cnn_shapes()


def test_gradients_all_ready_at_the_end_pay_every_round_as_the_serial_model_does():
    fit = Fit(0.9, 50e-6, {}, "test", round_overhead_s=2e-3)  # no cycle: a round starts when it can
    for spec in ("none", "powersgd:rank=2", "signum"):
        serial = advisor.communicate_seconds(traffic(spec, CNN), 2, 1e9, fit)
        ready = [0.01] * len(CNN)
        assert advisor.overlapped_seconds(advisor.transfers(spec, CNN), ready, 0.01, 2, 1e9, fit) == pytest.approx(serial)


def test_rounds_that_end_before_backward_cost_nothing_and_later_rounds_always_count():
    fit = Fit(1.0, 0.0, {}, "test", round_overhead_s=1e-3)
    ready = [0.0] * len(CNN)
    assert advisor.overlapped_seconds(advisor.transfers("none", CNN), ready, 10.0, 2, 1e9, fit) == 0.0
    # classic PowerSGD's second round runs after backprop, hidden or not
    classic = advisor.transfers("powersgd:rank=2", CNN)
    after = [r for r in traffic("powersgd:rank=2", CNN).rounds if r.index > 0]
    assert after and advisor.overlapped_seconds(classic, ready, 10.0, 2, 1e9, fit) == pytest.approx(
        sum(advisor.collective_seconds(r.collective, r.nbytes, 2, 1e9, fit, r.tensors) for r in after))


def test_a_gradient_ready_while_a_round_is_on_the_wire_waits_for_the_next_round():
    fit = Fit(1.0, 0.0, {}, "test", round_overhead_s=0.0)
    shapes = [(250_000,), (250_000,)]  # 1 MB each: 1 s at 8 Mbit/s on 2 ranks
    one = advisor.transfers("none", shapes)
    assert advisor.overlapped_seconds(one, [0.0, 0.0], 0.0, 2, 8e6, fit) == pytest.approx(2.0)
    # the second is ready half-way through the first's round: it starts when that round ends
    assert advisor.overlapped_seconds(one, [0.0, 0.5], 0.5, 2, 8e6, fit) == pytest.approx(1.5)
    # ready after the first round ended: its own round, from when it is ready
    assert advisor.overlapped_seconds(one, [0.0, 3.0], 3.0, 2, 8e6, fit) == pytest.approx(1.0)


def test_a_round_waits_for_horovods_next_cycle_averaged_over_the_phase():
    cycle, beta, transfer = 8e-3, 8.5e-3, 1.0
    fit = Fit(1.0, 0.0, {}, "test", round_overhead_s=beta, cycle_s=cycle)
    one = advisor.transfers("none", [(250_000,)])
    # the mean wait for a cycle's start over the phases k·T/8, then the round less the whole cycle
    # calibrate's rounds (timed right after a barrier) waited in β
    wait = sum(cycle * k / advisor.CYCLE_PHASES for k in range(advisor.CYCLE_PHASES)) / advisor.CYCLE_PHASES
    assert advisor.overlapped_seconds(one, [0.0], 0.0, 2, 8e6, fit) == pytest.approx(wait + beta - cycle + transfer)


def test_predict_uses_the_profile_on_the_calibrated_shapes_only_stretched_to_the_compute():
    ready = [0.016, 0.016, 0.013, 0.013, 0.010, 0.010, 0.006, 0.006]  # backprop: the last layer first
    fit = Fit(0.9, 0.0, {}, "test", round_overhead_s=1e-3, codec_shapes=[list(s) for s in CNN],
              compute_s=0.02, gradient_ready_s=ready, backward_s=0.017)
    assert fit.backprop_profile(CNN, 0.04) == (pytest.approx([2 * t for t in ready]), pytest.approx(0.034))
    assert fit.backprop_profile(CNN[:-1], 0.02) is None
    serial = dataclasses.replace(fit, gradient_ready_s=None, backward_s=None)
    hidden = advisor.predict("none", CNN, 1e9, 2, 0.02, fit).communicate_s
    assert 0 < hidden < advisor.predict("none", CNN, 1e9, 2, 0.02, serial).communicate_s
    # a longer backprop hides more of the same traffic
    assert advisor.predict("none", CNN, 1e9, 2, 0.2, fit).communicate_s < hidden
    assert advisor.predict("none", CNN[:-1], 1e9, 2, 0.02, fit).communicate_s == pytest.approx(
        advisor.predict("none", CNN[:-1], 1e9, 2, 0.02, serial).communicate_s)


def test_the_table_says_whether_backprop_hides_communication(capsys):
    fit = Fit(0.9, 0.0, {}, "test", round_overhead_s=1e-3, codec_shapes=[list(s) for s in CNN], compute_s=0.02,
              gradient_ready_s=[0.016] * len(CNN), backward_s=0.017, cycle_s=0.008)
    assert advisor.describe_overlap(fit, CNN, 0.03) == (  # stretched to the compute asked about
        "backprop profile: gradients ready 24.0–24.0 ms into the step, backward done at 25.5 ms; comm = what "
        "the rounds started from backprop do not hide, Horovod cycle 8 ms")
    assert advisor.describe_overlap(fit, CNN[:2], 0.02).startswith("no backprop profile for this model")
    assert advisor.main(["--model", "fashion_cnn", "--bandwidth", "1gbit", "--workers", "2"]) == 0
    assert "no backprop profile for this model: every round is charged after backprop" in capsys.readouterr().out
