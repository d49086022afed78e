"""Package-level behaviour that needs no Horovod job."""
import subprocess
import sys

import pytest

from horovod_powersgd import COMPRESSORS, parse_spec


def test_core_imports_without_any_framework():
    code = ("import sys\n"
            "for blocked in ('torch', 'tensorflow', 'horovod', 'mpi4py'):\n"
            "    sys.modules[blocked] = None  # any import of these now fails\n"
            "import horovod_powersgd, horovod_powersgd.core.powersgd, horovod_powersgd.reference\n"
            "print(sorted(horovod_powersgd.COMPRESSORS))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "powersgd" in out.stdout


def test_spec_parsing():
    assert parse_spec("powersgd:rank=2,power_iterations=3,wire_dtype=float16") == (
        "powersgd", {"rank": 2, "power_iterations": 3, "wire_dtype": "float16"})
    assert parse_spec(" none ") == ("none", {})
    with pytest.raises(ValueError, match="unknown compressor"):
        parse_spec("zip:level=9")
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("powersgd:2")
    assert "powersgd" in COMPRESSORS
