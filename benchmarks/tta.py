"""Time to accuracy, end to end: the examples' own training loops on the emulated cluster, our
engine against PyTorch DDP with and without ``powerSGD_hook`` running the *same* loop
(``examples._engine``), beside the compute floor of the same steps.

Per task (the Fashion-MNIST CNN's test accuracy, the PTB LSTM's validation perplexity), per link
rate, per seed and per repeat, every run trains the same model on the same shards in the same
order. A repeat measures time (the examples are deterministic: a repeat ends at the same metric);
a seed (``--seed`` of the examples: initial weights and data order) measures how much of a gap in
the final metric is the draw rather than the compressor. The target is the uncompressed runs' mean
final metric − 0.5 pp (accuracy) or + 2 % (perplexity); a run's time to target is its training time
(evaluation excluded) at the first evaluation that meets it.
The compute floor is the same steps on each worker alone (``--engine local`` on one rank's share of
the data, both workers at once, as they share the machine's cores in the real runs).
"""
from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional

from examples import _flags

#: per task: the example module, its metric, whether higher is better, the target's tolerance, and
#: the flag that limits its training data (with the whole set's size where `task_flags` may leave
#: the flag out)
TASKS = {
    "fashion_mnist": {"module": "examples.torch_fashion_mnist", "metric": "test_accuracy",
                      "higher": True, "tolerance": 0.005, "label": "test accuracy",
                      "data_flag": "--train-limit", "data": 60000},
    "ptb_lstm": {"module": "examples.torch_ptb_lstm", "metric": "valid_perplexity",
                 "higher": False, "tolerance": 0.02, "label": "validation perplexity",
                 "data_flag": "--train-tokens"},  # `task_flags` always gives it
}
#: the comparison peer: DDP with PyTorch's own PowerSGD hook at our rank
PEER = ("ddp", "powersgd:rank=2")
#: the "target" cells of the time-to-accuracy issue: time to target ≤ this × the peer's, per rate
TARGET_VS_PEER = {"1gbit": 0.9, "200mbit": 0.75}
#: and the final metric within this of the peer's (accuracy in points, perplexity relative)
METRIC_VS_PEER = {"fashion_mnist": 0.003, "ptb_lstm": 0.01}
#: where the peer trains within this factor of the compute floor, ours must too
FLOOR_MARGIN = 1.1


def run_label(engine: str, spec: str) -> str:
    if engine == "ddp":
        return "DDP + powerSGD_hook " + spec.partition(":")[2] if spec != "none" else "DDP, no hook"
    if engine == "local":
        return "compute floor (no communication)"
    return f"Horovod, {spec}" if spec == "none" else f"ours, {spec}"


