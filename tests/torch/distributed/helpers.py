"""Shared pieces of the multi-process PyTorch tests."""
from __future__ import annotations

import numpy as np
import torch


class FixedGradients(torch.nn.Module):
    """Parameters whose gradients are exactly the tensors we choose: loss = Σ_k ⟨W_k, C_k⟩."""

    def __init__(self, shapes: dict):
        super().__init__()
        self.weights = torch.nn.ParameterDict(
            {name: torch.nn.Parameter(torch.zeros(shape)) for name, shape in shapes.items()})

    def loss(self, gradients: dict):
        return sum((self.weights[name] * g).sum() for name, g in gradients.items())


def local_gradients(shapes: dict, rank: int, step: int, seed: int = 0) -> dict:
    """Deterministic per-rank, per-step gradients, reproducible by any rank."""
    rng = np.random.default_rng([seed, rank, step])
    return {name: torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
            for name, shape in shapes.items()}


def reduced_step(hvd, opt, model, gradients: dict) -> dict:
    """One optimizer step with the given local gradients; returns the reduced gradients."""
    opt.zero_grad()
    model.loss(gradients).backward()
    opt.step()
    return {name: p.grad.detach().clone() for name, p in model.weights.items()}


def gather(hvd, tensor):
    """Every rank's copy of ``tensor``, stacked (rank-major)."""
    return hvd.allgather(tensor.detach().unsqueeze(0).contiguous())


def assert_identical_across_ranks(hvd, tensor):
    copies = gather(hvd, tensor)
    for r in range(1, hvd.size()):
        assert torch.equal(copies[0], copies[r]), f"rank {r} differs from rank 0"


def exact_average(hvd, tensor):
    return hvd.allreduce(tensor.detach().clone(), op=hvd.Average)


def make_optimizer(hvd, model, compression, lr=0.0, **kwargs):
    named = kwargs.pop("named_parameters", model.named_parameters())
    return hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=lr),
                                    named_parameters=named, compression=compression, **kwargs)
