"""The emulated-cluster benchmark, end to end, in one command (needs root; see `benchmarks.cluster`).

    sudo .venv/bin/python -m benchmarks.run                  # full: ~20 min on 2 cores
    sudo .venv/bin/python -m benchmarks.run --smoke --out /tmp/smoke   # tiny model, a few steps

Phases (each a fresh emulated cluster; every job bounded by a timeout):
  1. step time  — `--workers` hosts at `--rate`: every compressor spec on each task (the examples'
     models), side by side in one job (one step of each per round, the order rotated every round:
     `benchmarks.rounds`), then in a job of its own PyTorch DDP without a hook and with
     ``powerSGD_hook`` (`--ddp-ranks`), likewise; `--repeats N` alternates the two jobs N times;
     then a short job of the same specs under Horovod's timeline, for its bytes (the timed jobs run
     without ``HOROVOD_TIMELINE``, which slows every Horovod step while set);
  2. scaling    — 2…4 hosts at `--scaling-rate` (≤ 200 Mbit/s so 2 cores keep up),
     all-reduce vs all-gather compressors on the Fashion-MNIST CNN;
  3. time-to-accuracy — the examples' own loops (CNN test accuracy, LSTM validation perplexity) at
     each of `--tta-rates`, `--tta-repeats` times: PyTorch DDP without and with ``powerSGD_hook``
     (`--tta-ddp`) and Horovod with each of `--tta-specs`, running the same loop, beside the compute
     floor of the same steps (`benchmarks.tta`).
Then `benchmarks.report` fits the advisor's cost model and writes JSON, Markdown and PNGs to `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from benchmarks.cluster import ClusterError, Cluster, check, enter_sandbox
from benchmarks import tta
from benchmarks.tasks import median
from horovod_powersgd import machine

ROOT = Path(__file__).resolve().parent.parent
SINGLE_ROUND, TWO_SIDED = "powersgd:rank=2,alternate=True", "powersgd:rank=2,two_sided=True"
STEP_SPECS = ("none;fp16;powersgd:rank=1;powersgd:rank=2;powersgd:rank=4;powersgd:rank=1,alternate=True;"
              f"{SINGLE_ROUND};powersgd:rank=4,alternate=True;{TWO_SIDED};signum;topk:ratio=0.01;"
              "randomk:ratio=0.01")
SCALING_SPECS = f"none;powersgd:rank=2;{SINGLE_ROUND};{TWO_SIDED};signum;topk:ratio=0.01;randomk:ratio=0.01"
TTA_SPECS = f"none;powersgd:rank=2;{TWO_SIDED}"
TTA_DDP = "none;powersgd:rank=2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", default="1gbit", help="per-worker link for phases 1 and 3 (tc syntax)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", default="fashion_mnist,ptb_lstm")
    p.add_argument("--specs", default=STEP_SPECS, help="';'-separated compressor specs")
    p.add_argument("--ddp-ranks", default="0,2", help="DDP runs: 0 = no hook, r = powerSGD_hook rank r")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1,
                   help="phase 1: run the Horovod and the DDP job this many times, alternating; "
                        "every figure is the median over repeats")
    p.add_argument("--scaling", default="2,3,4", help="worker counts for phase 2 ('' to skip)")
    p.add_argument("--scaling-rate", default="200mbit")
    p.add_argument("--scaling-specs", default=SCALING_SPECS)
    p.add_argument("--tta-specs", default=TTA_SPECS, help="phase 3's Horovod runs ('' and no "
                   "--tta-ddp: skip phase 3)")
    p.add_argument("--tta-ddp", default=TTA_DDP, help="phase 3's DDP runs: none, powersgd:rank=R (the hook)")
    p.add_argument("--tta-tasks", default="fashion_mnist,ptb_lstm")
    p.add_argument("--tta-rates", default="1gbit,200mbit")
    p.add_argument("--tta-repeats", type=int, default=2, help="phase 3: runs per seed (time spread)")
    p.add_argument("--tta-seeds", default=str(tta.DEFAULT_SEED),
                   help="phase 3: the examples' --seed of each set of runs, comma-separated (metric spread)")
    p.add_argument("--tta-epochs", type=int, default=2, help="the CNN's epochs")
    p.add_argument("--tta-lstm-tokens", type=int, default=929589,
                   help="the LSTM's training tokens (one epoch; default: all of them)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--smoke", action="store_true",
                   help="tiny models, 3 steps, 2 workers at 100 Mbit/s, a 4-batch time-to-accuracy run")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    p.add_argument("--timeout", type=float, default=600, help="seconds per job")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    if not all(seed.strip().lstrip("-").isdigit() for seed in args.tta_seeds.split(",")):
        p.error(f"--tta-seeds must be integers separated by commas, got {args.tta_seeds!r}")
    if args.smoke:
        args.rate, args.workers, args.tasks = "100mbit", 2, "fashion_mnist"
        args.specs, args.ddp_ranks, args.steps, args.warmup = "none;powersgd:rank=2", "2", 3, 1
        args.scaling, args.tta_specs, args.timeout = "", "none;powersgd:rank=2", min(args.timeout, 120)
        args.tta_ddp, args.tta_tasks, args.tta_rates, args.tta_repeats = "powersgd:rank=2", "fashion_mnist", "100mbit", 1
    return args


def merge_repeats(jobs: list) -> dict:
    """One job's record from ``jobs`` (the same job repeated): per spec, the median over repeats of
    every figure (each already a median over that job's steps), with the repeats' step times kept
    in ``step_s_repeats``; one job is returned as it is."""
    if len(jobs) == 1:
        return jobs[0]
    merged = {**jobs[0], "repeats": len(jobs), "results": []}
    for entries in zip(*(job["results"] for job in jobs)):
        entry = dict(entries[0])
        if "error" not in entry:
            for key, value in entry.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    entry[key] = median([e[key] for e in entries])
            entry["step_s_repeats"] = [e["step_s"] for e in entries]
            entry["step_times_s"] = [t for e in entries for t in e.get("step_times_s", [])]
        merged["results"].append(entry)
    if jobs[0].get("compute_s") is not None:
        merged["compute_s"] = median([job["compute_s"] for job in jobs])
    return merged


#: what the timeline job adds to each spec's figures
TIMELINE_FIELDS = ("timeline", "timeline_payload_per_step", "timeline_wire_bytes_per_step")


def with_timelines(job: dict, timelines: dict) -> dict:
    """``job``'s record with each spec's figures from the timeline job (`benchmarks.step_worker`
    ``--timeline-dir``: the same specs in the same order) added."""
    for entry, recorded in zip(job["results"], timelines["results"]):
        if "error" not in entry and "error" not in recorded:
            entry.update({k: recorded[k] for k in TIMELINE_FIELDS if k in recorded})
    return job


def python(*argv) -> list:
    return [sys.executable, *map(str, argv)]


def timeline_job(cluster, args, task: str, specs: str, warmup: int, timeline_dir: Path, env: dict,
                 tiny: list) -> dict:
    """The step phase's timeline job on ``cluster``: every spec warmed up, then a few steps of each
    alone under Horovod's timeline (`benchmarks.step_worker` ``--timeline-dir``); its record."""
    target = timeline_dir.parent / f"{timeline_dir.name}.bytes.json"
    check(cluster.run_horovod(python("-m", "benchmarks.step_worker", "--task", task, "--specs", specs,
                                     "--warmup", warmup, "--out", target, "--timeline-dir", timeline_dir,
                                     *tiny), env, args.timeout, f"timeline-{timeline_dir.name}"),
          f"timeline {timeline_dir.name}")
    return json.loads(target.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        enter_sandbox(python("-m", "benchmarks.run", *(argv if argv is not None else sys.argv[1:])))
    except ClusterError as error:
        print(f"benchmarks.run: {error}", file=sys.stderr)
        return 2
    out, work = args.out, args.out / "tmp"
    shutil.rmtree(work, ignore_errors=True)
    (work / "raw").mkdir(parents=True)
    tiny = ["--tiny"] if args.smoke else []
    env = {"PYTHONPATH": str(ROOT)}
    # only the timeline jobs set it: Horovod tracks negotiations for the timeline every cycle while
    # it is set, a cost no timed step should carry (`benchmarks.step_worker`)
    timeline_env = {**env, "HOROVOD_TIMELINE": "DYNAMIC"}
    started = time.time()
    raw = {"steps": [], "ddp": [], "scaling": [], "tta": [], "skipped": []}

    def log(msg):
        print(f"[benchmark {time.time() - started:6.0f} s] {msg}", flush=True)

    # ---- phase 1: step time, all compressors and DDP, same links
    with Cluster(args.workers, args.rate, work) as cluster:
        for task in filter(None, args.tasks.split(",")):
            horovod_jobs, ddp_jobs = [], []
            for repeat in range(args.repeats):  # Horovod's job and DDP's alternate: drift falls on both
                log(f"step time: {task}, {args.workers} workers at {args.rate}"
                    + (f" (repeat {repeat + 1}/{args.repeats})" if args.repeats > 1 else ""))
                target = work / "raw" / f"steps.{task}.{repeat}.json"
                check(cluster.run_horovod(python("-m", "benchmarks.step_worker", "--task", task,
                                                 "--specs", args.specs, "--steps", args.steps, "--warmup",
                                                 args.warmup, "--out", target, *tiny),
                                          {**env, "BENCH_RATE": args.rate}, args.timeout, f"steps-{task}"),
                      f"step time {task}")
                horovod_jobs.append({**json.loads(target.read_text()), "rate": args.rate})
                if args.ddp_ranks:
                    log(f"DDP: {task}")
                    target = work / "raw" / f"ddp.{task}.{repeat}.json"
                    check(cluster.run_torch_distributed(python("-m", "benchmarks.ddp_worker", "--task", task,
                                                               "--ranks", args.ddp_ranks, "--steps", args.steps,
                                                               "--warmup", args.warmup, "--out", target, *tiny),
                                                        env, args.timeout, f"ddp-{task}"), f"DDP {task}")
                    ddp_jobs.append({**json.loads(target.read_text()), "rate": args.rate})
            log(f"timeline: {task}")
            raw["steps"].append(with_timelines(merge_repeats(horovod_jobs), timeline_job(
                cluster, args, task, args.specs, args.warmup, work / "timelines" / task, timeline_env, tiny)))
            if ddp_jobs:
                raw["ddp"].append(merge_repeats(ddp_jobs))

    # ---- phase 2: scaling at fixed per-worker bandwidth
    for n in (int(x) for x in args.scaling.split(",") if x.strip()):
        log(f"scaling: {n} workers at {args.scaling_rate}")
        with Cluster(n, args.scaling_rate, work) as cluster:
            target = work / "raw" / f"scaling.{n}.json"
            check(cluster.run_horovod(python("-m", "benchmarks.step_worker", "--task", "fashion_mnist",
                                             "--specs", args.scaling_specs, "--steps", max(5, args.steps // 2),
                                             "--warmup", 3, "--out", target, *tiny),
                                      {**env, "BENCH_RATE": args.scaling_rate}, args.timeout, f"scaling-{n}"),
                  f"scaling {n}")
            raw["scaling"].append(with_timelines(
                {**json.loads(target.read_text()), "rate": args.scaling_rate},
                timeline_job(cluster, args, "fashion_mnist", args.scaling_specs, 3,
                             work / "timelines" / f"scaling{n}", timeline_env, tiny)))

    # ---- phase 3: time to accuracy, the examples' loops, ours against DDP's
    if args.tta_specs.strip() or args.tta_ddp.strip():
        tta.run_phase(args, lambda rate: Cluster(args.workers, rate, work), python, env, raw, work, log)

    # Horovod's settings in the environment reach every Horovod job: part of the command
    settings = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(os.environ.items())
                       if k.startswith("HOROVOD_"))
    raw["machine"] = {**machine.describe(), "cpus": os.cpu_count(), "smoke": args.smoke,
                      "command": f"sudo {settings}.venv/bin/python -m benchmarks.run " + shlex.join(
                          argv if argv is not None else sys.argv[1:]),
                      "seconds": time.time() - started}
    log("report")
    from benchmarks import report

    # only the default results/ feeds the advisor's defaults; other --out dirs get their own fit file
    report.write(raw, out, fit_advisor=report.refits_the_package(out, args.smoke))
    log(f"done: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
