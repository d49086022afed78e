"""Reliability on 2 real ranks (PyTorch): mismatched compressors are refused on every rank at the
first step, one overflowed step under AMP's GradScaler does not kill training, and restored state
that matches no parameter fails loudly."""
import pytest
import torch

from horovod_powersgd.core.agreement import ConfigMismatchError
from horovod_powersgd.torch import PowerSGD, SignNorm, TopK

from helpers import assert_identical_across_ranks, make_optimizer


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))


def batch(hvd, step, n=16):
    g = torch.Generator().manual_seed(1000 * hvd.rank() + step)
    return torch.randn(n, 20, generator=g), torch.randn(n, 8, generator=g)


def one_step(hvd, model, opt, step=0):
    x, y = batch(hvd, step)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("knob, values", [("rank", (1, 2)), ("power_iterations", (1, 2)),
                                          ("warm_start", (True, False)), ("seed", (0, 7)),
                                          ("start_step", (0, 3))])
def test_a_knob_that_differs_between_ranks_is_refused_on_every_rank(hvd, knob, values):
    """Before: power_iterations hung, warm_start and seed trained on silently, rank and start_step
    died in Horovod's 'Mismatched ALLREDUCE tensor shapes'."""
    model = mlp()
    opt = make_optimizer(hvd, model, PowerSGD(**{"rank": 2, knob: values[hvd.rank()]}), lr=0.1)
    with pytest.raises(ConfigMismatchError) as error:
        one_step(hvd, model, opt)
    assert f"{knob}: {values[0]!r} on rank 0, {values[1]!r} on rank 1" in str(error.value)


def test_different_compressor_classes_are_refused_on_every_rank(hvd):
    model = mlp()
    compression = PowerSGD(rank=2) if hvd.rank() == 0 else TopK(ratio=0.1)
    opt = make_optimizer(hvd, model, compression, lr=0.1)
    with pytest.raises(ConfigMismatchError, match="PowerSGD on rank 0, TopK on rank 1"):
        one_step(hvd, model, opt)


@pytest.mark.parametrize("spec", ["powersgd", "topk", "signnorm"])
def test_one_overflowed_step_under_grad_scaler_does_not_stop_training(hvd, spec):
    """The issue's AMP loop: rank 1's scaled loss overflows once (step 10 of 40). Before: the inf/NaN
    went into the error buffer and no later step had a finite gradient. Now the scaler skips exactly
    that step on both ranks and training goes on, identical on both ranks."""
    compression = {"powersgd": lambda: PowerSGD(rank=2), "topk": lambda: TopK(ratio=0.1),
                   "signnorm": SignNorm}[spec]()
    model = mlp()
    opt = make_optimizer(hvd, model, compression, lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    finite_steps, moved = 0, 0
    for step in range(40):
        x, y = batch(hvd, step)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        if step == 10 and hvd.rank() == 1:
            loss = loss * float("inf")  # this rank's scaled loss overflows once
        scaler.scale(loss).backward()
        opt.synchronize()
        scaler.unscale_(opt)
        before = [p.detach().clone() for p in model.parameters()]
        finite = all(torch.isfinite(p.grad).all() for p in model.parameters())
        with opt.skip_synchronize():
            scaler.step(opt)
        scaler.update()
        compression.set_loss_scale(scaler.get_scale())  # error buffers follow the loss scale
        if step > 10:
            finite_steps += finite
            moved += any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        if step == 10:
            assert not finite  # the overflow was handed on: the scaler skips this step
    assert (finite_steps, moved) == (29, 29)
    assert compression.stats.nonfinite_steps == 1
    for p in model.parameters():
        assert torch.isfinite(p).all()
        assert_identical_across_ranks(hvd, p.detach())


def test_restored_state_that_matches_no_parameter_fails_loudly(hvd):
    """Before: state saved under other parameter names was kept aside and every parameter silently
    started fresh."""
    model = mlp()
    compression = PowerSGD(rank=2)
    opt = make_optimizer(hvd, model, compression, lr=0.1)
    one_step(hvd, model, opt)
    saved = compression.state_dict()

    renamed = torch.nn.Sequential()
    renamed.add_module("encoder", mlp()[0])
    renamed.add_module("act", torch.nn.ReLU())
    renamed.add_module("decoder", mlp()[2])
    restored = PowerSGD(rank=2)
    restored.load_state_dict(saved)
    opt = make_optimizer(hvd, renamed, restored, lr=0.1)
    with pytest.raises(ValueError, match=r"'0.weight'.*match no parameter"):
        one_step(hvd, renamed, opt)


def test_restored_state_with_matching_names_is_accepted(hvd):
    model = mlp()
    compression = PowerSGD(rank=2)
    opt = make_optimizer(hvd, model, compression, lr=0.1)
    one_step(hvd, model, opt)
    restored = PowerSGD(rank=2)
    restored.load_state_dict(compression.state_dict())
    model = mlp()  # same parameter names (a second optimizer on one model would hook it twice)
    opt = make_optimizer(hvd, model, restored, lr=0.1)
    one_step(hvd, model, opt, step=1)
    assert restored.stats.steps == 1


@pytest.mark.parametrize("spec", ["powersgd", "powersgd-two_sided", "topk"])
def test_following_a_grad_scaler_equals_training_without_one(hvd, spec):
    """A scaler whose scale doubles after every step (growth_interval=1: it changes at the very first
    update) and, read by ``follow_loss_scale``, error buffers always in the units of the gradients
    they meet: powers of two scale exactly, so the weights equal an unscaled run's."""
    make = {"powersgd": lambda: PowerSGD(rank=2), "topk": lambda: TopK(ratio=0.1),
            "powersgd-two_sided": lambda: PowerSGD(rank=2, two_sided=True)}[spec]

    def train(scaled):
        model = mlp()
        compression = make()
        opt = make_optimizer(hvd, model, compression, lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4, growth_interval=1)
        if scaled:
            compression.follow_loss_scale(scaler)
        for step in range(8):
            x, y = batch(hvd, step)
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            if not scaled:
                loss.backward()
                opt.step()
                continue
            scaler.scale(loss).backward()
            opt.synchronize()
            scaler.unscale_(opt)
            with opt.skip_synchronize():
                scaler.step(opt)
            scaler.update()
        assert scaler.get_scale() == (2.0 ** 12 if scaled else 2.0 ** 4)
        return [p.detach() for p in model.parameters()]

    for a, b in zip(train(scaled=True), train(scaled=False)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), float((a - b).abs().max())
