"""The benchmark's training tasks: the examples' models on their real data, one batch source each.

A task gives a fresh model (same initial weights on every rank, from a fixed seed) and a function
`loss(model, step)` that runs the forward pass on the step's batch of real data. Step-time
measurements reuse these so that "compute" is exactly what the examples compute.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from examples.datasets import PennTreebank, batchify, fashion_mnist
from examples.torch_fashion_mnist import FashionCNN
from examples.torch_ptb_lstm import WordLSTM

class FashionTask:
    """examples/torch_fashion_mnist.py's CNN, batch 64 per rank."""

    name = "fashion_mnist"

    def __init__(self, rank: int, batch_size: int = 64, tiny: bool = False):
        self.batch_size = batch_size
        self.tiny = tiny
        x, y = fashion_mnist("train", limit=batch_size * 16 * (rank + 1))
        self.x, self.y = torch.from_numpy(x[-batch_size * 16:]), torch.from_numpy(y[-batch_size * 16:])

    def model(self):
        torch.manual_seed(0)
        return FashionCNN(hidden=64 if self.tiny else 1024)

    def loss(self, model, step: int):
        b = slice((step % 16) * self.batch_size, (step % 16 + 1) * self.batch_size)
        return F.cross_entropy(model(self.x[b]), self.y[b])


class PTBTask:
    """examples/torch_ptb_lstm.py's 2-layer LSTM (200/200), batch 20 × bptt 35 per rank."""

    name = "ptb_lstm"

    def __init__(self, rank: int, batch_size: int = 20, bptt: int = 35, tiny: bool = False):
        corpus = PennTreebank()
        self.vocab = corpus.vocab_size
        ids = corpus.ids("train")[rank * 200_000:(rank + 1) * 200_000]
        self.data = torch.from_numpy(batchify(ids, batch_size))
        self.bptt, self.tiny = bptt, tiny

    def model(self):
        torch.manual_seed(0)
        return WordLSTM(self.vocab, 32, 32) if self.tiny else WordLSTM(self.vocab)

    def loss(self, model, step: int):
        start = (step * self.bptt) % (self.data.shape[0] - self.bptt - 1)
        logits, _ = model(self.data[start:start + self.bptt])
        target = self.data[start + 1:start + 1 + self.bptt]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


TASKS = {"fashion_mnist": FashionTask, "ptb_lstm": PTBTask}


def parameter_shapes(model) -> list:
    return [list(p.shape) for p in model.parameters()]


def median(values) -> float:
    return float(np.median(np.asarray(values, dtype=float))) if len(values) else float("nan")
