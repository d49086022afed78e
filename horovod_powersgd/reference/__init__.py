"""NumPy reference backend: the algorithms run on plain arrays, with collectives from mpi4py or
from in-process simulated ranks (threads). The framework adapters are tested against it."""
from .numpy_backend import NumpyBackend
from .communicators import MPICommunicator, ThreadGroup
from .driver import reduce_gradients

__all__ = ["NumpyBackend", "MPICommunicator", "ThreadGroup", "reduce_gradients"]
