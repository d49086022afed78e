"""A CNN on Fashion-MNIST, data-parallel with Horovod and a gradient compressor.

    horovodrun -np 2 python -m examples.torch_fashion_mnist --compression powersgd:rank=2
    horovodrun -np 2 python -m examples.torch_fashion_mnist --compression none --epochs 1
    torchrun --nproc-per-node 2 -m examples.torch_fashion_mnist --engine ddp --compression powersgd:rank=2

The same loop trains with PyTorch DDP and its powerSGD_hook instead (``--engine ddp``, `_engine`).

The network is deliberately fully-connected-heavy (1.63M parameters, 98 % of them in one 1568×1024
layer; a few MFLOPs of convolution per image): it is *communication-bound* on a 1 Gbit/s link, the
regime where gradient compression can pay, and each rank needs only one core. Every rank trains on its
own 1/size of the training set; test accuracy is computed on all ranks' test shards together.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _common
from ._engine import add_engine_flag, make_engine
from .datasets import fashion_mnist, shard


class FashionCNN(nn.Module):
    def __init__(self, hidden: int = 1024):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)  # 28×28 → pool → 14×14
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)  # 14×14 → pool → 7×7
        self.fc1 = nn.Linear(32 * 7 * 7, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_common_flags(parser, epochs=3, batch_size=64, lr=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--train-limit", type=int, default=None, help="use the first N training images")
    parser.add_argument("--test-limit", type=int, default=None, help="use the first N test images")
    parser.add_argument("--hidden", type=int, default=1024, help="width of the fully-connected layer")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="also measure test accuracy every N steps (time-to-accuracy curves; the "
                             "evaluation time is not counted as training time)")
    add_engine_flag(parser)
    return parser.parse_args(argv)


def evaluate(engine, model, x, y, batch_size=500) -> float:
    """Accuracy over the whole test set: each rank scores its shard, counts are summed."""
    model.eval()
    idx = shard(len(x), engine.rank(), engine.size())
    correct = 0
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            b = idx[start:start + batch_size]
            correct += int((model(torch.from_numpy(x[b])).argmax(1) == torch.from_numpy(y[b])).sum())
    model.train()
    return engine.total(correct, "eval.correct") / engine.total(len(idx), "eval.count")


def main(argv=None):
    args = parse_args(argv)
    engine = make_engine(args)
    torch.manual_seed(args.seed)
    x_train, y_train = fashion_mnist("train", args.train_limit)
    x_test, y_test = fashion_mnist("test", args.test_limit)
    my_rows = shard(len(x_train), engine.rank(), engine.size())

    model = FashionCNN(args.hidden)
    trained, optimizer = engine.distribute(
        model, torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum))
    first_epoch = 0
    if args.resume:
        first_epoch = _common.load_checkpoint(args.checkpoint, engine.rank(), model, optimizer,
                                              engine.compression)["epoch"] + 1
    else:  # every rank starts from rank 0's weights (checkpoints already agree)
        engine.start_from_rank_0(model, optimizer)

    reporter = _common.Reporter(engine, args, "fashion_mnist", "test_accuracy")
    steps_per_epoch = len(my_rows) // args.batch_size
    if args.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, args.max_batches)
    record, steps = None, 0
    for epoch in range(first_epoch, args.epochs):
        # The same permutation on every rank (seeded by epoch) keeps shards disjoint and resumable.
        order = my_rows[np.random.default_rng(args.seed + epoch).permutation(len(my_rows))]
        loss_sum, t0 = 0.0, time.perf_counter()
        bar = _common.progress(range(steps_per_epoch), enabled=engine.rank() == 0 and not args.no_progress,
                               desc=f"epoch {epoch}", total=steps_per_epoch)
        for i in bar:
            step_start = time.perf_counter()
            b = order[i * args.batch_size:(i + 1) * args.batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(trained(torch.from_numpy(x_train[b])), torch.from_numpy(y_train[b]))
            loss.backward()
            engine.step(optimizer)
            loss_sum += loss.item()
            reporter.step_done(time.perf_counter() - step_start)
            steps += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if args.eval_every and steps % args.eval_every == 0 and i + 1 < steps_per_epoch:
                reporter.train_seconds += time.perf_counter() - t0
                reporter.point(steps, evaluate(engine, model, x_test, y_test), engine)
                t0 = time.perf_counter()
        reporter.train_seconds += time.perf_counter() - t0
        train_loss = engine.average(loss_sum / max(1, steps_per_epoch), "train.loss")
        accuracy = evaluate(engine, model, x_test, y_test)
        record = reporter.epoch(epoch, train_loss, accuracy, engine, steps)
        if args.checkpoint is not None:
            _common.save_checkpoint(args.checkpoint, engine.rank(), epoch, model, optimizer,
                                    engine.compression)
    if record is not None:
        reporter.final(record)
    engine.close()


if __name__ == "__main__":
    main()
