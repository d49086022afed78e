"""What the step benchmark records about each spec (the parts that need no cluster)."""
import pytest

from benchmarks.step_worker import collective_of
from examples import _common


@pytest.mark.parametrize("spec, collective", [
    ("none", "allreduce"), ("fp16", "allreduce"), ("powersgd:rank=2", "allreduce"),
    ("powersgd:rank=2,alternate=True", "allreduce"), ("randomk:ratio=0.01", "allreduce"),
    ("signum", "allgather"), ("signnorm", "allgather"), ("topk:ratio=0.01", "allgather"),
])
def test_the_payloads_collective_comes_from_the_compressors_transfers(spec, collective):
    # the scaling table groups specs by it: all-gather traffic grows with the worker count
    assert collective_of(_common.compression_from_spec(spec), [1024, 1568]) == collective
