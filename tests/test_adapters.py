"""The framework adapters' classes are written out by hand (so grep, IDEs and help() see them): they
must stay in step with the core classes in core.registry.COMPRESSORS."""
import inspect

import pytest

from horovod_powersgd.core.compressor import Compressor
from horovod_powersgd.core.registry import COMPRESSORS

FRAMEWORKS = ["torch", "tensorflow"]


def _adapter(framework):
    pytest.importorskip(framework)
    pytest.importorskip(f"horovod.{framework}")
    return pytest.importorskip(f"horovod_powersgd.{framework}")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_registered_compressor_and_nothing_else_is_exported(framework):
    module = _adapter(framework)
    exported = {name for name in module.__all__
                if isinstance(getattr(module, name), type) and issubclass(getattr(module, name), Compressor)}
    assert exported == {core.__name__ for core in COMPRESSORS.values()}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("spec", sorted(COMPRESSORS))
def test_signature_is_the_core_signature_without_the_backend(framework, spec):
    core = COMPRESSORS[spec]
    adapter = getattr(_adapter(framework), core.__name__)
    assert issubclass(adapter, core) and adapter.__name__ == core.__name__
    core_parameters = list(inspect.signature(core).parameters.values())
    assert core_parameters[0].name == "backend"
    assert list(inspect.signature(adapter).parameters.values()) == core_parameters[1:]
    assert "__init__" in vars(adapter) and adapter.__doc__ and adapter.__doc__ != core.__doc__


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("spec", sorted(COMPRESSORS))
def test_from_spec_builds_the_adapter_class(framework, spec):
    module = _adapter(framework)
    compressor = module.from_spec(spec)
    assert type(compressor) is getattr(module, COMPRESSORS[spec].__name__)


@pytest.mark.parametrize("framework", [None, *FRAMEWORKS])
def test_powersgd_defaults_are_the_configs(framework):
    """PowerSGDConfig's defaults are the only ones: the core class and both adapters derive theirs."""
    from horovod_powersgd.core.powersgd import PowerSGD, PowerSGDConfig

    cls = PowerSGD if framework is None else _adapter(framework).PowerSGD
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == PowerSGDConfig._field_defaults
