"""Layers whose gradient is exactly zero for a step, on 2 real ranks (PyTorch), each run beside the
same training under ``hvd.Compression.none``: a zero-initialised head (the layer below gets a zero
gradient at step 0), a branch not taken at step 0, a branch not taken for steps 3-5. At a rank that
is lossless every scheme must match the uncompressed run; at rank 2 the layer must train on."""
import pytest
import torch

from horovod_powersgd.torch import PowerSGD

from helpers import assert_identical_across_ranks, make_optimizer
from tests.powersgd_schemes import SCHEMES, every_scheme

WIDTH = 8  # square layers: every scheme is lossless at rank 8 (the alternating one needs n = m)
STEPS = 12


class TwoBranches(torch.nn.Module):
    """input → hidden → head, plus a side branch taken only on the steps ``uses_side`` allows."""

    def __init__(self, zero_head: bool):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = torch.nn.Linear(WIDTH, WIDTH)
        self.side = torch.nn.Linear(WIDTH, WIDTH)
        self.head = torch.nn.Linear(WIDTH, WIDTH)
        if zero_head:
            torch.nn.init.zeros_(self.head.weight)

    def forward(self, x, use_side: bool):
        h = torch.tanh(self.hidden(x))
        if use_side:
            h = h + torch.tanh(self.side(x))
        return self.head(h)


CASES = {"zero-initialised head": (True, set()), "side branch unused at step 0": (False, {0}),
         "side branch unused at steps 3-5": (False, {3, 4, 5})}
WATCHED = {"zero-initialised head": "hidden", "side branch unused at step 0": "side",
           "side branch unused at steps 3-5": "side"}


def train(hvd, case, compression):
    """The weights of the watched layer after every step."""
    zero_head, unused = CASES[case]
    model = TwoBranches(zero_head)
    opt = make_optimizer(hvd, model, compression, lr=0.1)
    watched = getattr(model, WATCHED[case]).weight
    trajectory = [watched.detach().clone()]
    for step in range(STEPS):
        g = torch.Generator().manual_seed(100 * hvd.rank() + step)
        x, y = torch.randn(16, WIDTH, generator=g), torch.randn(16, WIDTH, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, use_side=step not in unused), y).backward()
        opt.step()
        trajectory.append(watched.detach().clone())
    for p in model.parameters():
        assert_identical_across_ranks(hvd, p.detach())
    return trajectory


def moved_after(trajectory, first=6):
    return float((trajectory[-1] - trajectory[first]).norm())


@pytest.mark.parametrize("case", list(CASES))
@every_scheme
def test_at_a_lossless_rank_the_layer_trains_as_uncompressed(hvd, case, scheme):
    exact = train(hvd, case, hvd.Compression.none)
    compressed = train(hvd, case, PowerSGD(rank=WIDTH, min_compression_rate=0.01, **SCHEMES[scheme]))
    assert moved_after(exact) > 1e-4  # the layer does train uncompressed
    for step, (a, b) in enumerate(zip(exact, compressed)):
        assert torch.allclose(a, b, atol=1e-5), (step, float((a - b).abs().max()))


@pytest.mark.parametrize("case", list(CASES))
@every_scheme
def test_at_rank_2_the_layer_moves_at_least_half_as_far_as_uncompressed(hvd, case, scheme):
    exact = train(hvd, case, hvd.Compression.none)
    compressed = train(hvd, case, PowerSGD(rank=2, min_compression_rate=0.01, **SCHEMES[scheme]))
    assert moved_after(compressed) >= 0.5 * moved_after(exact), (moved_after(compressed),
                                                                 moved_after(exact))


def fit(hvd, model, compression, lr, inputs=(16, WIDTH), outputs=WIDTH, loss_scale=1.0,
        layout=torch.contiguous_format, steps=6):
    """``steps`` steps of plain SGD on each rank's own random batches of ``inputs``-shaped x (in
    memory ``layout``) and ``outputs``-wide y, on ``loss_scale`` times the MSE."""
    opt = make_optimizer(hvd, model, compression, lr=lr)
    for step in range(steps):
        g = torch.Generator().manual_seed(100 * hvd.rank() + step)
        x, y = torch.randn(*inputs, generator=g), torch.randn(inputs[0], outputs, generator=g)
        opt.zero_grad()
        (loss_scale * torch.nn.functional.mse_loss(model(x.contiguous(memory_format=layout)), y)).backward()
        opt.step()
    return model


