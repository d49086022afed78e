"""Where a training step's time goes, ours against DDP + powerSGD_hook: the Fashion-MNIST CNN's
or the PTB LSTM's loop on the emulated cluster, split into its phases (root, like every cluster
benchmark).

    sudo .venv/bin/python -m benchmarks.step_phases --rate 200mbit --cycles 1,3,8 --groups 0,1
    sudo .venv/bin/python -m benchmarks.step_phases --task ptb_lstm --rate 1gbit --cycles 1,3

Each configuration is a job of its own: DDP + ``powerSGD_hook`` at the spec's rank, and ours with
Horovod's ``DistributedOptimizer`` at every ``HOROVOD_CYCLE_TIME`` × ``groups`` asked for. Every
job trains the examples' model on the examples' data and shards for ``--steps`` steps and times, per
step on rank 0 (medians after ``--skip`` steps):

  forward    zero_grad and the forward pass;
  backward   ``loss.backward()``: with Horovod it includes compressing each gradient as it is ready
             (and submitting it); DDP's hook runs here in full, compression and both all-reduces;
  sync       Horovod only, ``optimizer.synchronize()``: waiting for Horovod's all-reduce, our
             decompression, our own round (sent, waited for, decoded);
  update     ``optimizer.step()``, after the LSTM's gradient-norm clipping;
and, for ours, the compressor's own figures per step: ``compress`` and ``decompress`` seconds
(`CompressionStats`) and ``own wait``, the time blocked on its own round. The table goes to stdout.
A diagnostic of step time, not a claim about training: time to accuracy is `benchmarks.tta`'s.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("forward", "backward", "sync", "update", "total")
OWN = ("compress_seconds", "decompress_seconds", "wait_seconds")


def _fashion_mnist(engine):
    """The CNN example's model, optimizer and first-epoch batches: (model, optimizer, loss of step
    i, what runs between sync and update)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from examples.datasets import fashion_mnist, shard
    from examples.torch_fashion_mnist import FashionCNN

    x, y = fashion_mnist("train", None)
    rows = shard(len(x), engine.rank(), engine.size())
    order = rows[np.random.default_rng(0).permutation(len(rows))]  # the examples' first epoch
    batches = len(order) // 64
    torch.manual_seed(0)
    model = FashionCNN(1024)
    trained, optimizer = engine.distribute(
        model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))

    def loss(i):
        batch = order[(i % batches) * 64:(i % batches + 1) * 64]
        return F.cross_entropy(trained(torch.from_numpy(x[batch])), torch.from_numpy(y[batch]))

    return model, optimizer, loss, lambda: None


def _ptb_lstm(engine):
    """The LSTM example's model, optimizer and truncated-BPTT batches over its rank's columns, at the
    example's default flags (batch per rank, bptt, SGD learning rate, clipping before the update)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from examples.datasets import PennTreebank, batchify
    from examples.torch_ptb_lstm import WordLSTM, detach, parse_args

    flags = parse_args([])
    corpus = PennTreebank()
    train = torch.from_numpy(batchify(corpus.ids("train"), flags.batch_size * engine.size()))[
        :, engine.rank()::engine.size()]
    bptt = flags.bptt
    starts = list(range(0, train.shape[0] - 1 - bptt, bptt))
    torch.manual_seed(0)
    model = WordLSTM(corpus.vocab_size, flags.embedding, flags.hidden)
    trained, optimizer = engine.distribute(model, torch.optim.SGD(model.parameters(), lr=flags.lr))
    carried = [None]

    def loss(i):
        start = starts[i % len(starts)]
        logits, state = trained(train[start:start + bptt], detach(carried[0]))
        carried[0] = state
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               train[start + 1:start + bptt + 1].reshape(-1))

    return model, optimizer, loss, lambda: nn.utils.clip_grad_norm_(model.parameters(), flags.clip)


TASKS = {"fashion_mnist": _fashion_mnist, "ptb_lstm": _ptb_lstm}


def worker(task: str, engine_name: str, spec: str, steps: int, skip: int, groups: int) -> None:
    """One rank of one job: the task's loop, timed by phase; rank 0 prints one ``PHASES`` line."""
    from examples import _engine

    engine = _engine.make_engine(types.SimpleNamespace(engine=engine_name, compression=spec,
                                                       groups=groups, checkpoint=None, resume=False))
    model, optimizer, loss_of_step, before_update = TASKS[task](engine)
    engine.start_from_rank_0(model, optimizer)
    horovod = engine_name == "horovod"
    times = {phase: [] for phase in PHASES}
    before = None
    for i in range(steps):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_of_step(i)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if horovod:
            optimizer.synchronize()
        t3 = time.perf_counter()
        before_update()
        if horovod:
            with optimizer.skip_synchronize():
                optimizer.step()
        else:
            optimizer.step()
        t4 = time.perf_counter()
        loss.item()
        for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            times[phase].append(seconds)
        if horovod and i == skip - 1:
            before = engine.compression.stats.as_dict()
    if engine.rank() == 0:
        result = {phase: statistics.median(values[skip:]) for phase, values in times.items()}
        if horovod:
            after = engine.compression.stats.as_dict()
            result.update({k: (after[k] - before[k]) / (steps - skip) for k in OWN})
        print("PHASES " + json.dumps(result), flush=True)
    engine.close()


