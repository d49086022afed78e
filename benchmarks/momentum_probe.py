"""How the PowerSGD variants train under momentum: a 784→128→10 MLP on Fashion-MNIST, one process.

    .venv/bin/python -m benchmarks.momentum_probe                     # lr 0.05, momentum 0.9 and 0
    .venv/bin/python -m benchmarks.momentum_probe --lr 0.02 --momentum 0.9
    .venv/bin/python -m benchmarks.momentum_probe --specs 'none;unbiased_lowrank:rank=2'   # any specs
    .venv/bin/python -m benchmarks.momentum_probe --specs none --delay 1   # every gradient a step late

Each spec trains the same model from the same seed for 384 steps of batch 64 (8192 training images),
its gradients going through the real compressor (Horovod with one rank: the all-reduce is the
identity, so only the compression's effect on the optimizer is measured), then reports the mean
loss of the first and last 64 steps and the accuracy on 2000 test images. ``--delay d`` applies
each step's (decompressed) gradient d steps late, the first d steps applying zero: what a scheme
that delivers its whole gradient late would do, the limit of what a single round defers.
"""
from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from examples.datasets import fashion_mnist

SPECS = ("none", "powersgd:rank=2", "powersgd:rank=2,alternate=True", "powersgd:rank=2,two_sided=True",
         "powersgd:rank=2,alternate=True,error_feedback=False")


class Delay:
    """A gradient delay line: `push` takes this step's gradients and returns the ones to apply,
    those pushed ``steps`` calls before (zeros for the first ``steps`` calls)."""

    def __init__(self, steps: int):
        if steps < 0:
            raise ValueError(f"delay must be >= 0, got {steps}")
        self.steps, self.line = steps, collections.deque()

    def push(self, gradients: list) -> list:
        self.line.append(gradients)
        if len(self.line) > self.steps:
            return self.line.popleft()
        return [torch.zeros_like(g) for g in gradients]


def train(spec: str, lr: float, momentum: float, steps: int = 384, batch: int = 64,
          delay: int = 0) -> tuple:
    import horovod.torch as hvd

    from horovod_powersgd.torch import from_spec

    x, y = (torch.from_numpy(a) for a in fashion_mnist("train", limit=8192))
    x_test, y_test = (torch.from_numpy(a) for a in fashion_mnist("test", limit=2000))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    compression = None if spec == "none" else from_spec(spec).register_parameters(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    parameters, late = list(model.parameters()), Delay(delay)
    losses = []
    for step in range(steps):
        start = (step * batch) % (len(x) - batch)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[start:start + batch]), y[start:start + batch])
        loss.backward()
        if compression is not None:
            sent = [compression.compress(p.grad) for p in parameters]
            for p, (wire, ctx) in zip(parameters, sent):
                p.grad = compression.decompress(hvd.allreduce(wire, name=f"probe.{id(p)}"), ctx)
        for p, gradient in zip(parameters, late.push([p.grad.clone() for p in parameters])):
            p.grad = gradient
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return float(np.mean(losses[:64])), float(np.mean(losses[-64:])), accuracy


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, nargs="+", default=[0.9, 0.0])
    parser.add_argument("--specs", default=";".join(SPECS), help="';'-separated specs (default: %(default)s)")
    parser.add_argument("--delay", type=int, default=0,
                        help="apply every gradient this many steps late (default: %(default)s)")
    args = parser.parse_args(argv)
    import horovod.torch as hvd

    hvd.init()
    torch.set_num_threads(1)
    print("| lr | momentum | delay | spec | loss, first 64 steps | loss, last 64 | test accuracy |")
    print("|---:|---:|---:|---|---:|---:|---:|")
    for momentum in args.momentum:
        for spec in args.specs.split(";"):
            first, last, accuracy = train(spec, args.lr, momentum, delay=args.delay)
            print(f"| {args.lr} | {momentum} | {args.delay} | {spec} | {first:.3f} | {last:.3f} | "
                  f"{accuracy:.3f} |")


if __name__ == "__main__":
    main()
