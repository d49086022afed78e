"""The NumPy reference over real MPI (mpi4py, mpirun -np 2) agrees with simulated ranks."""
import numpy as np

from horovod_powersgd.core.powersgd import PowerSGD
from horovod_powersgd.reference import MPICommunicator, NumpyBackend, ThreadGroup, reduce_gradients

SHAPES = {"w": (40, 24), "conv": (6, 3, 3, 3), "b": (24,)}


def gradients(rank, step):
    rng = np.random.default_rng([rank, step])
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}


def steps(comm, count=4):
    compressor = PowerSGD(NumpyBackend(comm), rank=2)
    return [reduce_gradients(compressor, gradients(comm.rank, s)) for s in range(count)]


def test_mpi_matches_simulated_ranks_and_ranks_agree():
    comm = MPICommunicator()
    assert comm.size >= 2
    outs = steps(comm)
    simulated = ThreadGroup(comm.size).run(steps)[comm.rank]
    for out, expected in zip(outs, simulated):
        for name in SHAPES:
            np.testing.assert_allclose(out[name], expected[name], rtol=1e-5, atol=1e-6)
            gathered = comm.comm.allgather(out[name])
            assert all(np.array_equal(gathered[0], g) for g in gathered[1:])
