"""A CNN on Fashion-MNIST, data-parallel with Horovod and a gradient compressor.

    horovodrun -np 2 python -m examples.torch_fashion_mnist --compression powersgd:rank=2
    horovodrun -np 2 python -m examples.torch_fashion_mnist --compression none --epochs 1

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
    return parser.parse_args(argv)


def evaluate(hvd, model, x, y, batch_size=500) -> float:
    """Accuracy over the whole test set: each rank scores its shard, counts are summed."""
    model.eval()
    idx = shard(len(x), hvd.rank(), hvd.size())
    correct = 0
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            b = idx[start:start + batch_size]
            correct += int((model(torch.from_numpy(x[b])).argmax(1) == torch.from_numpy(y[b])).sum())
    model.train()
    return _common.total(hvd, correct, "eval.correct") / _common.total(hvd, len(idx), "eval.count")


def main(argv=None):
    args = parse_args(argv)
    hvd = _common.init_horovod()
    torch.manual_seed(args.seed)
    x_train, y_train = fashion_mnist("train", args.train_limit)
    x_test, y_test = fashion_mnist("test", args.test_limit)
    my_rows = shard(len(x_train), hvd.rank(), hvd.size())

    model = FashionCNN(args.hidden)
    compression = _common.compression_from_spec(args.compression)
    optimizer = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum),
        named_parameters=model.named_parameters(), compression=compression)
    first_epoch = 0
    if args.resume:
        first_epoch = _common.load_checkpoint(args.checkpoint, hvd.rank(), model, optimizer,
                                              compression)["epoch"] + 1
    else:  # every rank starts from rank 0's weights (checkpoints already agree)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    reporter = _common.Reporter(hvd, args, "fashion_mnist", "test_accuracy")
    steps_per_epoch = len(my_rows) // args.batch_size
    if args.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, args.max_batches)
    record, steps = None, 0
    for epoch in range(first_epoch, args.epochs):
        # The same permutation on every rank (seeded by epoch) keeps shards disjoint and resumable.
        order = my_rows[np.random.default_rng(args.seed + epoch).permutation(len(my_rows))]
        loss_sum, t0 = 0.0, time.perf_counter()
        bar = _common.progress(range(steps_per_epoch), enabled=hvd.rank() == 0 and not args.no_progress,
                               desc=f"epoch {epoch}", total=steps_per_epoch)
        for i in bar:
            b = order[i * args.batch_size:(i + 1) * args.batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(torch.from_numpy(x_train[b])), torch.from_numpy(y_train[b]))
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            steps += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if args.eval_every and steps % args.eval_every == 0 and i + 1 < steps_per_epoch:
                reporter.train_seconds += time.perf_counter() - t0
                reporter.point(steps, evaluate(hvd, model, x_test, y_test), compression)
                t0 = time.perf_counter()
        reporter.train_seconds += time.perf_counter() - t0
        train_loss = _common.average(hvd, loss_sum / max(1, steps_per_epoch), "train.loss")
        accuracy = evaluate(hvd, model, x_test, y_test)
        record = reporter.epoch(epoch, train_loss, accuracy, compression, steps)
        if args.checkpoint is not None:
            _common.save_checkpoint(args.checkpoint, hvd.rank(), epoch, model, optimizer, compression)
    if record is not None:
        reporter.final(record)


if __name__ == "__main__":
    main()
