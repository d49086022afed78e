"""The codec on its own: PowerSGD's products in each layout, and compress + decompress per step in
"copies", on one process with no network (the in-cluster figures are in `benchmarks.run`).

    .venv/bin/python -m benchmarks.codec                      # both tasks, ranks 1, 2, 4
    .venv/bin/python -m benchmarks.codec --tasks fashion_mnist --ranks 2
    .venv/bin/python -m benchmarks.codec --ranks 2 --specs 'fp16;signum;topk:ratio=0.01;randomk:ratio=0.01'

Part 1 times the thin products of rank-r PowerSGD for the task's largest gradient matrix in the
layout a textbook writes (M Q, Mᵀ P, P Qᵀ into a new tensor) and as the core asks the PyTorch
backend for them (factors kept transposed: Qᵀ Mᵀ, Pᵀ M, the outer product into a buffer). Part 2 runs the real
compressors (``horovod_powersgd.torch``) over a real backward pass of the task's model, one process
(Horovod with one rank: the all-reduce is the identity), and divides their compress + decompress
seconds per step by one memcpy of the gradients they compress, taken right after a backward pass.
Medians; one compute thread, as in the cluster benchmark.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.step_worker import compressed_parameters, copy_seconds
from benchmarks.tasks import TASKS
from horovod_powersgd import machine


def median_ms(fn, repeats: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def layouts(n: int, m: int, rank: int) -> list:
    """(product, textbook ms, ours ms) for one n×m matrix."""
    from horovod_powersgd.torch.backend import TorchBackend

    b = TorchBackend()  # "ours": the calls the core makes, as the PyTorch backend runs them
    M, buffer = torch.randn(n, m), torch.empty(n, m)
    Q, P = torch.randn(m, rank), torch.randn(n, rank)
    Q_t, P_t = Q.t().contiguous(), P.t().contiguous()
    return [("P = M Q", median_ms(lambda: M @ Q), median_ms(lambda: b.matmul(Q_t, M, transpose_b=True))),
            ("Q = Mᵀ P", median_ms(lambda: M.t() @ P), median_ms(lambda: b.matmul(P_t, M))),
            ("G' = P Qᵀ", median_ms(lambda: P @ Q.t()), median_ms(lambda: b.outer(P_t, Q_t, out=buffer))),
            ("E -= P Qᵀ", median_ms(lambda: M.sub_(P @ Q.t())), median_ms(lambda: b.sub_outer_(M, P_t, Q_t)))]


def codec_in_copies(task_name: str, spec: str, steps: int = 20) -> dict:
    import horovod.torch as hvd

    from horovod_powersgd.torch import from_spec

    task = TASKS[task_name](0)
    model = task.model()
    compression = from_spec(spec).register_parameters(model.named_parameters())
    parameters = [p for p in model.parameters() if p.requires_grad]

    def step(i):
        model.zero_grad()
        task.loss(model, i).backward()
        sent = [compression.compress(p.grad) for p in parameters]
        for p, (wire, ctx) in zip(parameters, sent):
            p.grad = compression.decompress(hvd.allreduce(wire, name=f"codec.{id(p)}"), ctx)

    for i in range(5):
        step(i)
    before = compression.stats.as_dict()
    for i in range(5, 5 + steps):
        step(i)
    after = compression.stats.as_dict()
    codec = sum(after[k] - before[k] for k in ("compress_seconds", "decompress_seconds")) / steps
    copy = copy_seconds(model, compressed_parameters(model, compression),
                        lambda i: task.loss(model, i).backward())
    return {"spec": spec, "codec_ms": codec * 1e3, "copy_ms": copy * 1e3, "copies": codec / copy}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="fashion_mnist,ptb_lstm")
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--specs", default="",
                        help="';'-separated specs to time as well (default: PowerSGD only, its three "
                             "schemes at each of --ranks)")
    args = parser.parse_args(argv)
    import horovod.torch as hvd

    hvd.init()
    torch.set_num_threads(1)
    ranks = [int(r) for r in args.ranks.split(",")]
    print(f"# Codec on {machine.one_line(machine.describe())}, 1 thread\n")
    for task_name in args.tasks.split(","):
        shapes = [tuple(p.shape) for p in TASKS[task_name](0).model().parameters() if p.dim() >= 2]
        largest = max(shapes, key=lambda s: torch.Size(s).numel())
        n, m = largest[0], torch.Size(largest[1:]).numel()
        print(f"## {task_name}: products for its largest gradient, {n}×{m} (ms)\n")
        print("| rank | product | textbook layout | ours | faster |\n|---:|---|---:|---:|---:|")
        for rank in ranks:
            for product, textbook, ours in layouts(n, m, rank):
                print(f"| {rank} | {product} | {textbook:.3f} | {ours:.3f} | {textbook / ours:.1f}× |")
        print(f"\n## {task_name}: compress + decompress per step, in copies\n")
        print("| spec | codec ms | one memcpy ms | copies |\n|---|---:|---:|---:|")
        specs = [spec for rank in ranks
                 for spec in (f"powersgd:rank={rank}", f"powersgd:rank={rank},alternate=True",
                              f"powersgd:rank={rank},two_sided=True")]
        for spec in specs + [spec for spec in args.specs.split(";") if spec.strip()]:
            r = codec_in_copies(task_name, spec)
            print(f"| {r['spec']} | {r['codec_ms']:.2f} | {r['copy_ms']:.3f} | {r['copies']:.1f} |")
        print()


if __name__ == "__main__":
    main()
