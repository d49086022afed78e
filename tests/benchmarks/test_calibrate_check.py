"""The calibration check: predicted vs measured step times, and whether a miss in the ranking is
larger than the benchmark run can resolve."""
import dataclasses

import numpy as np

from benchmarks.calibrate_check import compare, median_gap
from horovod_powersgd import advisor


def test_two_samples_of_one_distribution_are_a_tie():
    rng = np.random.default_rng(1)
    gap, low, high = median_gap(list(0.1 * rng.lognormal(0, 0.15, 30)), list(0.1 * rng.lognormal(0, 0.15, 30)))
    assert low <= 0 <= high


def test_a_clear_difference_is_resolved():
    rng = np.random.default_rng(2)
    gap, low, high = median_gap(list(0.13 * rng.lognormal(0, 0.05, 30)), list(0.10 * rng.lognormal(0, 0.05, 30)))
    assert 0 < low < gap < high and abs(gap - 0.3) < 0.1


def test_rounds_are_resampled_together():
    """A host whose slow spells lengthen every spec's step of a round: 2 % apart in every round,
    which the rounds resolve, though step times spread by ±30 % hide it from unpaired samples."""
    rng = np.random.default_rng(3)
    host = 0.1 * rng.lognormal(0, 0.3, 60)
    faster, slower = host * rng.normal(1, 0.002, 60), 1.02 * host * rng.normal(1, 0.002, 60)
    gap, low, high = median_gap(list(slower), list(faster))
    assert 0 < low < gap < high
    _, low, high = median_gap(list(slower), list(faster[:-1]))  # unequal lengths: resampled apart
    assert low <= 0 <= high


def test_a_wrong_ranking_reports_its_gap():
    shapes = [(64, 128), (64,), (10, 64), (10,)]
    # as a calibration has them: its link and the measured compute
    fit = dataclasses.replace(advisor.Fit.load(), bandwidth_bps=1e9, compute_s=0.05)
    predicted = {s: advisor.predict(s, shapes, fit.bandwidth_bps, 2, fit.compute_s, fit).step_s
                 for s in ("powersgd:rank=1", "powersgd:rank=4")}
    best, worst = sorted(predicted, key=predicted.get)
    # the measurement says the opposite of the prediction, by a hair
    results = [{"spec": best, "step_s": 0.101, "compute_s": 0.05, "step_times_s": [0.101, 0.100, 0.102]},
               {"spec": worst, "step_s": 0.100, "compute_s": 0.05, "step_times_s": [0.100, 0.101, 0.099]}]
    raw = {"steps": [{"task": "t", "rate": "1gbit", "workers": 2, "parameter_shapes": shapes, "results": results}]}
    (fastest,) = compare(raw, {"t": fit})["fastest"]
    assert fastest["measured"] == worst and fastest["predicted"] == best
    gap, low, high = fastest["gap"]
    assert gap > 0 and low <= 0 <= high


def test_the_advisors_tie_and_advice_are_checked_against_the_measured_fastest():
    """Single-round specs predicted within the tie margin: the check says whether the measured
    fastest is among them, and how the advised one measured against it (both single-round schemes
    carry an accuracy caveat, so the advice is the predicted fastest of the tie)."""
    shapes = [(256, 512), (256,), (10, 256), (10,)]
    fit = dataclasses.replace(advisor.Fit.load(), bandwidth_bps=1e9, compute_s=0.05)
    specs = ("powersgd:rank=1,alternate=True", "powersgd:rank=1,two_sided=True", "powersgd:rank=4")
    predicted = {s: advisor.predict(s, shapes, fit.bandwidth_bps, 2, fit.compute_s, fit).step_s for s in specs}
    tied = advisor.tied_with_fastest(predicted)
    assert "powersgd:rank=4" not in tied and set(tied) == set(specs[:2])  # classic's second round
    times = {specs[0]: [0.101, 0.100, 0.102], specs[1]: [0.100, 0.101, 0.099], specs[2]: [0.12, 0.121, 0.119]}
    results = [{"spec": s, "step_s": float(np.median(t)), "compute_s": 0.05, "step_times_s": t}
               for s, t in times.items()]
    raw = {"steps": [{"task": "t", "rate": "1gbit", "workers": 2, "parameter_shapes": shapes, "results": results}]}
    (fastest,) = compare(raw, {"t": fit})["fastest"]
    assert fastest["measured"] == specs[1] and fastest["measured"] in fastest["tied"]
    assert fastest["advised"] == tied[0] == advisor.advised(tied)
    if fastest["advised"] == fastest["measured"]:
        assert fastest["advised_gap"] is None
    else:  # the advised one's steps against the measured fastest's, resampled together
        assert fastest["advised_gap"] == median_gap(times[fastest["advised"]], times[specs[1]])
