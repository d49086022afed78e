"""Package-level behaviour that needs no Horovod job."""
import os
import subprocess
import sys
from pathlib import Path

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
    assert sorted(COMPRESSORS) == ["bf16", "fp16", "powersgd", "randomk", "signnorm", "signum", "topk",
                                   "unbiased_lowrank"]


SMOKE = """
import horovod.torch as hvd
import torch

import horovod_powersgd
from horovod_powersgd.advisor import Fit
from horovod_powersgd.torch import PowerSGD

assert "site-packages" in horovod_powersgd.__file__, horovod_powersgd.__file__
Fit.load()  # the advisor's default fit: package data
hvd.init()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters(),
                               compression=PowerSGD(rank=2))
for step in range(3):
    g = torch.Generator().manual_seed(10 * hvd.rank() + step)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(torch.randn(16, 20, generator=g)),
                                 torch.randn(16, 8, generator=g)).backward()
    opt.step()
weights = hvd.allgather(model[0].weight.detach()[None])
assert torch.equal(weights[0], weights[1]) and torch.isfinite(weights).all()
print("smoke ok on rank", hvd.rank())
"""


def _run(argv, **kwargs):
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, (argv, out.stdout[-3000:], out.stderr[-3000:])
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_the_built_wheel_and_sdist_install_and_train_outside_the_checkout(tmp_path):
    """The package as a user installs it: a wheel and an sdist built from a copy of the sources,
    the wheel installed into a fresh virtual environment that sees the set-up's frameworks and
    Horovod but not this checkout, then an import and a 2-rank training step run from there."""
    import shutil
    import site
    import zipfile

    from tests.launch import BIN, ROOT, command, machine_lock, worker_env

    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "horovod_powersgd", source / "horovod_powersgd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist,
          source])
    _run([sys.executable, "-c", f"from setuptools import build_meta; "
                                f"build_meta.build_sdist({str(dist)!r})"], cwd=source)
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "horovod_powersgd").rglob("*.py")}
    assert modules <= shipped, sorted(modules - shipped)
    assert "horovod_powersgd/data/default_fit.json" in shipped
    # the sdist must build the same wheel
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
          tmp_path / "from_sdist", sdist])
    (rebuilt,) = (tmp_path / "from_sdist").glob("*.whl")
    assert {n for n in zipfile.ZipFile(rebuilt).namelist() if ".dist-info/" not in n} == shipped

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel])
    # the set-up's packages as a plain path entry: its editable-install hook (a .pth file) does not
    # run from there, so horovod_powersgd can only come from the wheel
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(purelib.stdout.strip()) / "setup_packages.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    env = {k: v for k, v in worker_env().items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{BIN}{os.pathsep}{env['PATH']}"
    with machine_lock():
        out = _run(command("gloo", 2, [python, script]), cwd=tmp_path, env=env, timeout=300)
    assert out.stdout.count("smoke ok on rank") == 2, out.stdout[-2000:]
