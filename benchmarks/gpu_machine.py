"""The machine a GPU check runs on (versions, the GPU) and its utilisation over a run (``nvidia-smi``)."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from typing import Any

__all__ = ["UtilSampler", "machine"]


class UtilSampler:
    """``nvidia-smi`` GPU utilisation (%) and memory used (MiB), sampled every 0.5 s in a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                util, used = (float(v) for v in out.strip().splitlines()[0].split(","))
                self.samples.append((util, used))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=10)
        utils = [u for u, _ in self.samples]
        if not utils:
            return {"samples": 0}
        busy = [u for u in utils if u > 0] or [0.0]
        return {
            "samples": len(utils),
            "mean_pct": statistics.mean(utils),
            "mean_busy_pct": statistics.mean(busy),
            "max_pct": max(utils),
            "max_memory_used_mb": max(m for _, m in self.samples),
        }


def machine(device: str) -> dict[str, Any]:
    """Host, torch and CUDA versions, and the GPU (name, driver, memory) where there is one."""
    import torch

    info: dict[str, Any] = {
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader", "-i", "0"]
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
            info["gpu"], info["driver"], info["gpu_memory"] = (v.strip() for v in out.split(","))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            info["gpu"] = f"nvidia-smi failed: {exc}"
    for package in ("lightning", "torchrl", "tensordict", "vmas", "mujoco", "jax", "jaxmarl"):
        try:
            from importlib.metadata import version

            info[package] = version(package)
        except Exception:
            info[package] = None
    return info
