"""Multi-process TensorFlow tests: each file under distributed/ runs on 2 ranks under Gloo, and the one
that reduces through every kind of Horovod TensorFlow op (PowerSGD's factors, the all-gather
baselines) under MPI as well."""
import pytest

from tests.launch import launcher_runs, run_pytest

pytestmark = pytest.mark.distributed  # launches ranks of its own

DISTRIBUTED = "tests/tensorflow/distributed"
# mp_baselines_tf reduces PowerSGD's factors and the all-gather baselines through Horovod's
# TensorFlow ops: under MPI it covers what the controller changes for TensorFlow
RUNS = launcher_runs(both_launchers=["mp_baselines_tf.py"],
                     gloo_only=["mp_powersgd_tf.py", "mp_keras.py", "mp_reliability_tf.py",
                                "mp_degenerate_tf.py"])


@pytest.mark.parametrize("launcher, test_file", RUNS)
def test_two_ranks(launcher, test_file):
    run_pytest(launcher, f"{DISTRIBUTED}/{test_file}", np=2, timeout=500)
