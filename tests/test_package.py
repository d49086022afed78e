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


def test_a_built_wheel_ships_the_advisors_default_fit(tmp_path):
    """`pip install .` must carry the fit the advisor reads by default (package data, setup.cfg)."""
    import shutil
    import zipfile

    from tests.launch import ROOT

    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "horovod_powersgd", source / "horovod_powersgd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert "horovod_powersgd/data/default_fit.json" in zipfile.ZipFile(wheel).namelist()
