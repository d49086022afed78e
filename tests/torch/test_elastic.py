"""Horovod Elastic end to end with PyTorch: a slot removed and re-added mid-training, with PowerSGD
in ``hvd.elastic.TorchState`` (the job and its checks: tests/elastic_job.py; the worker:
tests/torch/distributed/elastic_worker.py, a small MLP)."""
import pytest

from tests.elastic_job import ElasticJobChecks, run_job

pytestmark = pytest.mark.distributed  # launches ranks of its own

SPECS = {"powersgd": "powersgd:rank=2", "powersgd_single_round": "powersgd:rank=2,alternate=True"}


@pytest.fixture(scope="module", params=sorted(SPECS))
def story(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"elastic-{request.param}")
    return run_job(directory, "tests/torch/distributed/elastic_worker.py", SPECS[request.param])


class TestTorchElastic(ElasticJobChecks):
    pass
