"""Horovod Elastic with TensorFlow: horovod_powersgd.tensorflow.elastic's state classes.

* End to end (the job and its checks: tests/elastic_job.py; the worker:
  tests/tensorflow/distributed/elastic_worker_tf.py, a small Keras MLP in a ``tf.function`` step with
  ``hvd.DistributedGradientTape``): a slot removed and re-added mid-training, PowerSGD in
  ``TensorFlowKerasState``.
* On 2 ranks without an elastic launcher (tests/tensorflow/distributed/mp_elastic_state_tf.py):
  state loaded after the first traced step reaches it; commit / restore / sync of the compressor;
  mismatched compressors refused at sync on every rank.
"""
import pytest

from tests.elastic_job import ADD_AT, REMOVE_AT, ElasticJobChecks, run_job
from tests.launch import run_pytest

pytestmark = pytest.mark.distributed  # launches ranks of its own

JOBS = {"powersgd": ("keras", "powersgd:rank=2"),
        "powersgd_single_round": ("keras", "powersgd:rank=2,alternate=True")}


@pytest.fixture(scope="module", params=sorted(JOBS))
def story(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"elastic-tf-{request.param}")
    return run_job(directory, "tests/tensorflow/distributed/elastic_worker_tf.py", *JOBS[request.param])


class TestTensorFlowElastic(ElasticJobChecks):
    def test_one_worker_left_leaves_the_compressor_alone(self, story):
        """Horovod's elastic TensorFlow all-reduce is a ``tf.cond`` on a world size above 1: with
        one worker left the compressor is not called, and its state waits unchanged."""
        alone = {e["shared"] for e in story.survivor
                 if e["event"] == "step" and REMOVE_AT <= e["step"] < ADD_AT}
        assert len(alone) == 1, alone


def test_state_classes_on_two_ranks():
    run_pytest("gloo", "tests/tensorflow/distributed/mp_elastic_state_tf.py", np=2, timeout=400)
