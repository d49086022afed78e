"""The reference backend on real MPI: mpirun -np 2 with mpi4py."""
from tests.launch import run_pytest


def test_reference_under_mpirun():
    run_pytest("mpi", "tests/reference/distributed/mp_reference_mpi.py", np=2, timeout=120)
