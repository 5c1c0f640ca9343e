"""A progress bar counted in environment frames, with the latest training return."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["FramesProgressBar"]


class FramesProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, but its total is ``max_frames`` and it advances by collected frames."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.reset(total=pl_module.experience.max_frames)
        # a new epoch starts at every checkpoint segment and on resume: the rate counts this epoch's frames only
        self.train_progress_bar.n = self.train_progress_bar.initial = pl_module.frames
        self.train_progress_bar.unit = "frames"
        self.train_progress_bar.set_description("Training")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        bar.n = pl_module.frames
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k not in ("v_num", "frames")}
        bar.set_postfix(metrics, refresh=False)
        bar.refresh()
