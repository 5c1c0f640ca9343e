"""What a run's numbers depend on beside its configuration, recorded in its ``summary.json`` (``platform``).

A module of its own, not :mod:`kpg_lightning.train`: run as ``python -m kpg_lightning.train``, that module is
``__main__``, whose functions a sweep launcher pickles by value, with every module they reach (``torch.backends``
cannot be pickled).
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

__all__ = ["RECORDED_PACKAGES", "platform_record"]

RECORDED_PACKAGES = (
    "torch",
    "torchrl",
    "tensordict",
    "lightning",
    "hydra-core",
    "numpy",
    "vmas",
    "mujoco",
    "jax",
    "jaxmarl",
)


def platform_record(device: torch.device) -> dict[str, Any]:
    """What a run's numbers depend on beside its configuration: Python and package versions, the GPU, and the vector
    width of torch's CPU kernels (``AVX2``, ``AVX512``...): the last bits of a float reduction differ between widths,
    so a run is re-run bit for bit on the same width (``ATEN_CPU_CAPABILITY=avx2`` picks a narrower one)."""
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": versions,
    }
