"""PowerSGD under every way Horovod's PyTorch optimizer can be driven (run on 2 ranks)."""
import numpy as np
import pytest
import torch

from horovod_powersgd.core.powersgd import PowerSGD as CorePowerSGD
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients
from horovod_powersgd.torch import PowerSGD

from helpers import (FixedGradients, assert_identical_across_ranks, exact_average, local_gradients,
                     make_optimizer)

SHAPES = {"dense": (32, 24), "bias": (24,)}


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(20, 32)
        self.head_a = torch.nn.Linear(32, 16)
        self.head_b = torch.nn.Linear(32, 16)

    def forward(self, x, use_b):
        h = torch.relu(self.body(x))
        return self.head_b(h) if use_b else self.head_a(h)


def batch(hvd, step, n=8):
    g = torch.Generator().manual_seed(1000 * hvd.rank() + step)
    return torch.randn(n, 20, generator=g), torch.randn(n, 16, generator=g)


def train_two_heads(hvd, compression, steps=4, **opt_kwargs):
    torch.manual_seed(0)
    model = TwoHeads()
    opt = make_optimizer(hvd, model, compression, lr=0.05, **opt_kwargs)
    for step in range(steps):
        x, y = batch(hvd, step)
        opt.zero_grad()  # set_to_none=True: p.grad is a new tensor every step
        torch.nn.functional.mse_loss(model(x, use_b=step % 2 == 1), y).backward()
        opt.step()
    return model, opt


def assert_model_consistent(hvd, model):
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert_identical_across_ranks(hvd, p.detach())


def test_parameters_without_gradient_in_a_step(hvd):
    compression = PowerSGD(rank=2)
    model, _ = train_two_heads(hvd, compression)
    assert_model_consistent(hvd, model)
    # head_b got no gradient on even steps: Horovod all-reduced zeros for it, under its own name
    assert {"head_a.weight", "head_b.weight", "body.weight"} <= set(compression.state_dict()["tensors"])
    assert compression.stats.steps == 4


def test_backward_passes_per_step(hvd):
    compression = PowerSGD(rank=2)
    torch.manual_seed(0)
    model = TwoHeads()
    opt = make_optimizer(hvd, model, compression, lr=0.05, backward_passes_per_step=2)
    for step in range(3):
        opt.zero_grad()
        for micro in range(2):
            x, y = batch(hvd, 10 * step + micro)
            torch.nn.functional.mse_loss(model(x, use_b=False), y).backward()
        opt.step()
    assert_model_consistent(hvd, model)
    assert compression.stats.steps == 3  # one compression per optimizer step, not per backward


def test_synchronize_then_skip_synchronize_for_clipping(hvd):
    compression = PowerSGD(rank=2)
    torch.manual_seed(0)
    model = TwoHeads()
    opt = make_optimizer(hvd, model, compression, lr=0.05)
    for step in range(3):
        x, y = batch(hvd, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, use_b=False), y).backward()
        opt.synchronize()
        grad = model.head_a.weight.grad.clone()
        assert torch.linalg.matrix_rank(grad).item() <= 2  # filled in place before step()
        assert_identical_across_ranks(hvd, grad)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        with opt.skip_synchronize():
            opt.step()
    assert_model_consistent(hvd, model)


def test_without_named_parameters(hvd):
    compression = PowerSGD(rank=2)
    model, _ = train_two_heads(hvd, compression, named_parameters=None)
    assert_model_consistent(hvd, model)
    assert all(name.startswith("allreduce.noname.") for name in compression.state_dict()["tensors"])


@pytest.mark.parametrize("groups", [2, "list"])
def test_grouped_allreduce(hvd, groups):
    compression = PowerSGD(rank=2)
    torch.manual_seed(0)
    model = TwoHeads()
    if groups == "list":
        groups = [[model.body.weight, model.head_a.weight], [model.body.bias, model.head_a.bias]]
    model, _ = train_two_heads(hvd, compression, groups=groups)
    assert_model_consistent(hvd, model)


