"""Every baseline compressor through hvd.DistributedGradientTape on every rank."""
import numpy as np
import pytest

from horovod_powersgd.core.registry import COMPRESSORS, parse_spec
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients
from horovod_powersgd.tensorflow import from_spec

from tf_helpers import FixedGradients, identical_across_ranks, local_gradients

SHAPES = {"dense": (64, 32), "conv": (8, 4, 3, 3), "bias": (32,), "odd": (13,)}
STEPS = 4
# Deterministic compressors: TensorFlow must give the NumPy reference's numbers.
SAME_AS_REFERENCE = {
    "signum": "signum:momentum=0.9",
    "signnorm": "signnorm",
    "topk": "topk:ratio=0.05",
    "fp16": "fp16",
    "bf16": "bf16",
    "powersgd_k2": "powersgd:rank=2,power_iterations=2,error_feedback=False",
    "powersgd_fp16": "powersgd:rank=2,wire_dtype='float16'",
}
# Randomized ones draw from TensorFlow's stateless RNG in the graph (not NumPy's): they must agree
# across ranks and keep their structure, not match the reference's draws.
RANDOMIZED = {
    "unbiased_lowrank": "unbiased_lowrank:rank=2,seed=4",
    "randomk": "randomk:ratio=0.05,seed=2",
    "randomk_unbiased": "randomk:ratio=0.05,error_feedback=False",
}


def run_tf(hvd, spec, steps=STEPS):
    compression = from_spec(spec)
    run = FixedGradients(SHAPES).make_step(hvd, compression)
    return [run(local_gradients(SHAPES, hvd.rank(), s)) for s in range(steps)], compression


def run_reference(hvd, spec, steps=STEPS):
    name, kwargs = parse_spec(spec)

    def rank_main(comm):
        compressor = COMPRESSORS[name](NumpyBackend(comm), **kwargs)
        return [reduce_gradients(compressor, local_gradients(SHAPES, comm.rank, s)) for s in range(steps)]

    return ThreadGroup(hvd.size()).run(rank_main)[hvd.rank()]


def check_common(hvd, outputs, compression):
    for out in outputs:
        for name, shape in SHAPES.items():
            assert out[name].shape == shape and np.isfinite(out[name]).all()
            assert identical_across_ranks(hvd, out[name]), name
    assert compression.stats.steps == STEPS
    assert compression.stats.last_step.sent == sum(compression.wire_bytes(s) for s in SHAPES.values())


@pytest.mark.parametrize("label", sorted(SAME_AS_REFERENCE))
def test_equal_to_the_numpy_reference(hvd, label):
    outputs, compression = run_tf(hvd, SAME_AS_REFERENCE[label])
    check_common(hvd, outputs, compression)
    for out, exp in zip(outputs, run_reference(hvd, SAME_AS_REFERENCE[label])):
        for name in SHAPES:
            np.testing.assert_allclose(out[name], exp[name], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{label}: {name}")


@pytest.mark.parametrize("label", sorted(RANDOMIZED))
def test_randomized_compressors_agree_across_ranks(hvd, label):
    outputs, compression = run_tf(hvd, RANDOMIZED[label])
    check_common(hvd, outputs, compression)
    last = outputs[-1]
    if label == "unbiased_lowrank":
        assert np.linalg.matrix_rank(last["dense"]) <= 2
    else:  # random-k: the same k = round(0.05 d) coordinates on every rank, the rest zero
        k = round(0.05 * 64 * 32)
        assert np.count_nonzero(last["dense"]) <= k
