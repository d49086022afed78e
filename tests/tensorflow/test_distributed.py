"""Multi-process TensorFlow tests: each file under distributed/ runs on 2 ranks, with Gloo and MPI."""
import pytest

from tests.launch import LAUNCHERS, run_pytest

FILES = ["tests/tensorflow/distributed/mp_powersgd_tf.py", "tests/tensorflow/distributed/mp_baselines_tf.py",
         "tests/tensorflow/distributed/mp_keras.py", "tests/tensorflow/distributed/mp_reliability_tf.py"]


@pytest.mark.parametrize("test_file", FILES)
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_ranks(launcher, test_file):
    run_pytest(launcher, test_file, np=2, timeout=500)


def test_zero_gradient_layers_two_ranks():
    """The zero-gradient cases go through the same adapter code under either launcher: Gloo only."""
    run_pytest("gloo", "tests/tensorflow/distributed/mp_degenerate_tf.py", np=2, timeout=500)
