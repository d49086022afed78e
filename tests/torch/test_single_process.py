"""PyTorch adapter behaviour that needs no second rank."""
import pytest
import torch

from horovod_powersgd.torch import PowerSGD, from_spec


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
