"""Runs every compressor for a few steps on each rank, for the timeline byte test.

Not a pytest file: tests/torch/test_timeline_bytes.py launches it with HOROVOD_TIMELINE set and
parses what Horovod recorded. Each compressor gets its own parameters, named ``<label>__<tensor>``,
so every recorded collective can be attributed to one compressor.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import FixedGradients, local_gradients, make_optimizer, reduced_step  # noqa: E402

SHAPES = {"dense": (256, 128), "conv": (32, 16, 3, 3), "bias": (128,)}
#: every registered compressor and every documented variant (``wire_variants``; the test checks
#: that none is missing), labelled so that each one's collectives can be told apart
SPECS = {
    "powersgd": "powersgd:rank=2",
    "powersgd_k2": "powersgd:rank=2,power_iterations=2",
    "powersgd_single": "powersgd:rank=2,alternate=True",
    "powersgd_two_sided": "powersgd:rank=2,two_sided=True",
    "powersgd_no_ef": "powersgd:rank=2,error_feedback=False",
    "powersgd_fp16": "powersgd:rank=2,wire_dtype='float16'",
    "unbiased_lowrank": "unbiased_lowrank:rank=2",
    "signum": "signum",
    "signnorm": "signnorm",
    "topk": "topk:ratio=0.01",
    "randomk": "randomk:ratio=0.01",
    "randomk_no_ef": "randomk:ratio=0.01,error_feedback=False",
    "fp16": "fp16",
    "bf16": "bf16",
}
STEPS = 4  # P-steps and Q-steps of the single-round variant in equal number


def main():
    import horovod.torch as hvd

    from horovod_powersgd.torch import from_spec

    hvd.init()
    torch.set_num_threads(1)
    for label, spec in SPECS.items():
        shapes = {f"{label}__{name}": shape for name, shape in SHAPES.items()}
        model = FixedGradients(shapes)
        opt = make_optimizer(hvd, model, from_spec(spec))
        for step in range(STEPS):
            reduced_step(hvd, opt, model, local_gradients(shapes, hvd.rank(), step))
    # Horovod writes the timeline from a background thread and drops what is still queued at
    # shutdown: one more collective and a pause let the compressors' records reach the file.
    hvd.allreduce(torch.zeros(1), name="timeline.flush")
    time.sleep(2)
    hvd.shutdown()  # closes the timeline file


if __name__ == "__main__":
    main()