def task_flags(task: str, epochs: int, eval_every: int, lstm_tokens: int, smoke: bool) -> list:
    if task == "fashion_mnist":
        if smoke:
            return ["--epochs", 1, "--max-batches", 4, "--train-limit", 2000, "--test-limit", 500,
                    "--eval-every", 2]
        return ["--epochs", epochs, "--eval-every", eval_every]
    if smoke:
        return ["--epochs", 1, "--max-batches", 4, "--train-tokens", 20000, "--eval-tokens", 2000,
                "--eval-every", 2]
    return ["--epochs", 1, "--train-tokens", lstm_tokens, "--eval-tokens", 30000,
            "--eval-every", max(10, eval_every // 2)]


def floor_flags(task: str, flags: list, workers: int) -> list:
    """``flags`` for one worker alone on one rank's share of the data (the same steps)."""
    spec = TASKS[task]
    flags = list(flags)
    if spec["data_flag"] in flags:
        i = flags.index(spec["data_flag"]) + 1
        flags[i] = int(flags[i]) // workers
    else:
        flags += [spec["data_flag"], spec["data"] // workers]
    return flags


def run_phase(args, cluster_for, python, env: dict, raw: dict, work: Path, log) -> None:
    """Every task × rate × repeat × run of the phase; records appended to ``raw["tta"]``, failures
    to ``raw["skipped"]`` (a run that cannot train is a result)."""
    runs = [("ddp", s) for s in args.tta_ddp.split(";") if s.strip()]
    runs += [("horovod", s) for s in args.tta_specs.split(";") if s.strip()]
    seeds = [int(s) for s in args.tta_seeds.split(",")]
    for task in filter(None, args.tta_tasks.split(",")):
        module = TASKS[task]["module"]
        flags = task_flags(task, args.tta_epochs, args.eval_every, args.tta_lstm_tokens, args.smoke)
        for rate in filter(None, args.tta_rates.split(",")):
            with cluster_for(rate) as cluster:
                for seed, repeat, (engine, spec) in itertools.product(seeds, range(args.tta_repeats), runs):
                    log(f"time-to-accuracy: {task} at {rate}, seed {seed}, repeat {repeat}: "
                        f"{run_label(engine, spec)}")
                    target = work / "raw" / f"tta.{len(raw['tta'])}.jsonl"
                    argv = python("-m", module, "--engine", engine, "--compression", spec,
                                  "--no-progress", "--json", target, "--seed", seed, *flags)
                    launch = cluster.run_torch_distributed if engine == "ddp" else cluster.run_horovod
                    results = launch(argv, env, args.timeout, f"tta-{len(raw['tta'])}")
                    _collect(raw, results, target, task=task, rate=rate, workers=args.workers,
                             engine=engine, spec=spec, seed=seed, repeat=repeat)
        with cluster_for(args.tta_rates.split(",")[0]) as cluster:
            log(f"time-to-accuracy: {task}, compute floor")
            target = work / "raw" / f"tta.{len(raw['tta'])}.jsonl"
            argv = python("-m", module, "--engine", "local", "--compression", "none", "--no-progress",
                          "--json", target, "--seed", seeds[0], *floor_flags(task, flags, args.workers))
            # every worker on its own (rank 0's record is kept): the machine's cores shared as in the runs
            results = cluster.run_torch_distributed(argv, env, args.timeout, f"tta-floor-{task}")
            _collect(raw, results, target, task=task, rate="none", workers=args.workers,
                     engine="local", spec="none", seed=seeds[0], repeat=0)


def _collect(raw: dict, results, target: Path, **run) -> None:
    if any(r.returncode for r in results) or not target.exists():
        failed = next((r for r in results if r.returncode), results[0])
        raw["skipped"].append({"phase": "tta", **run, "returncodes": [r.returncode for r in results],
                               "error": f"worker {failed.rank}: " + failed.log[-1500:]})
        return
    records = [json.loads(line) for line in target.read_text().splitlines()]
    raw["tta"].append({**run, "records": records})


# ---------------------------------------------------------------------------- analysis
def _final(run: dict) -> dict:
    return [r for r in run["records"] if r.get("final")][-1]


def time_to_target(records: list, metric: str, target: float, higher: bool) -> Optional[float]:
    """Training seconds at the first evaluation meeting ``target`` (None: never)."""
    for r in sorted((r for r in records if metric in r), key=lambda r: r["train_seconds"]):
        if (r[metric] >= target) if higher else (r[metric] <= target):
            return r["train_seconds"]
    return None


def _median(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


#: the examples' default ``--seed``, the seed of every run recorded before the phase had seeds
DEFAULT_SEED = _flags.DEFAULT_SEED
#: what a run recorded before the phase had engines, tasks, seeds and repeats was
OLDER_RUN = {"engine": "horovod", "task": "fashion_mnist", "seed": DEFAULT_SEED, "repeat": 0}


def _runs(raw_tta: List[dict]) -> List[dict]:
    """The recorded runs, those of an earlier phase given its one engine, task, seed and repeat."""
    return [{**OLDER_RUN, **run} for run in raw_tta]


def analyse(raw_tta: List[dict]) -> List[dict]:
    """One table per (task, rate): per engine and spec, the medians over seeds and repeats and
    their spread."""
    raw_tta = _runs(raw_tta)
    tables = []
    # both workers of the floor job write their records: the slower one is the floor
    floors = {r["task"]: max((x for x in r["records"] if x.get("final")), key=lambda x: x["train_seconds"])
              for r in raw_tta if r["engine"] == "local"}
    for task, rate in sorted({(r["task"], r["rate"]) for r in raw_tta if r["engine"] != "local"}):
        spec = TASKS[task]
        metric, higher = spec["metric"], spec["higher"]
        runs = [r for r in raw_tta if r["task"] == task and r["rate"] == rate]
        uncompressed = [_final(r)[metric] for r in runs if r["spec"] == "none"]
        if not uncompressed:
            continue
        base = statistics.fmean(uncompressed)
        target = base - spec["tolerance"] if higher else base * (1 + spec["tolerance"])
        rows: Dict[tuple, dict] = {}
        for run in runs:
            final = _final(run)
            row = rows.setdefault((run["engine"], run["spec"]), {
                "engine": run["engine"], "spec": run["spec"], "label": run_label(run["engine"], run["spec"]),
                "tta_s": [], "final": [], "train_s": [], "step": [], "bytes_per_step": []})
            row["tta_s"].append(time_to_target(run["records"], metric, target, higher))
            row["final"].append(final[metric])
            row["train_s"].append(final["train_seconds"])
            row["step"].append(final.get("step_seconds") or {})
            row["bytes_per_step"].append(final["sent_bytes"] / max(1, final["steps"]))
        for row in rows.values():
            row["tta_median_s"] = None if None in row["tta_s"] else _median(row["tta_s"])
            row["final_median"] = _median(row["final"])
            for key in ("mean", "median", "p90"):
                row[f"step_{key}_s"] = _median([s.get(key) for s in row["step"]])
            row["bytes_per_step_median"] = _median(row["bytes_per_step"])
        peer = rows.get(PEER)
        for row in rows.values():
            row["vs_peer"] = (row["tta_median_s"] / peer["tta_median_s"]
                              if peer and peer["tta_median_s"] and row["tta_median_s"] else None)
        floor = floors.get(task)
        tables.append({"task": task, "rate": rate, "metric": metric, "uncompressed": base,
                       "seeds": sorted({r["seed"] for r in runs}),
                       "repeats": max(r["repeat"] for r in runs) + 1,
                       "target": target, "rows": list(rows.values()),
                       "floor_s": floor["train_seconds"] if floor else None,
                       "floor_step_median_s": (floor.get("step_seconds") or {}).get("median") if floor else None})
    return tables


def _fmt(x, spec=".1f", none="—"):
    return none if x is None else format(x, spec)


#: how a metric is printed, by whether higher is better (accuracy) or not (perplexity)
_METRIC_FORMAT = {True: ".4f", False: ".1f"}


def _metric(task: str, value) -> str:
    return _fmt(value, _METRIC_FORMAT[TASKS[task]["higher"]])


def _spread(values: list, spec: str) -> str:
    """`` (low–high)`` of ``values`` when they differ as printed, else nothing."""
    low, high = format(min(values), spec), format(max(values), spec)
    return f" ({low}–{high})" if len(values) > 1 and low != high else ""


def _runs_text(table: dict) -> str:
    seeds, repeats = table["seeds"], table["repeats"]
    parts = ([f"{len(seeds)} seeds"] if len(seeds) > 1 else []) + [f"{repeats} repeat{'s' * (repeats > 1)}"]
    return " × ".join(parts)


def markdown(tables: List[dict]) -> List[str]:
    lines = []
    for t in tables:
        task, spec = t["task"], TASKS[t["task"]]
        bound = "−" if spec["higher"] else "+"
        tolerance = f"{spec['tolerance'] * 100:g} {'pp' if spec['higher'] else '%'}"
        lines += [f"### {task}, {t['rate']} per worker", "",
                  f"Target: the uncompressed runs' mean final {spec['label']} ({_metric(task, t['uncompressed'])}) "
                  f"{bound} {tolerance} = {_metric(task, t['target'])}. Time to target: training seconds "
                  f"(evaluation excluded), median over {_runs_text(t)}, with their range; "
                  f"train s: all steps.", "",
                  f"| engine / compression | time to target s | vs DDP + hook | train s | "
                  f"final {spec['label']} | step ms mean / median / p90 | MB per step |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in sorted(t["rows"], key=lambda r: (r["tta_median_s"] is None, r["tta_median_s"] or 0)):
            reached = [x for x in row["tta_s"] if x is not None]
            tta = (f"{row['tta_median_s']:.1f}{_spread(reached, '.0f')}" if row["tta_median_s"] is not None else
                   f"not reached in {sum(x is None for x in row['tta_s'])} of {len(row['tta_s'])}")
            steps = " / ".join(_fmt(row[f"step_{k}_s"] and row[f"step_{k}_s"] * 1e3, ".0f")
                               for k in ("mean", "median", "p90"))
            vs_peer = "—" if row["vs_peer"] is None else f"{row['vs_peer']:.2f}×"
            final = _metric(task, row["final_median"]) + _spread(row["final"], _METRIC_FORMAT[spec["higher"]])
            lines.append(f"| {row['label']} | {tta} | {vs_peer} | "
                         f"{_median(row['train_s']):.1f}{_spread(row['train_s'], '.0f')} | {final} | {steps} | "
                         f"{row['bytes_per_step_median'] / 1e6:.3f} |")
        if t["floor_s"] is not None:
            lines.append(f"| compute floor (no communication) | | | {t['floor_s']:.1f} | | "
                         f"{_fmt(t['floor_step_median_s'] and t['floor_step_median_s'] * 1e3, '.0f')} (median) | 0 |")
        lines.append("")
    return lines


def targets(tables: List[dict], default_spec: str) -> List[str]:
    """The issue's target cells for ``default_spec`` (what ``PowerSGD(rank=2)`` runs) against the
    peer, one line each."""
    lines = []
    for t in tables:
        rows = {(r["engine"], r["spec"]): r for r in t["rows"]}
        ours, peer = rows.get(("horovod", default_spec)), rows.get(PEER)
        bound = TARGET_VS_PEER.get(t["rate"])
        if not (ours and peer) or bound is None:
            continue
        if TASKS[t["task"]]["higher"]:
            gap, allowed = ours["final_median"] - peer["final_median"], METRIC_VS_PEER[t["task"]]
            metric_ok, gap_text = gap >= -allowed, f"{gap * 100:+.2f} pp"
        else:
            gap = ours["final_median"] / peer["final_median"] - 1
            allowed = METRIC_VS_PEER[t["task"]]
            metric_ok, gap_text = gap <= allowed, f"{gap * 100:+.1f} %"
        if ours["tta_median_s"] is None:
            time_ok, time_text = False, "did not reach the target"
        elif peer["tta_median_s"] is None:
            # the peer never got there: ours against the peer's whole training time
            ratio = ours["tta_median_s"] / _median(peer["train_s"])
            time_ok = True
            time_text = (f"reached the target, DDP + powerSGD_hook did not (ours at {ratio:.2f}× the "
                         f"hook's whole training time)")
        else:
            ratio = ours["vs_peer"]
            time_ok = ratio <= bound
            time_text = f"time to target {ratio:.2f}× DDP + powerSGD_hook's (target ≤ {bound}×)"
        missed = " and ".join(part for part, ok in (("time", time_ok), ("metric", metric_ok)) if not ok)
        lines.append(f"- {t['task']} at {t['rate']}: {default_spec} {time_text}, final metric "
                     f"{gap_text} vs the hook's (within {allowed * 100:g} "
                     f"{'pp' if TASKS[t['task']]['higher'] else '%'} asked): "
                     f"{f'MISSED ({missed})' if missed else 'met'}.")
        floor = t["floor_s"]
        if floor and _median(peer["train_s"]) <= FLOOR_MARGIN * floor:
            mine = _median(ours["train_s"]) / floor
            lines.append(f"- {t['task']} at {t['rate']}: DDP + powerSGD_hook trains within "
                         f"{(FLOOR_MARGIN - 1) * 100:.0f} % of the compute floor, so must ours: "
                         f"{mine:.2f}× the floor: {'met' if mine <= FLOOR_MARGIN else 'MISSED'}.")
    return lines


def plot(tables: List[dict], raw_tta: List[dict], save) -> Optional[str]:
    """Metric against training time, one panel per task and rate (the first seed's repeat 0 of each
    run)."""
    if not tables:
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.2), squeeze=False)
    for ax, t in zip(axes[0], tables):
        metric = t["metric"]
        for run in _runs(raw_tta):
            if (run["task"], run["rate"], run["seed"], run["repeat"]) == (t["task"], t["rate"], t["seeds"][0], 0):
                pts = sorted((r for r in run["records"] if metric in r), key=lambda r: r["train_seconds"])
                ax.plot([r["train_seconds"] for r in pts], [r[metric] for r in pts], marker=".",
                        label=run_label(run["engine"], run["spec"]))
        ax.axhline(t["target"], color="grey", ls="--", lw=1, label="target")
        if t["floor_s"]:
            ax.axvline(t["floor_s"], color="black", ls=":", lw=1, label="compute floor")
        ax.set_xlabel("training seconds (evaluation excluded)")
        ax.set_ylabel(TASKS[t["task"]]["label"])
        ax.set_title(f"{t['task']}, {t['rate']} per worker")
        ax.legend(fontsize=7)
    return save(fig, "time_to_accuracy.png")
