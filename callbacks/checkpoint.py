"""Frame-based checkpoints, written atomically (temporary file, then rename)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["FrameCheckpoint"]


class FrameCheckpoint(Callback):
    """Saves ``<dirpath>/last.ckpt`` every ``every_frames`` frames and at the end of training.

    Uses ``Trainer.save_checkpoint`` (networks, optimizers, callbacks, loops, the module's counters); the file
    is written under a temporary name and renamed, so ``last.ckpt`` is never half-written.
    """

    def __init__(self, dirpath: str | os.PathLike, every_frames: int):
        self.dirpath = Path(dirpath)
        self.every_frames = every_frames
        self.last_saved_frames = 0

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: Trainer, pl_module: LightningModule) -> None:
        tmp = self.dirpath / ".last.ckpt.tmp"
        self.last_saved_frames = pl_module.frames
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)
        trainer.strategy.barrier("frame_checkpoint")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.frames - self.last_saved_frames >= self.every_frames:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.frames != self.last_saved_frames or not self.last_path.exists():
            self.save(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_frames": self.last_saved_frames}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_saved_frames = state_dict.get("last_saved_frames", 0)
