"""One Horovod worker of the step-time benchmark (started by `benchmarks.cluster`, one per emulated host).

Every compressor spec of the job runs side by side (`benchmarks.rounds`): its own model, one timed
step per round, the order rotated every round, and before each timed step one step of an identical
model *without* Horovod (no hooks, no collectives), that spec's compute sample. On every rank:
  compute    median of those plain steps, the slowest rank's;
  step       median wall-clock time of a full Horovod step (zero_grad … optimizer.step());
  codec      the compressor's own compress + decompress seconds per step (`compression.stats`);
  communicate = step − compute − codec: the communication backprop did not hide.
Bytes: per spec, the compressor's own count, the link's count (`tc -s qdisc` on this host's eth0 around
each timed step, i.e. every byte that left the emulated NIC, framing included) and, on rank 0,
Horovod's timeline of a few steps of that spec alone (every collective with its dtype and shape),
taken in a job of its own (``--timeline-dir``) — three independent sources. The timed job runs
without ``HOROVOD_TIMELINE``: with it set (even ``DYNAMIC``, recording nothing) Horovod tracks every
tensor's negotiation for the timeline in every cycle, which made the LSTM's Horovod step 6–11 ms
slower on the benchmark machine and would handicap us against the DDP peer.
The DDP peer runs in a job of its own (`benchmarks.ddp_worker`): an idle Horovod in the same process
slowed DDP's steps by 10–25 % here (its background thread cycles every few ms).
Rank 0 writes one JSON file with every rank's numbers (gathered by Horovod).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import torch

from benchmarks.rounds import Variant, plain_stepper, run_rounds, summarize, time_steps, warm_up
from benchmarks.tasks import TASKS, median, parameter_shapes
from benchmarks.timeline import collective_payload, wire_bytes
from examples import _common
from horovod_powersgd.core.shapes import numel
from horovod_powersgd.core.wire import PLACEHOLDER


def collective_of(compression, shape) -> str:
    """'allreduce' or 'allgather': what carries the compressor's payload for a gradient of
    ``shape``, from its own `transfers()` (Horovod's own compressors: all-reduce)."""
    transfers = getattr(compression, "transfers", None)
    if transfers is None:
        return "allreduce"
    payload = {t.collective for t in transfers(shape) if t.what != PLACEHOLDER}
    return "allgather" if "allgather" in payload else "allreduce"


def compressed_parameters(model, compression, prefix: str = "") -> list:
    """Names (in ``model``, without the ``prefix`` they were handed to Horovod under) of the
    parameters whose gradients the compressor compresses (has state for, and for PowerSGD a
    low-rank plan); every parameter for Horovod's own Compression.none."""
    names = [name for name, p in model.named_parameters() if p.grad is not None]
    states = getattr(compression, "_tensors", None)
    if not states:
        return names
    return [name for name in names if prefix + name in states
            and getattr(states[prefix + name], "matrix", True) is not None]


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


def build_horovod_variant(hvd, task, spec: str, index: int):
    compression = _common.compression_from_spec(spec)
    model = task.model()
    prefix = f"v{index}."
    optimizer = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                                         named_parameters=[(prefix + n, p) for n, p in model.named_parameters()],
                                         compression=compression)

    def step(i):
        optimizer.zero_grad()
        task.loss(model, i).backward()
        optimizer.step()

    return Variant(spec, model, step, compression, prefix)


def time_rounds(hvd, task, variants, plain_model, plain_step, shapes, warmup: int, steps: int) -> dict:
    """The timed rounds (`benchmarks.rounds`) and each variant's figures, by ``id(variant)``."""
    before = {id(v): v.compression.stats.as_dict() for v in variants}
    run_rounds(variants, plain_step, hvd.barrier, warmup, steps)
    after = {id(v): v.compression.stats.as_dict() for v in variants}

    results = {}
    for variant in variants:
        entry = summarize(variant, steps, lambda mine: max(hvd.allgather_object(mine, name="step_worker.compute")))
        step_time, compute = entry["step_s"], entry["compute_s"]
        s0, s1 = before[id(variant)], after[id(variant)]
        wait = (s1["wait_seconds"] - s0["wait_seconds"]) / steps
        # the compressor's own work; time it blocked on its own collectives is not in it (`wait`)
        codec = (s1["compress_seconds"] + s1["decompress_seconds"]
                 - s0["compress_seconds"] - s0["decompress_seconds"]) / steps
        copy = copy_seconds(plain_model, compressed_parameters(variant.model, variant.compression, variant.prefix),
                            lambda i: task.loss(plain_model, i).backward())
        entry.update({
            "collective": collective_of(variant.compression, max(shapes, key=numel)), "codec_s": codec, "wait_s": wait,
            "copy_s": copy, "codec_copies": codec / copy if copy else None,
            "communicate_s": max(0.0, step_time - compute - codec),
            "sent_bytes_per_step": (s1["sent_bytes_total"] - s0["sent_bytes_total"]) / steps,
            "uncompressed_bytes_per_step": (s1["uncompressed_bytes_total"]
                                            - s0["uncompressed_bytes_total"]) / steps})
        results[id(variant)] = entry
    return results


