"""One worker of the PyTorch-DDP peer: the same task over the same emulated links, with torch.distributed
(gloo backend) and DDP's built-in ``powerSGD_hook`` — what a user would pick instead of Horovod + ours.

Measures, like `benchmarks.step_worker` and with the same side-by-side rounds (`benchmarks.rounds`:
one timed step of each run per round, order rotated, a plain step before each as its compute
sample), the median step time and the link's bytes per step for DDP without a hook (plain
all-reduce of 25 MB buckets) and for each PowerSGD rank requested. A job of its own, without
Horovod in the process: an idle Horovod beside DDP slowed DDP's steps by 10–25 % here. The hook
starts compressing after ``start_powerSGD_iter`` = 2 steps (it requires > 1 with error feedback; our
warm-up steps cover that), with the same error feedback, warm start and min_compression_rate = 2 as
our defaults. DDP runs the hook's two rounds per bucket one after the other (pytorch#74148).
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from benchmarks.rounds import Variant, plain_stepper, run_rounds, summarize, warm_up
from benchmarks.tasks import TASKS
from examples._engine import leave_gloo_job


def label(psgd_rank: int) -> str:
    return f"ddp+powerSGD_hook:rank={psgd_rank}" if psgd_rank else "ddp (no hook)"


def build_variant(task, psgd_rank: int, hook_bucket_cap_mb: float) -> Variant:
    # With the hook, one bucket: with DDP's default buckets (1 MiB first, then 25 MiB) the hook
    # deadlocked here on the gloo backend (torch 2.13: rank 0 stuck in Reducer::finalize_backward,
    # both gloo run-loop threads blocked in a future's wait() inside the hook's callbacks).
    model = DDP(task.model(), bucket_cap_mb=hook_bucket_cap_mb if psgd_rank else None)
    if psgd_rank > 0:
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=psgd_rank,
                                            start_powerSGD_iter=2, min_compression_rate=2,
                                            use_error_feedback=True, warm_start=True, random_seed=0)
        model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(i):
        optimizer.zero_grad()
        task.loss(model, i).backward()  # DDP's hooks all-reduce during backward
        optimizer.step()

    return Variant(label(psgd_rank), model, step)


def slowest(value: float) -> float:
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, value)
    return max(every)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--ranks", default="2", help="','-separated PowerSGD ranks; 0 = no hook")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--hook-bucket-cap-mb", type=float, default=1024,
                        help="DDP bucket size with the hook (default: one bucket for the whole model)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    torch.set_num_threads(1)
    rank, size = dist.get_rank(), dist.get_world_size()
    task = TASKS[args.task](rank, tiny=args.tiny)
    _, plain_step = plain_stepper(task, args.warmup)
    variants = [build_variant(task, int(r), args.hook_bucket_cap_mb) for r in args.ranks.split(",")]
    warm_up(variants, args.warmup)
    run_rounds(variants, plain_step, dist.barrier, args.warmup, args.steps)
    results = [summarize(v, args.steps, slowest) for v in variants]
    gathered = [None] * size
    dist.all_gather_object(gathered, results)
    if rank == 0:
        for i, entry in enumerate(results):
            entry["per_rank"] = [{k: g[i][k] for k in ("step_s", "compute_s", "link_bytes_per_step")}
                                 for g in gathered]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"task": args.task, "workers": size, "steps": args.steps,
                                        "results": results, "side_by_side": True}, indent=1))
        print(f"wrote {args.out}", flush=True)
    leave_gloo_job(dist)


if __name__ == "__main__":
    main()
