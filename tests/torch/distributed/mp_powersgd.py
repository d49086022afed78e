"""PowerSGD through hvd.DistributedOptimizer on every rank (run by tests/torch/test_distributed.py)."""
import numpy as np
import pytest
import torch

from horovod_powersgd.core.powersgd import PowerSGD as CorePowerSGD
from horovod_powersgd.reference import NumpyBackend, ThreadGroup, reduce_gradients
from horovod_powersgd.torch import PowerSGD

from tests.powersgd_schemes import SCHEMES, every_scheme, factor_numbers, max_output_rank

from helpers import (FixedGradients, assert_identical_across_ranks, exact_average,
                     local_gradients, make_optimizer, reduced_step)

SHAPES = {"dense": (64, 32), "conv": (8, 4, 3, 3), "bias": (32,), "small": (3, 3)}


def run_steps(hvd, compression, steps, shapes=SHAPES, gradients=None, **opt_kwargs):
    model = FixedGradients(shapes)
    opt = make_optimizer(hvd, model, compression, **opt_kwargs)
    outputs = []
    for step in range(steps):
        grads = gradients(step) if gradients else local_gradients(shapes, hvd.rank(), step)
        outputs.append(reduced_step(hvd, opt, model, grads))
    return outputs


@every_scheme
def test_identical_across_ranks_low_rank_and_exact_1d(hvd, scheme):
    rank = 2
    for out in run_steps(hvd, PowerSGD(rank=rank, **SCHEMES[scheme]), steps=3):
        for name, g in out.items():
            assert torch.isfinite(g).all()
            assert_identical_across_ranks(hvd, g)
        assert torch.linalg.matrix_rank(out["dense"]).item() <= max_output_rank(scheme, rank)
        assert torch.linalg.matrix_rank(out["conv"].reshape(8, -1)).item() <= max_output_rank(scheme, rank)
    # uncompressed tensors (1-D, and too small to shrink 2x) are the exact average
    last = local_gradients(SHAPES, hvd.rank(), 2)
    for name in ("bias", "small"):
        assert torch.equal(out[name], exact_average(hvd, last[name]))


@every_scheme
def test_low_rank_gradients_become_exact_after_warm_start(hvd, scheme):
    shared = torch.from_numpy(np.random.default_rng(7).standard_normal((64, 2)).astype(np.float32))

    def gradients(step):  # average of U V_r is U mean(V_r): rank 2
        v = torch.from_numpy(np.random.default_rng([hvd.rank(), 99]).standard_normal((2, 32))
                             .astype(np.float32))
        return {"dense": shared @ v}

    outs = run_steps(hvd, PowerSGD(rank=2, error_feedback=False, **SCHEMES[scheme]), 4,
                     {"dense": (64, 32)}, gradients)
    exact = exact_average(hvd, gradients(0)["dense"])
    errors = [(torch.linalg.norm(o["dense"] - exact) / torch.linalg.norm(exact)).item() for o in outs]
    assert errors[-1] < 1e-5, errors


@every_scheme
@pytest.mark.parametrize("error_feedback", [True, False])
def test_error_feedback_keeps_running_sum_close(hvd, error_feedback, scheme):
    # half a power iteration per step: the single-round error settles later (~100 steps here)
    steps = 80 if scheme == "classic" else 160
    fixed = local_gradients({"dense": (48, 40)}, hvd.rank(), 0)
    outs = run_steps(hvd, PowerSGD(rank=1, error_feedback=error_feedback, **SCHEMES[scheme]), steps,
                     {"dense": (48, 40)}, lambda step: fixed)
    exact = exact_average(hvd, fixed["dense"])
    running = torch.cumsum(torch.stack([o["dense"] for o in outs]), 0)
    gaps = [torch.linalg.norm(running[t] - (t + 1) * exact).item() for t in range(steps)]
    if error_feedback:
        assert max(gaps[steps // 2:]) < 1.5 * max(gaps[:steps // 2]), \
            "with error feedback the gap must stay bounded"
    else:
        assert gaps[steps - 1] > 3 * gaps[steps // 4], "without error feedback the gap grows linearly"


@every_scheme
def test_matches_numpy_reference(hvd, scheme):
    steps, shapes = 5, {"dense": (64, 32), "conv": (8, 4, 3, 3)}
    outs = run_steps(hvd, PowerSGD(rank=2, seed=3, **SCHEMES[scheme]), steps, shapes)

    def reference(comm):  # the same inputs, every rank simulated in this process
        compressor = CorePowerSGD(NumpyBackend(comm), rank=2, seed=3, **SCHEMES[scheme])
        return [reduce_gradients(compressor, {n: g.numpy() for n, g in
                                              local_gradients(shapes, comm.rank, s).items()})
                for s in range(steps)]

    expected = ThreadGroup(hvd.size()).run(reference)[hvd.rank()]
    for out, exp in zip(outs, expected):
        for name in shapes:
            np.testing.assert_allclose(out[name].numpy(), exp[name], rtol=1e-4, atol=1e-5)


@every_scheme
def test_zero_and_rank_deficient_gradients_stay_finite(hvd, scheme):
    def gradients(step):
        g = torch.zeros(64, 32)
        if step % 2:
            g[:, 0] = 1.0  # rank 1 < r
        return {"dense": g}

    for out in run_steps(hvd, PowerSGD(rank=4, **SCHEMES[scheme]), 4, {"dense": (64, 32)},
                         gradients):
        assert torch.isfinite(out["dense"]).all()


@every_scheme
def test_stats_count_the_bytes(hvd, scheme):
    compression = PowerSGD(rank=2, **SCHEMES[scheme])
    run_steps(hvd, compression, 2)
    s = compression.stats
    uncompressed = 4 * (64 * 32 + 8 * 36 + 32 + 9)
    # the factors of each compressed matrix, the rest as is
    sent = 4 * (factor_numbers(scheme, 2, 64, 32) + factor_numbers(scheme, 2, 8, 36) + 32 + 9)
    assert s.steps == 2
    assert s.last_step.uncompressed == uncompressed and s.last_step.sent == sent
    assert s.total.uncompressed == 2 * uncompressed
    assert s.last_step.ratio == pytest.approx(uncompressed / sent)
    assert s.compressed_tensors_last_step == 2 and s.uncompressed_tensors_last_step == 2
