"""Frame-based checkpoints: complete, checksummed directories, written atomically, ``keep_last`` kept; one more at
the frame count reached when the run is signalled to stop (preemption)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from kpg_lightning.checkpointing import MODEL, assert_finite, seal

__all__ = ["FrameCheckpoint", "sigusr1_as_sigterm"]


class FrameCheckpoint(Checkpoint):
    """Saves ``<dirpath>/frames_<N>/`` each time the frame count crosses a multiple of ``every_frames``, and at
    the end of training; ``<dirpath>/last.ckpt`` links to the newest ``model.ckpt``.

    Each checkpoint holds the Lightning checkpoint (``Trainer.save_checkpoint``: networks, targets, optimizers,
    callbacks, loops, the module's counters and RNG states) and every rank's replay buffer; it is assembled under
    a temporary name, checksummed and renamed, so an interrupted save leaves the previous checkpoint intact.
    Parameters that are not finite are never written (the module raises first).

    Preemption: Lightning's signal connector turns SIGTERM into ``trainer.received_sigterm``, checked after each
    training batch (it then raises ``SIGTERMException``); under :func:`sigusr1_as_sigterm`, SIGUSR1 too. At the end
    of the batch the signal arrived in, a checkpoint at the frame count reached is written (the batch Lightning has
    already fetched ahead goes with it, see :meth:`Experience.save_replay`) and the trainer stops;
    :attr:`preempted_at` says at how many frames.

    Under data parallelism Lightning's SIGTERM handler cannot be used: it broadcasts from inside the handler, a
    collective that the other ranks do not make at that moment, so a run signalled mid-update hangs. From
    ``on_train_start`` (the first hook after Lightning installs its handlers) SIGTERM only sets a flag here; after
    each batch the ranks agree (one collective) whether any rank was signalled, and if so every rank writes its part
    of the same checkpoint and raises ``SIGTERMException`` there, so all ranks leave along the same path.
    """

    def __init__(self, dirpath: str | os.PathLike, every_frames: int, keep_last: int = 2):
        self.dirpath = Path(dirpath)
        self.every_frames, self.keep_last = every_frames, keep_last
        self.last_saved_frames = 0
        self.preempted_at: int | None = None
        self._signalled = False  # set by this callback's SIGTERM handler (data parallel runs only)

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def due(self, frames: int) -> bool:
        return frames // self.every_frames > self.last_saved_frames // self.every_frames

    def save(self, trainer: Trainer, pl_module: LightningModule) -> None:
        frames = pl_module.frames
        name = f"frames_{frames:012d}"
        tmp, final = self.dirpath / f".tmp_{name}", self.dirpath / name
        assert_finite(pl_module.state_dict())
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.strategy.barrier("frame_checkpoint_start")
        self.last_saved_frames = frames
        trainer.save_checkpoint(tmp / MODEL, weights_only=False)  # everything: optimizers, loops, callbacks
        pl_module.experience.save_replay(tmp / f"replay_rank{trainer.global_rank}")
        trainer.strategy.barrier("frame_checkpoint_written")
        if trainer.is_global_zero:
            seal(tmp, final, frames)
            link = self.dirpath / ".last.ckpt.tmp"
            link.unlink(missing_ok=True)
            os.link(final / MODEL, link)
            os.replace(link, self.last_path)
            for old in sorted(p for p in self.dirpath.glob("frames_*") if p.is_dir())[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        trainer.strategy.barrier("frame_checkpoint_done")

    # -- preemption -------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size > 1:
            with suppress(ValueError):  # not the main thread: Lightning installs no handlers there either
                signal.signal(signal.SIGTERM, self._flag)  # Lightning's teardown puts back the handler it found

    def _flag(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def signalled(self, trainer: Trainer) -> bool:
        """Whether any rank received SIGTERM/SIGUSR1 (one collective under data parallelism)."""
        if trainer.world_size == 1:
            return trainer.received_sigterm
        return trainer.strategy.reduce_boolean_decision(self._signalled or trainer.received_sigterm, all=False)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        preempted = self.signalled(trainer)
        if self.due(pl_module.frames) or (preempted and pl_module.frames != self.last_saved_frames):
            self.save(trainer, pl_module)
        if preempted:
            self.preempted_at = pl_module.frames
            if trainer.world_size > 1:  # every rank, after the checkpoint's last barrier: no collective follows
                raise SIGTERMException
            trainer.should_stop = True  # Lightning raises SIGTERMException after this batch

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A signal that arrived after this callback's look at the batch (Lightning raises ``SIGTERMException`` only
        between batches, so the state is whole): checkpoint it here, as Lightning's ``OnExceptionCheckpoint``
        would. One process only: ranks of a data-parallel run agree in :meth:`on_train_batch_end` instead."""
        if isinstance(exception, SIGTERMException) and trainer.world_size == 1:
            if pl_module.frames != self.last_saved_frames:
                self.save(trainer, pl_module)
            self.preempted_at = pl_module.frames

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.frames != self.last_saved_frames or not self.last_path.exists():
            self.save(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_frames": self.last_saved_frames}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_saved_frames = state_dict.get("last_saved_frames", 0)


def _as_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.raise_signal(signal.SIGTERM)


@contextmanager
def sigusr1_as_sigterm() -> Iterator[None]:
    """Within it SIGUSR1 (SLURM's ``--signal=SIGUSR1@<s>``) is re-raised as SIGTERM, so that Lightning's SIGTERM
    handling (under data parallelism, :class:`FrameCheckpoint`'s) applies to it. Entered before ``Trainer.fit``, it
    also keeps Lightning's SLURM auto-requeue handler out (Lightning installs it only where SIGUSR1 has none): that
    handler would write an ``hpc_ckpt_*.ckpt`` without the replay, from inside the update, and requeue by itself."""
    if not hasattr(signal, "SIGUSR1"):
        yield
        return
    try:
        previous = signal.signal(signal.SIGUSR1, _as_sigterm)
    except ValueError:  # not the main thread: Lightning installs no handlers there either
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)