def configurations(args) -> list:
    """(label, engine, env, groups) of every job, DDP + hook first."""
    jobs = [(f"DDP + powerSGD_hook {args.spec.partition(':')[2]}", "ddp", {}, 0)]
    for cycle, groups in itertools.product(args.cycles.split(","), args.groups.split(",")):
        label = f"ours, {args.spec}, HOROVOD_CYCLE_TIME={cycle}, groups={groups or 'none'}"
        jobs.append((label, "horovod", {"HOROVOD_CYCLE_TIME": cycle}, int(groups)))
    return jobs


def _ms(seconds) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f}"


def markdown(rows: list) -> list:
    lines = ["| configuration | forward | backward | sync | update | step | compress | decompress "
             "| own wait |", "|---|" + "---:|" * 8]
    for label, runs in rows:
        def med(key):
            values = [run[key] for run in runs if key in run]
            return statistics.median(values) if values else None
        lines.append(f"| {label} | " + " | ".join(_ms(med(key)) for key in PHASES + OWN) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="fashion_mnist")
    parser.add_argument("--rate", default="200mbit")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spec", default="powersgd:rank=2")
    parser.add_argument("--cycles", default="1,3,8", help="HOROVOD_CYCLE_TIME values (ms)")
    parser.add_argument("--groups", default="0,1", help="DistributedOptimizer groups (0: none)")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--skip", type=int, default=50, help="first steps left out of the medians")
    parser.add_argument("--repeats", type=int, default=2, help="jobs per configuration (medians over them)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--worker", nargs=4, metavar=("ENGINE", "SPEC", "STEPS", "GROUPS"),
                        help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.worker:
        engine, spec, steps, groups = args.worker
        worker(args.task, engine, spec, int(steps), args.skip, int(groups))
        return 0

    from benchmarks.cluster import Cluster, ClusterError, enter_sandbox
    from horovod_powersgd import machine

    try:
        enter_sandbox([sys.executable, "-m", "benchmarks.step_phases", *argv])
        rows = []
        with Cluster(args.workers, args.rate, Path("/tmp/horovod-powersgd-phases")) as cluster:
            for label, engine, env, groups in configurations(args):
                runs = []
                for repeat in range(args.repeats):
                    command = [sys.executable, "-m", "benchmarks.step_phases", "--task", args.task,
                               "--skip", str(args.skip),
                               "--worker", engine, args.spec, str(args.steps), str(groups)]
                    launch = cluster.run_torch_distributed if engine == "ddp" else cluster.run_horovod
                    results = launch(command, {"PYTHONPATH": str(ROOT), **env}, args.timeout, "phases")
                    line = next((l for l in results[0].log.splitlines() if l.startswith("PHASES ")), None)
                    if line is None or any(r.returncode for r in results):
                        raise ClusterError(f"{label}: no result\n{results[0].log[-2000:]}")
                    runs.append(json.loads(line[len("PHASES "):]))
                rows.append((label, runs))
                print(f"[step_phases] {label}: step {statistics.median(r['total'] for r in runs) * 1e3:.1f} ms",
                      file=sys.stderr, flush=True)
    except ClusterError as error:
        print(f"benchmarks.step_phases: {error}", file=sys.stderr)
        return 2
    print(f"# Where the step time goes\n\n## {args.task}, {args.rate} per worker\n\n"
          f"Milliseconds per step: medians over steps {args.skip}–{args.steps} of each job, then over "
          f"{args.repeats} jobs; {args.workers} workers, on {machine.one_line(machine.describe())}. "
          f"Command: `sudo .venv/bin/python -m benchmarks.step_phases "
          f"{' '.join(argv)}`\n")
    print("\n".join(markdown(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
