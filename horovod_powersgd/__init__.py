"""horovod-powersgd: PowerSGD and baseline gradient compressors for stock Horovod.

Framework-free on import: the algorithms live in `horovod_powersgd.core` (NumPy only); pick an
adapter for your framework:

    from horovod_powersgd.torch import PowerSGD        # PyTorch + horovod.torch
    from horovod_powersgd.tensorflow import PowerSGD   # TensorFlow / Keras + horovod.tensorflow
"""
from .core.registry import COMPRESSORS, parse_spec
from .core.stats import CompressionStats

__version__ = "0.1.0"
__all__ = ["COMPRESSORS", "parse_spec", "CompressionStats", "__version__"]
