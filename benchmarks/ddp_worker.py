"""One worker of the PyTorch-DDP peer: the same task over the same emulated links, with torch.distributed
(gloo backend) and DDP's built-in ``powerSGD_hook`` — what a user would pick instead of Horovod + ours.

Measures, like `benchmarks.step_worker`, the median step time and the link's bytes per step for DDP
without a hook (plain all-reduce of 25 MB buckets) and for each PowerSGD rank requested. The hook
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

from benchmarks.step_worker import link_bytes, time_steps
from benchmarks.tasks import TASKS, median


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
    results = []
    for psgd_rank in (int(r) for r in args.ranks.split(",")):
        # With the hook, one bucket: with DDP's default buckets (1 MiB first, then 25 MiB) the hook
        # deadlocked here on the gloo backend (torch 2.13: rank 0 stuck in Reducer::finalize_backward,
        # both gloo run-loop threads blocked in a future's wait() inside the hook's callbacks).
        model = DDP(task.model(), bucket_cap_mb=args.hook_bucket_cap_mb if psgd_rank else None)
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

        time_steps(step, args.warmup, 0)
        link0 = link_bytes()
        times = time_steps(step, 0, args.steps)
        link1 = link_bytes()
        results.append({"spec": f"ddp+powerSGD_hook:rank={psgd_rank}" if psgd_rank else "ddp (no hook)",
                        "step_s": median(times), "step_mean_s": sum(times) / len(times),
                        "link_bytes_per_step": (link1 - link0) / args.steps if link0 >= 0 else None})
    gathered = [None] * size
    dist.all_gather_object(gathered, results)
    if rank == 0:
        for i, entry in enumerate(results):
            entry["per_rank"] = [{"step_s": g[i]["step_s"], "link_bytes_per_step": g[i]["link_bytes_per_step"]}
                                 for g in gathered]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"task": args.task, "workers": size, "steps": args.steps,
                                        "results": results}, indent=1))
        print(f"wrote {args.out}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
