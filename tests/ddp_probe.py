"""Callbacks for the data-parallel tests, loaded by the training subprocess (``+callbacks.<name>._target_=ddp_probe.
<Class>``): :class:`LevelProbe` records, per rank, the actor parameters after every K level (the intermediate levels
too) and a fingerprint of the data each rank collected; :class:`SignalRank` sends SIGTERM to one rank's process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class LevelProbe(Callback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.levels: list[list[Any]] = []
        self.batches: list[str] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.on_level = lambda level, params: self.levels.append(
            [pl_module.experience.iterations, level, _digest(list(params))]
        )

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.batches.append(_digest([batch.get(("agents", "observation"))]))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"levels": self.levels, "batches": self.batches, "frames": pl_module.frames})
        )


class SignalRank(Callback):
    """Sends SIGTERM to the process of rank ``rank`` after the training batch that reaches ``frames`` (the frames of
    all ranks), as a scheduler that signals one task would."""

    def __init__(self, frames: int, rank: int):
        self.frames, self.rank = frames, rank

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if pl_module.frames == self.frames and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGTERM)
