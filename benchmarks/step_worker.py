"""One Horovod worker of the step-time benchmark (started by `benchmarks.cluster`, one per emulated host).

For a task and a list of compressor specs, on every rank:
  compute    median time of forward + backward + SGD step of an identical model *without* Horovod
             (no hooks, no collectives), the slowest rank's;
  step       median wall-clock time of a full Horovod step (zero_grad … optimizer.step()) per spec;
             plain and Horovod steps alternate one by one, so both are sampled under the same
             conditions (measuring compute once up front drifted by up to 2× on this shared machine);
  codec      the compressor's own compress + decompress seconds per step (`compression.stats`);
  communicate = step − compute − codec: the communication backprop did not hide.
Bytes: per spec, the compressor's own count, the link's count (`tc -s qdisc` on this host's eth0,
i.e. every byte that left the emulated NIC, framing included) and, on rank 0, Horovod's timeline
(every collective with its dtype and shape) — three independent sources.
Rank 0 writes one JSON file with every rank's numbers (gathered by Horovod).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

import torch

from benchmarks.tasks import TASKS, median, parameter_shapes
from benchmarks.timeline import collective_payload, wire_bytes
from examples import _common


def link_bytes(dev: str = "eth0") -> int:
    """Bytes sent by this host's emulated NIC so far (the tbf qdisc's counter); -1 off-cluster."""
    try:
        out = subprocess.run(["tc", "-s", "qdisc", "show", "dev", dev], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return -1
    match = re.search(r"Sent (\d+) bytes", out)
    return int(match.group(1)) if match else -1


def collective_of(compression) -> str:
    """'allreduce' or 'allgather': what carries the compressor's payload."""
    wire = getattr(compression, "wire", None)
    return getattr(wire, "collective", None) or getattr(compression, "collective", "allreduce")


def time_steps(step_fn, warmup: int, steps: int) -> list:
    for i in range(warmup):
        step_fn(i)
    times = []
    for i in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        step_fn(i)
        times.append(time.perf_counter() - t0)
    return times


def compressed_parameters(model, compression) -> list:
    """Names of the parameters whose gradients the compressor compresses (has state for, and for
    PowerSGD a low-rank plan); every parameter for Horovod's own Compression.none."""
    names = [name for name, p in model.named_parameters() if p.grad is not None]
    states = getattr(compression, "_tensors", None)
    if not states:
        return names
    return [name for name in names
            if name in states and getattr(states[name], "matrix", True) is not None]


