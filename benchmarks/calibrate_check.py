"""Check a calibration against the step benchmark on the same links: the calibrated advisor's predicted
step time per spec vs the measured one, whether it ranks the fastest spec correctly, and whether the
measured fastest is among the specs the advisor calls a tie (predicted within
`advisor.TIE_MARGIN` of its fastest), and how the spec it advises from that tie measured.

    .venv/bin/python -m benchmarks.calibrate_check results/benchmark.json \\
        --fit fashion_mnist=/tmp/fm.json --fit ptb_lstm=/tmp/lstm.json [--markdown]

Each task is predicted from its own fit (`horovod_powersgd.calibrate` with ``--model``/``--batch``
from `benchmarks.calibrate_tasks`): the fit's link, workers, measured compute and codec.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from horovod_powersgd import advisor


def median_gap(slower: list, faster: list, resamples: int = 2000, seed: int = 0) -> tuple:
    """How much slower (relative) the median of ``slower``'s step times is than ``faster``'s, with
    a 95 % bootstrap interval: (gap, low, high). An interval that holds 0 means the run cannot tell
    the two apart.

    Lists of equal length are the side-by-side rounds of `benchmarks.rounds` (step i of each spec
    timed in the same round, moments apart), so the bootstrap resamples rounds, the same ones for
    both: a slow spell of the host that lengthens every spec's step of a round moves both medians
    together instead of widening the interval. Lists of unequal length are resampled apart."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(slower), np.asarray(faster)
    paired = a.size == b.size
    gaps = []
    for _ in range(resamples):
        rounds_a = rng.integers(0, a.size, a.size)
        rounds_b = rounds_a if paired else rng.integers(0, b.size, b.size)
        gaps.append(np.median(a[rounds_a]) / np.median(b[rounds_b]) - 1)
    low, high = np.percentile(gaps, [2.5, 97.5])
    return float(np.median(a) / np.median(b) - 1), float(low), float(high)


def compare(raw: dict, fits: dict, prefix: str = "powersgd") -> dict:
    rows, fastest = [], []
    for run in raw["steps"]:
        fit = fits.get(run["task"])
        if fit is None:
            continue
        shapes = [tuple(s) for s in run["parameter_shapes"]]
        measured, predicted, steps = {}, {}, {}
        for r in run["results"]:
            if "error" in r:
                continue
            steps[r["spec"]] = r.get("step_times_s")
            p = advisor.predict(r["spec"], shapes, fit.bandwidth_bps, run["workers"], fit.compute_s, fit)
            measured[r["spec"]], predicted[r["spec"]] = r["step_s"], p.step_s
            rows.append({"task": run["task"], "rate": run["rate"], "spec": r["spec"], "measured_s": r["step_s"],
                         "measured_compute_s": r["compute_s"], "predicted_s": p.step_s,
                         "predicted_compute_s": p.compute_s, "error": p.step_s / r["step_s"] - 1})
        specs = [s for s in measured if s.startswith(prefix)]
        if specs:
            tied = advisor.tied_with_fastest({spec: predicted[spec] for spec in specs})
            entry = {"task": run["task"], "rate": run["rate"], "measured": min(specs, key=measured.get),
                     "predicted": tied[0], "tied": tied, "advised": advisor.advised(tied), "gap": None,
                     "advised_gap": None}
            for spec, key in ((entry["predicted"], "gap"), (entry["advised"], "advised_gap")):
                if spec != entry["measured"] and steps[entry["measured"]] and steps[spec]:
                    entry[key] = median_gap(steps[spec], steps[entry["measured"]])
            fastest.append(entry)
    errors = [abs(r["error"]) for r in rows if r["spec"].startswith(prefix)]
    return {"rows": rows, "fastest": fastest, "median_abs_error": float(np.median(errors)) if errors else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", type=Path, help="benchmark.json written by benchmarks.run")
    p.add_argument("--fit", action="append", default=[], help="TASK=PATH of a calibration fit")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    fits = {}
    for item in args.fit:
        task, _, path = item.partition("=")
        fits[task] = advisor.Fit.load(Path(path))
    result = compare(json.loads(args.benchmark.read_text())["raw"], fits)
    if args.markdown:
        print("| task | link | spec | measured ms | predicted ms | error |\n|---|---|---|---:|---:|---:|")
    for r in result["rows"]:
        if args.markdown:
            print(f"| {r['task']} | {r['rate']} | {r['spec']} | {r['measured_s'] * 1e3:.1f} | "
                  f"{r['predicted_s'] * 1e3:.1f} | {r['error']:+.0%} |")
        else:
            print(f"{r['task']:<14}{r['rate']:>8}  {r['spec']:<32} measured {r['measured_s'] * 1e3:7.1f} ms "
                  f"(compute {r['measured_compute_s'] * 1e3:6.1f})  predicted {r['predicted_s'] * 1e3:7.1f} ms "
                  f"(compute {r['predicted_compute_s'] * 1e3:6.1f})  {r['error']:+.1%}")

    def measured_against_fastest(gap) -> str:
        gap, low, high = gap
        return (f"measured {gap:+.1%} [95 % interval {low:+.1%} … {high:+.1%}] "
                + ("— a tie at this run's resolution" if low <= 0 <= high else "— a real miss"))

    for f in result["fastest"]:
        verdict = "correct" if f["measured"] == f["predicted"] else "WRONG"
        if f["gap"] is not None:
            verdict += f"; the predicted one {measured_against_fastest(f['gap'])}"
        print(f"fastest PowerSGD spec, {f['task']} at {f['rate']}: measured {f['measured']}, "
              f"predicted {f['predicted']} ({verdict})")
        advised = f"advised {f['advised']}: " + (
            "the measured fastest" if f["advised"] == f["measured"]
            else measured_against_fastest(f["advised_gap"]) if f["advised_gap"] else "no step times")
        print(f"  predicted tie (within {advisor.TIE_MARGIN:.0%}): {len(f['tied'])} specs, the measured "
              f"fastest {'among them' if f['measured'] in f['tied'] else 'NOT among them'}; {advised}")
    if result["median_abs_error"] is not None:
        print(f"median |error| over PowerSGD specs and tasks: {result['median_abs_error']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
