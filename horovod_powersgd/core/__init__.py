"""The framework-free core: each compressor's algorithm once, written against `backend.Backend`
(tensor operations and Horovod's collectives), which the PyTorch, TensorFlow and NumPy adapters
implement. Nothing here imports a framework."""
