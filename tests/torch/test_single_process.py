"""PyTorch adapter behaviour that needs no second rank."""
import pytest
import torch

from horovod_powersgd.torch import PowerSGD, from_spec
from tests.powersgd_schemes import SCHEMES


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


BASELINES_WITH_STATE = ("signum", "signnorm", "topk:ratio=0.1", "randomk:ratio=0.1")


def run_steps(compression, weight, gradients, into_last_output=False):
    """Compress and decompress ``gradients`` as Horovod's optimizer does (``p.grad`` becomes the
    output); ``into_last_output``: each gradient written into the last output's memory, as a
    backward pass accumulates into ``p.grad`` after ``zero_grad(set_to_none=False)``. Returns the
    inputs' addresses, the outputs, and copies of the outputs taken as each step ended."""
    import horovod.torch as hvd

    inputs, outputs, copies = [], [], []
    for gradient in gradients:
        if into_last_output and outputs:
            weight.grad = outputs[-1]
            weight.grad.copy_(gradient)
        else:
            weight.grad = gradient.clone()
        inputs.append(weight.grad.data_ptr())
        wire, ctx = compression.compress(weight.grad)
        outputs.append(compression.decompress(hvd.allreduce(wire, name="w"), ctx))
        copies.append(outputs[-1].clone())
    return inputs, outputs, copies


def compressor_for(spec: str, weight):
    import horovod.torch as hvd

    hvd.init()
    scheme = spec.partition(":")[2]
    if spec.startswith("powersgd"):
        return PowerSGD(rank=2, **SCHEMES[scheme]).register_parameters([("w", weight)])
    return from_spec(spec).register_parameters([("w", weight)])


def gradients(count=8, shape=(24, 20)):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=generator) for _ in range(count)]


OUTPUT_REUSERS = [f"powersgd:{scheme}" for scheme in SCHEMES] + list(BASELINES_WITH_STATE)


@pytest.mark.parametrize("spec", OUTPUT_REUSERS)
def test_outputs_handed_out_are_never_written_again(spec):
    """PowerSGD and the baselines with state write a step's gradient into the buffer the previous
    step retired (no fresh gradient-sized allocation per step): what earlier steps handed out stays
    as it was, and the buffer reused is a gradient given to compress two steps before, not
    anything still handed out."""
    weight = torch.nn.Parameter(torch.zeros(24, 20))
    inputs, outputs, copies = run_steps(compressor_for(spec, weight), weight, gradients())
    for step, (out, copy) in enumerate(zip(outputs, copies)):
        torch.testing.assert_close(out, copy, rtol=0, atol=0, msg=f"step {step}'s output changed")
    assert [out.data_ptr() for out in outputs[2:]] == inputs[:-2]


@pytest.mark.parametrize("spec", OUTPUT_REUSERS)
def test_a_gradient_accumulated_into_the_last_output_gives_the_same_steps(spec):
    """``zero_grad(set_to_none=False)``: the next gradient arrives in the memory of the last output,
    which the compressor no longer owns — the results are those of fresh gradient tensors."""
    weight = torch.nn.Parameter(torch.zeros(24, 20))
    *_, fresh = run_steps(compressor_for(spec, weight), weight, gradients())
    *_, reused = run_steps(compressor_for(spec, weight), weight, gradients(), into_last_output=True)
    for step, (a, b) in enumerate(zip(fresh, reused)):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"step {step}")
