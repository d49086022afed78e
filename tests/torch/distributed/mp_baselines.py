"""Every baseline compressor through hvd.DistributedOptimizer on every rank (run by
tests/torch/test_distributed.py under horovodrun --gloo and mpirun)."""
import numpy as np
import pytest
import torch

from horovod_powersgd.core.registry import COMPRESSORS
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients
from horovod_powersgd.torch import from_spec

from helpers import (FixedGradients, assert_identical_across_ranks, local_gradients, make_optimizer,
                     reduced_step)

SHAPES = {"dense": (64, 32), "conv": (8, 4, 3, 3), "bias": (32,), "odd": (13,)}
SPECS = {
    "unbiased_lowrank": "unbiased_lowrank:rank=2,seed=4",
    "signum": "signum:momentum=0.9",
    "signnorm": "signnorm",
    "topk": "topk:ratio=0.05",
    "randomk": "randomk:ratio=0.05,seed=2",
    "randomk_unbiased": "randomk:ratio=0.05,error_feedback=False",
    "fp16": "fp16",
    "bf16": "bf16",
    "powersgd_k2": "powersgd:rank=2,power_iterations=2,error_feedback=False",
    "powersgd_fp16": "powersgd:rank=2,wire_dtype='float16'",
}
STEPS = 4


def run_torch(hvd, spec, steps=STEPS, **opt_kwargs):
    compression = from_spec(spec)
    model = FixedGradients(SHAPES)
    opt = make_optimizer(hvd, model, compression, **opt_kwargs)
    outputs = [reduced_step(hvd, opt, model, local_gradients(SHAPES, hvd.rank(), step))
               for step in range(steps)]
    return outputs, compression


def run_reference(hvd, spec, steps=STEPS):
    from horovod_powersgd.core.registry import parse_spec

    name, kwargs = parse_spec(spec)

    def rank_main(comm):  # the same inputs and parameter names, every rank simulated here
        compressor = COMPRESSORS[name](NumpyBackend(comm), **kwargs)
        return [reduce_gradients(compressor, {f"weights.{n}": g.numpy() for n, g in
                                              local_gradients(SHAPES, comm.rank, s).items()})
                for s in range(steps)]

    return ThreadGroup(hvd.size()).run(rank_main)[hvd.rank()]


@pytest.mark.parametrize("label", sorted(SPECS))
def test_identical_across_ranks_and_equal_to_the_numpy_reference(hvd, label):
    outputs, compression = run_torch(hvd, SPECS[label])
    expected = run_reference(hvd, SPECS[label])
    for out, exp in zip(outputs, expected):
        for name, shape in SHAPES.items():
            assert out[name].shape == shape and torch.isfinite(out[name]).all()
            assert_identical_across_ranks(hvd, out[name])
            np.testing.assert_allclose(out[name].numpy(), exp[f"weights.{name}"], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{label}: {name}")
    assert compression.stats.steps == STEPS
    assert compression.stats.last_step.sent == sum(compression.wire_bytes(s) for s in SHAPES.values())


@pytest.mark.parametrize("label", ["topk", "signnorm", "bf16"])
def test_op_sum_gives_the_sum(hvd, label):
    average, _ = run_torch(hvd, SPECS[label], steps=2)
    total, _ = run_torch(hvd, SPECS[label], steps=2, op=hvd.Sum)
    for a, t in zip(average, total):
        for name in SHAPES:
            torch.testing.assert_close(t[name], hvd.size() * a[name], rtol=1e-5, atol=1e-6)


def test_bfloat16_factors_are_refused_clearly(hvd):
    """Horovod 0.28.1 cannot all-reduce bfloat16: PowerSGD(wire_dtype='bfloat16') says so at once."""
    with pytest.raises(ValueError, match="bfloat16"):
        from_spec("powersgd:rank=2,wire_dtype='bfloat16'")
