"""PyTorch adapter behaviour that needs no second rank."""
import pytest
import torch

from horovod_powersgd.torch import PowerSGD, from_spec
from tests.powersgd_schemes import SCHEMES, every_scheme


def test_bad_arguments_raise_named_errors():
    with pytest.raises(ValueError, match="rank"):
        PowerSGD(rank=0)
    with pytest.raises(ValueError, match="min_compression_rate"):
        PowerSGD(rank=2, min_compression_rate=-1)
    with pytest.raises(TypeError):
        PowerSGD(rank=2, learning_rate=0.1)  # not a knob of ours


def test_from_spec_builds_the_adapter_class():
    c = from_spec("powersgd:rank=3,start_step=10")
    assert isinstance(c, PowerSGD) and c.cfg.rank == 3 and c.cfg.start_step == 10
    hash(c)  # Horovod (TF) caches by compression object


def test_unknown_gradient_is_a_clear_error():
    c = PowerSGD(rank=2)
    with pytest.raises(LookupError, match="register_parameters"):
        c.compress(torch.zeros(8, 8))


def test_registered_parameters_are_recognised():
    import horovod.torch as hvd

    hvd.init()
    weight = torch.nn.Parameter(torch.zeros(16, 12))
    weight.grad = torch.ones(16, 12)
    c = PowerSGD(rank=2).register_parameters([("w", weight)])
    identity = c.identify(weight.grad)
    assert identity.name == "w" and identity.group_size == 1


def test_compressors_are_registered_for_horovod_elastic_torch_state():
    from horovod.torch.elastic.state import _get_handler

    from horovod_powersgd.torch import PowerSGD

    handler = _get_handler(PowerSGD(rank=2))
    assert handler is not None and type(handler).__name__ == "CompressorStateHandler"


@every_scheme
def test_outputs_handed_out_are_never_written_again(scheme):
    """PowerSGD writes a step's gradient into the error buffer the previous step retired (no fresh
    n×m allocation per step): what earlier steps handed out stays as it was, and the buffer reused
    is a gradient given to compress two steps before, not anything still handed out."""
    import horovod.torch as hvd

    hvd.init()
    weight = torch.nn.Parameter(torch.zeros(24, 20))
    c = PowerSGD(rank=2, **SCHEMES[scheme]).register_parameters([("w", weight)])
    generator = torch.Generator().manual_seed(0)
    inputs, outputs, copies = [], [], []
    for step in range(8):
        weight.grad = torch.randn(24, 20, generator=generator)
        inputs.append(weight.grad.data_ptr())
        wire, ctx = c.compress(weight.grad)
        out = c.decompress(hvd.allreduce(wire, name="w"), ctx)
        outputs.append(out)
        copies.append(out.clone())
    for step, (out, copy) in enumerate(zip(outputs, copies)):
        torch.testing.assert_close(out, copy, rtol=0, atol=0, msg=f"step {step}'s output changed")
    assert [out.data_ptr() for out in outputs[2:]] == inputs[:-2]


@every_scheme
def test_a_gradient_accumulated_into_the_last_output_gives_the_same_steps(scheme):
    """``zero_grad(set_to_none=False)``: the next backward pass accumulates into ``p.grad``, which
    Horovod's optimizer pointed at our last output — the compressor gets that memory back as the
    gradient while it keeps a retired buffer as a spare. The steps are those of fresh gradient
    tensors, bit for bit."""
    import horovod.torch as hvd

    hvd.init()
    generator = torch.Generator().manual_seed(0)
    gradients = [torch.randn(24, 20, generator=generator) for _ in range(8)]

    def run(into_last_output):
        weight = torch.nn.Parameter(torch.zeros(24, 20))
        c = PowerSGD(rank=2, **SCHEMES[scheme]).register_parameters([("w", weight)])
        results = []
        for gradient in gradients:
            if into_last_output and weight.grad is not None:
                weight.grad.zero_().add_(gradient)
            else:
                weight.grad = gradient.clone()
            wire, ctx = c.compress(weight.grad)
            weight.grad = c.decompress(hvd.allreduce(wire, name="w"), ctx)
            results.append(weight.grad.clone())
        return results

    for step, (fresh, accumulated) in enumerate(zip(run(False), run(True))):
        torch.testing.assert_close(accumulated, fresh, rtol=0, atol=0, msg=f"step {step}")