def copy_seconds(model, names, backward, repeats: int = 11) -> float:
    """One memcpy of those gradients (``dst.copy_(src)`` into tensors allocated beforehand), taken
    right after a backward pass as the codec sees them, median over ``repeats``: the unit of the
    codec's cost in "copies", measured in this worker under the codec's cache conditions."""
    wanted, targets, times = set(names), None, []
    for i in range(repeats):
        model.zero_grad()
        backward(i)
        grads = [p.grad for name, p in model.named_parameters() if name in wanted]
        if targets is None:
            targets = [torch.empty_like(g) for g in grads]
        start = time.perf_counter()
        for target, grad in zip(targets, grads):
            target.copy_(grad)
        times.append(time.perf_counter() - start)
    return median(times) if targets else 0.0


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--specs", required=True, help="';'-separated compressor specs")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny model (smoke test)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeline-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    hvd = _common.init_horovod()
    torch.set_num_threads(1)  # one compute thread per worker (docs/design.md): 2 cores, up to 4 workers
    task = TASKS[args.task](hvd.rank(), tiny=args.tiny)

    # ---- compute only: the same model and data with a plain optimizer (no hooks, no collectives)
    plain_model = task.model()
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9)

    def plain_step(i):
        plain.zero_grad()
        task.loss(plain_model, i).backward()
        plain.step()

    time_steps(plain_step, args.warmup, 0)
    shapes = parameter_shapes(plain_model)
    computes = []

    results = []
    for spec in filter(None, (s.strip() for s in args.specs.split(";"))):
        try:
            compression = _common.compression_from_spec(spec)
        except (ValueError, TypeError, KeyError) as error:  # not (yet) in our registry
            results.append({"spec": spec, "error": f"{type(error).__name__}: {error}"})
            continue
        model = task.model()
        optimizer = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                                             named_parameters=model.named_parameters(),
                                             compression=compression)

        def step(i):
            optimizer.zero_grad()
            task.loss(model, i).backward()
            optimizer.step()

        time_steps(step, args.warmup, 0)
        s0 = compression.stats.as_dict()
        link0 = link_bytes()
        timeline = None
        if args.timeline_dir is not None:
            args.timeline_dir.mkdir(parents=True, exist_ok=True)
            timeline = args.timeline_dir / f"{args.task}.{re.sub(r'[^A-Za-z0-9]+', '_', spec)}.json"
            hvd.start_timeline(str(timeline))
        times, plain_times = [], []
        for i in range(args.warmup, args.warmup + args.steps):
            plain_times += time_steps(plain_step, 0, 1)  # no collectives: the link stays idle
            hvd.barrier()  # start the timed step together, as the previous step's all-reduce would
            times += time_steps(lambda _: step(i), 0, 1)
        if timeline is not None:
            hvd.stop_timeline()
        link1 = link_bytes()
        s1 = compression.stats.as_dict()
        # the slowest rank sets the pace of a synchronous step
        compute = max(hvd.allgather_object(float(median(plain_times)), name="step_worker.compute"))
        computes.append(compute)
        wait = (s1["wait_seconds"] - s0["wait_seconds"]) / args.steps
        # the compressor's own work; time it blocked on its own collectives is not in it (`wait`)
        codec = (s1["compress_seconds"] + s1["decompress_seconds"]
                 - s0["compress_seconds"] - s0["decompress_seconds"]) / args.steps
        copy = copy_seconds(plain_model, compressed_parameters(model, compression),
                            lambda i: task.loss(plain_model, i).backward())
        step_time = median(times)
        results.append({
            "spec": spec, "collective": collective_of(compression),
            "step_s": step_time, "step_mean_s": sum(times) / len(times), "compute_s": compute,
            "codec_s": codec, "wait_s": wait, "copy_s": copy,
            "codec_copies": codec / copy if copy else None,
            "communicate_s": max(0.0, step_time - compute - codec),
            "sent_bytes_per_step": (s1["sent_bytes_total"] - s0["sent_bytes_total"]) / args.steps,
            "uncompressed_bytes_per_step": (s1["uncompressed_bytes_total"]
                                            - s0["uncompressed_bytes_total"]) / args.steps,
            "link_bytes_per_step": (link1 - link0) / args.steps if link0 >= 0 else None,
            "timeline": str(timeline) if timeline else None,
        })
        del optimizer, model

    # every rank's numbers to rank 0 (the same spec list on every rank, so the lists line up)
    gathered = hvd.allgather_object(results, name="step_worker.results")
    if hvd.rank() == 0:
        for spec_results in zip(*gathered):
            first = spec_results[0]
            if "error" in first:
                continue
            first["per_rank"] = [{k: r[k] for k in ("step_s", "compute_s", "codec_s", "link_bytes_per_step")}
                                 for r in spec_results]
            if first["timeline"]:
                time.sleep(0.5)  # the timeline writer thread flushes asynchronously
                payload = collective_payload(Path(first["timeline"]), hvd.size())
                first["timeline_payload_per_step"] = {k: v / args.steps for k, v in payload.items()}
                first["timeline_wire_bytes_per_step"] = wire_bytes(payload, hvd.size()) / args.steps
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "task": args.task, "workers": hvd.size(), "steps": args.steps, "warmup": args.warmup,
            "parameter_shapes": shapes, "compute_s": median(computes), "results": gathered[0],
            "rate": os.environ.get("BENCH_RATE"), "tiny": args.tiny}, indent=1))
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