@pytest.mark.parametrize("scheme", [{}, {"two_sided": True}], ids=["classic", "two_sided"])
def test_one_group_trains_exactly_as_one_allreduce_per_gradient(hvd, scheme):
    """``groups=1`` (the configuration the docs recommend) changes when gradients are sent, not what
    is computed: the weights equal those of Horovod's per-gradient all-reduces bit for bit."""
    ungrouped, _ = train_two_heads(hvd, PowerSGD(rank=2, **scheme), steps=6)
    grouped, _ = train_two_heads(hvd, PowerSGD(rank=2, **scheme), steps=6, groups=1)
    for (name, a), b in zip(ungrouped.named_parameters(), grouped.parameters()):
        assert torch.equal(a, b), name
    assert_model_consistent(hvd, grouped)


def fixed_gradient_result(hvd, compression, steps=4, **opt_kwargs):
    model = FixedGradients(SHAPES)
    opt = make_optimizer(hvd, model, compression, **opt_kwargs)
    grads = local_gradients(SHAPES, hvd.rank(), 0)
    for _ in range(steps):
        opt.zero_grad()
        model.loss(grads).backward()
        opt.step()
    return {n: p.grad.clone() for n, p in model.weights.items()}, grads


def test_op_sum_is_size_times_average(hvd):
    average, _ = fixed_gradient_result(hvd, PowerSGD(rank=2))
    summed, grads = fixed_gradient_result(hvd, PowerSGD(rank=2), op=hvd.Sum)
    for name in SHAPES:
        torch.testing.assert_close(summed[name], hvd.size() * average[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(summed["bias"], hvd.allreduce(grads["bias"], op=hvd.Sum))


def test_gradient_predivide_factor_changes_nothing(hvd):
    plain, _ = fixed_gradient_result(hvd, PowerSGD(rank=2))
    predivided, _ = fixed_gradient_result(hvd, PowerSGD(rank=2), gradient_predivide_factor=2.0)
    for name in SHAPES:
        torch.testing.assert_close(predivided[name], plain[name], rtol=1e-5, atol=1e-6)


def test_non_global_process_set(hvd):
    """Each rank alone in a process set: both rounds must stay inside the set, so the result is the
    rank's own rank-2 approximation — the NumPy reference on one simulated rank."""
    sets = [hvd.add_process_set([r]) for r in range(hvd.size())]
    try:
        alone, grads = fixed_gradient_result(hvd, PowerSGD(rank=2), process_set=sets[hvd.rank()])
    finally:
        for process_set in sets:
            hvd.remove_process_set(process_set)

    def reference(comm):
        compressor = CorePowerSGD(NumpyBackend(comm), rank=2)
        for _ in range(3):
            reduce_gradients(compressor, {n: g.numpy() for n, g in grads.items()})
        return reduce_gradients(compressor, {n: g.numpy() for n, g in grads.items()})

    expected = ThreadGroup(1).run(reference)[0]
    for name in SHAPES:
        np.testing.assert_allclose(alone[name].numpy(), expected[name], rtol=1e-4, atol=1e-5)


def test_sparse_gradients_pass_through(hvd):
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(50, 16, sparse=True)
    linear = torch.nn.Linear(16, 12)
    params = list(embedding.named_parameters(prefix="emb")) + list(linear.named_parameters(prefix="out"))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([p for _, p in params], lr=0.0),
                                   named_parameters=params, compression=PowerSGD(rank=2))
    ids = torch.tensor([hvd.rank(), 3, 7 + hvd.rank()])
    opt.zero_grad()
    linear(embedding(ids)).sum().backward()
    local = embedding.weight.grad.to_dense().clone()
    opt.step()
    expected = exact_average(hvd, local)
    torch.testing.assert_close(embedding.weight.grad.to_dense(), expected)


def test_adasum_is_refused_clearly(hvd):
    torch.manual_seed(0)
    model = TwoHeads()
    opt = make_optimizer(hvd, model, PowerSGD(rank=2), lr=0.05, op=hvd.Adasum)
    x, y = batch(hvd, 0)
    with pytest.raises(Exception, match="Adasum"):
        torch.nn.functional.mse_loss(model(x, use_b=False), y).backward()
        opt.step()


def test_sparse_as_dense_is_refused_clearly(hvd):
    embedding = torch.nn.Embedding(50, 16, sparse=True)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(embedding.parameters(), lr=0.0),
                                   named_parameters=embedding.named_parameters(),
                                   compression=PowerSGD(rank=2), sparse_as_dense=True)
    with pytest.raises(LookupError, match="sparse_as_dense"):
        embedding(torch.tensor([1, 2])).sum().backward()
        opt.step()
