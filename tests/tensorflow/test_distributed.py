"""Multi-process TensorFlow tests: each file under distributed/ runs on 2 ranks under Gloo; the files
that exercise Horovod's collectives themselves (all-reduce of PowerSGD's factors, the all-gather
baselines) under MPI as well. The rest goes through the same adapter code under either controller."""
import pytest

from tests.launch import launcher_runs, run_pytest

pytestmark = pytest.mark.distributed  # launches ranks of its own

DISTRIBUTED = "tests/tensorflow/distributed"
RUNS = launcher_runs(both_launchers=["mp_powersgd_tf.py", "mp_baselines_tf.py"],
                     gloo_only=["mp_keras.py", "mp_reliability_tf.py", "mp_degenerate_tf.py"])


@pytest.mark.parametrize("launcher, test_file", RUNS)
def test_two_ranks(launcher, test_file):
    run_pytest(launcher, f"{DISTRIBUTED}/{test_file}", np=2, timeout=500)
