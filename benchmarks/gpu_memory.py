"""Peak GPU memory of a training run, written by the training process itself.

``torch.cuda.max_memory_allocated`` is per process, so ``gpu_check.py`` passes this callback to each training
subprocess (``benchmarks/`` on ``PYTHONPATH``)::

    +callbacks.gpu_mem._target_=gpu_memory.PeakGpuMemory +callbacks.gpu_mem.path=RUN_DIR/gpu_memory.json
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class PeakGpuMemory(Callback):
    """Writes ``{"device", "max_allocated_mb", "max_reserved_mb"}`` to ``path`` when fitting ends (nulls on a
    machine without CUDA)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        record: dict[str, object] = {"device": str(pl_module.device), "max_allocated_mb": None, "max_reserved_mb": None}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            record["max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            record["max_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(record))
