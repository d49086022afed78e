"""Fixtures for tests that run on every rank under horovodrun / mpirun (see tests/launch.py)."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def hvd():
    import horovod.torch as hvd
    import torch

    hvd.init()
    torch.set_num_threads(1)
    assert hvd.size() >= 2, "multi-process tests need at least 2 ranks (Horovod skips compression on 1)"
    return hvd
