"""Training examples on real data, and the pieces they share (flags, reports, data sets).

Not installed with the package: run them from the repository root as modules, e.g.

    horovodrun -np 2 python -m examples.torch_fashion_mnist --compression powersgd:rank=2

The benchmark (``benchmarks``) and the tests import the same models and data sets from here.
"""