class WithEmptyParameters(torch.nn.Module):
    """A small net, optionally with what carries no elements: a placeholder parameter (the
    ``nn.Parameter(torch.empty(0))`` models keep to find their device; no gradient, so Horovod's
    optimizer reduces zeros for it) and a layer of width 0 whose empty output joins the hidden one."""

    def __init__(self, with_empty: bool):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = torch.nn.Linear(WIDTH, WIDTH)
        self.head = torch.nn.Linear(WIDTH, WIDTH)
        self.with_empty = with_empty
        if with_empty:
            self.placeholder = torch.nn.Parameter(torch.empty(0))
            self.none_wide = torch.nn.Linear(WIDTH, 0)

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        if self.with_empty:
            h = torch.cat([h, self.none_wide(x)], 1)
        return self.head(h)


@pytest.mark.parametrize("spec", ["powersgd:rank=2", "powersgd:rank=2,two_sided=True", "signnorm",
                                  "randomk", "topk", "signum"])
def test_parameters_with_no_elements_train_the_rest_as_without_them(hvd, spec):
    from horovod_powersgd.torch import from_spec

    def train(with_empty: bool):
        model = WithEmptyParameters(with_empty)
        compression = from_spec(spec).register_parameters(model.named_parameters())
        fit(hvd, model, compression, lr=0.1)
        assert compression.stats.nonfinite_steps == 0
        return model

    plain, mixed = train(False), train(True)
    assert mixed.placeholder.shape == (0,) and mixed.none_wide.weight.shape == (0, WIDTH)
    for name in ("hidden.weight", "hidden.bias", "head.weight", "head.bias"):
        a, b = plain.get_parameter(name).detach(), mixed.get_parameter(name).detach()
        assert torch.isfinite(b).all() and torch.equal(a, b), name
    for p in mixed.parameters():
        assert_identical_across_ranks(hvd, p.detach())


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.small = torch.nn.Conv2d(8, 2, 3, padding=1)  # 2×72: below min_compression_rate, sent as it is
        self.fc = torch.nn.Linear(2 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.small(torch.relu(self.conv(x)))).flatten(1))


@pytest.mark.parametrize("spec", ["powersgd:rank=2", "powersgd:rank=2,two_sided=True",
                                  "powersgd:rank=2,alternate=True", "unbiased_lowrank:rank=2",
                                  "signum", "signnorm", "topk", "randomk", "fp16", "bf16"])
def test_a_channels_last_model_trains_as_the_contiguous_one(hvd, spec):
    """Conv weights in ``channels_last`` have gradients that are not contiguous, which Horovod's
    all-reduce refuses (``hvd.Compression.none`` included): every compressor hands it a contiguous
    tensor, and the model trains exactly as with the default layout."""
    from horovod_powersgd.torch import from_spec

    def train(channels_last: bool):
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = ConvNet().to(memory_format=layout)
        compression = from_spec(spec).register_parameters(model.named_parameters())
        fit(hvd, model, compression, lr=0.05, inputs=(8, 4, 6, 6), outputs=5, layout=layout)
        assert compression.stats.nonfinite_steps == 0
        return {name: p.detach().contiguous() for name, p in model.named_parameters()}

    assert not ConvNet().to(memory_format=torch.channels_last).conv.weight.is_contiguous()
    default, channels_last = train(False), train(True)
    for name, value in default.items():
        assert torch.allclose(channels_last[name], value, atol=1e-6), name


@pytest.mark.parametrize("scale", [1e-12, 1e12])
@every_scheme
def test_gradients_of_any_scale_at_a_lossless_rank_train_as_uncompressed(hvd, scale, scheme):
    """A layer far from the loss (gradients ~1e-12) or a huge loss: at a lossless rank every
    scheme delivers the exact mean at every step, whatever the scale."""
    def train(compression):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh(), torch.nn.Linear(WIDTH, WIDTH))
        fit(hvd, model, compression, lr=0.1 / scale, loss_scale=scale)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    exact = train(hvd.Compression.none)
    compressed = train(PowerSGD(rank=WIDTH, min_compression_rate=0.01, **SCHEMES[scheme]))
    assert torch.allclose(compressed, exact, atol=1e-5), float((compressed - exact).abs().max())
