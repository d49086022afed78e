"""Multi-process PyTorch tests: each file under distributed/ runs on 2 ranks under Gloo; the files
whose paths depend on Horovod's controller — the collectives themselves (all-reduce, grouped
all-reduce, all-gather) and the zero-gradient cases against Compression.none — under MPI as well.
Everything else goes through the same adapter code whichever controller negotiates."""
import pytest

from tests.launch import launcher_runs, run_pytest

pytestmark = pytest.mark.distributed  # launches ranks of its own

DISTRIBUTED = "tests/torch/distributed"
RUNS = launcher_runs(both_launchers=["mp_powersgd.py", "mp_baselines.py", "mp_degenerate.py"],
                     gloo_only=["mp_powersgd_robustness.py", "mp_training.py", "mp_reliability.py"])


@pytest.mark.parametrize("launcher, test_file", RUNS)
def test_two_ranks(launcher, test_file):
    run_pytest(launcher, f"{DISTRIBUTED}/{test_file}", np=2, timeout=400)
