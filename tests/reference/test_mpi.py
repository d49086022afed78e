"""The reference backend on real MPI: mpirun -np 2 with mpi4py."""
import pytest

from tests.launch import run_pytest

pytestmark = pytest.mark.distributed  # launches ranks of its own


def test_reference_under_mpirun():
    run_pytest("mpi", "tests/reference/distributed/mp_reference_mpi.py", np=2, timeout=120)