def record_timelines(hvd, variants, timeline_dir: Path, task_name: str, steps: int) -> dict:
    """A few steps of each spec alone under Horovod's timeline (the rounds mix every spec's
    tensors); the file of each, by ``id(variant)``."""
    timeline_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for variant in variants:
        timeline = timeline_dir / f"{task_name}.{re.sub(r'[^A-Za-z0-9]+', '_', variant.label)}.json"
        hvd.start_timeline(str(timeline))
        time_steps(variant.step, 0, steps)
        hvd.stop_timeline()
        results[id(variant)] = {"spec": variant.label, "timeline": str(timeline)}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--specs", required=True, help="';'-separated compressor specs")
    parser.add_argument("--steps", type=int, default=30, help="timed rounds (one step of every variant each)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--timeline-steps", type=int, default=3,
                        help="steps of each spec alone under Horovod's timeline (with --timeline-dir)")
    parser.add_argument("--tiny", action="store_true", help="tiny model (smoke test)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeline-dir", type=Path, default=None,
                        help="instead of the timed rounds: after the warm-up, --timeline-steps steps of "
                             "each spec alone under Horovod's timeline (run with HOROVOD_TIMELINE=DYNAMIC)")
    args = parser.parse_args(argv)

    hvd = _common.init_horovod()
    torch.set_num_threads(1)  # one compute thread per worker (docs/design.md): 2 cores, up to 4 workers
    task = TASKS[args.task](hvd.rank(), tiny=args.tiny)

    # compute only: no hooks, no collectives; the timeline job takes its shapes and never steps it
    plain_model, plain_step = plain_stepper(task, args.warmup if args.timeline_dir is None else 0)
    shapes = parameter_shapes(plain_model)

    # one entry per spec, in order: its variant, or the error that refused it
    entries: list = []
    for index, spec in enumerate(s.strip() for s in args.specs.split(";") if s.strip()):
        try:
            entries.append(build_horovod_variant(hvd, task, spec, index))
        except (ValueError, TypeError, KeyError) as error:  # not (yet) in our registry
            entries.append({"spec": spec, "error": f"{type(error).__name__}: {error}"})
    variants = [e for e in entries if isinstance(e, Variant)]

    warm_up(variants, args.warmup)
    if args.timeline_dir is not None:
        results = record_timelines(hvd, variants, args.timeline_dir, args.task, args.timeline_steps)
    else:
        results = time_rounds(hvd, task, variants, plain_model, plain_step, shapes, args.warmup, args.steps)

    # every rank's numbers to rank 0 (the same variants on every rank, so the lists line up)
    ordered = [results[id(e)] if isinstance(e, Variant) else e for e in entries]
    gathered = hvd.allgather_object(ordered, name="step_worker.results")
    if hvd.rank() == 0:
        for variant_results in zip(*gathered):
            first = variant_results[0]
            if "error" in first:
                continue
            if "step_s" in first:  # the timed job's, not the timeline job's
                first["per_rank"] = [{k: r.get(k) for k in ("step_s", "compute_s", "codec_s", "link_bytes_per_step")}
                                     for r in variant_results]
            if first.get("timeline"):
                time.sleep(0.5)  # the timeline writer thread flushes asynchronously
                payload = collective_payload(Path(first["timeline"]), hvd.size())
                first["timeline_payload_per_step"] = {k: v / args.timeline_steps for k, v in payload.items()}
                first["timeline_wire_bytes_per_step"] = wire_bytes(payload, hvd.size()) / args.timeline_steps
        mine = gathered[0]
        computes = [r["compute_s"] for r in results.values() if "compute_s" in r]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "task": args.task, "workers": hvd.size(), "steps": args.steps, "warmup": args.warmup,
            "parameter_shapes": shapes, "compute_s": median(computes) if computes else None,
            "results": mine, "side_by_side": True,
            "rate": os.environ.get("BENCH_RATE"), "tiny": args.tiny}, indent=1))
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
