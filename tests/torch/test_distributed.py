"""Multi-process PyTorch tests: each file under distributed/ runs on 2 ranks, with Gloo and MPI."""
import pytest

from tests.launch import LAUNCHERS, run_pytest

FILES = ["tests/torch/distributed/mp_powersgd.py", "tests/torch/distributed/mp_powersgd_robustness.py",
         "tests/torch/distributed/mp_training.py", "tests/torch/distributed/mp_baselines.py",
         "tests/torch/distributed/mp_reliability.py", "tests/torch/distributed/mp_degenerate.py"]


@pytest.mark.parametrize("test_file", FILES)
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_ranks(launcher, test_file):
    run_pytest(launcher, test_file, np=2, timeout=400)
