"""What machine a measurement came from: CPU model, cores, BLAS — named next to every figure.

Codec and step timings move with the CPU and the BLAS (the same code measured 1.95x on one machine
and 1.11x on another), so the benchmark, the demo and the calibration all record these facts.
"""
from __future__ import annotations

import os
import platform


def _cpuinfo(field: str) -> str:
    """The first ``field`` of ``/proc/cpuinfo`` ("" where there is none or no such file)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """The CPU's vendor id, e.g. ``GenuineIntel`` or ``AuthenticAMD`` ("" where unknown)."""
    return _cpuinfo("vendor_id")


def torch_blas() -> str:
    """The BLAS torch was built with (``BLAS_INFO`` of ``torch.__config__.show()``) and the CPU
    capability it dispatches to, e.g. ``mkl, AVX2``; ``unknown`` without torch."""
    try:
        import torch
    except ImportError:
        return "unknown"
    config = torch.__config__.show()
    blas = next((item.split("=", 1)[1].strip() for item in config.replace(",", "\n").splitlines()
                 if "BLAS_INFO" in item), "unknown")
    capability = next((line.split(":", 1)[1].strip() for line in config.splitlines()
                       if "CPU capability usage" in line), "")
    return f"{blas}, {capability}" if capability else blas


def describe() -> dict:
    """Every fact above, plus core count and versions, as one JSON-ready dict."""
    facts = {"cpu": cpu_model(), "cores": os.cpu_count(), "blas": torch_blas(),
             "platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        facts["torch"] = torch.__version__
    except ImportError:
        pass
    return facts


def one_line(facts: dict) -> str:
    """``AMD EPYC ... , 2 cores, BLAS mkl, AVX2, torch 2.13.0+cpu`` (with the GPU where one was
    used; facts a record lacks are left out)."""
    parts = [str(facts.get("cpu", "unknown CPU"))]
    parts += [f"{facts['cores']} cores"] if facts.get("cores") else []
    parts += [f"BLAS {facts['blas']}"] if facts.get("blas") else []
    parts += [str(facts["gpu"])] if facts.get("gpu") else []
    parts += [f"torch {facts['torch']}"] if facts.get("torch") else []
    return ", ".join(parts)
