"""Progress counted in environment frames: a bar on a terminal, a line every ``every_s`` seconds in a log file.

Redirected to a file (SLURM logs, nohup), a refreshing bar is noise: every refresh is one more line. There the
progress is one line every ``every_s`` seconds (frames, frames/s, the latest training and evaluation return, ETA)
and a last line at the end. :func:`quiet_known_noise` removes the advertisements and the harmless warnings that
the stack prints in every run.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import IO, Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from kpg_lightning.callbacks.evaluation import EvaluationCallback
from kpg_lightning.config import ProgressConfig

__all__ = ["FramesProgressBar", "progress_line", "quiet_known_noise"]


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(
    frames: int,
    max_frames: int,
    elapsed_s: float,
    rate: float,
    train_return: float | None = None,
    evaluation: dict[str, float] | None = None,
    done: bool = False,
) -> str:
    """One line of progress: frames (of the budget), frames/s, the latest training return, the latest evaluation
    (return, win rate where the env reports wins, and the frames it was taken at), elapsed time and ETA (or, with
    ``done``, the run's totals)."""
    if done:
        parts = [f"done: {frames:,} frames in {_duration(elapsed_s)} ({rate:,.0f} frames/s)"]
    else:
        percent = 100.0 * frames / max_frames if max_frames else 100.0
        eta = (max_frames - frames) / rate if rate > 0 else math.inf
        parts = [
            f"frames {frames:,}/{max_frames:,} ({percent:.0f}%)",
            f"{rate:,.0f} frames/s",
        ]
    if train_return is not None:
        parts.append(f"return {train_return:.4g}")
    if evaluation:
        text = f"eval return {evaluation['return_mean']:.4g}"
        if "win_rate" in evaluation:
            text += f", win rate {evaluation['win_rate']:.0%}"
        parts.append(f"{text} (at {int(evaluation['frames']):,} frames)")
    if not done:
        parts += [f"elapsed {_duration(elapsed_s)}", f"ETA {_duration(max(eta, 0.0))}"]
    return " | ".join(parts)


class FramesProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, but its total is ``max_frames`` and it advances by collected frames. Where ``stream``
    (default: standard output, the bar's) is not a terminal, no bar: a :func:`progress_line` on the first
    training step, then at most one every ``every_s`` seconds, and a ``done`` line at the end.

    Args:
        every_s: seconds between lines without a terminal.
        lines: force lines (True) or the bar (False); None: lines exactly where ``stream`` is not a terminal.
        stream: where the lines go (None: ``sys.stdout`` when writing).
        clock: seconds, monotonic (``time.monotonic``); the lines' cadence and rates read it.
    """

    def __init__(
        self,
        every_s: float = ProgressConfig.every_s,
        *,
        lines: bool | None = None,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0 seconds, got {every_s}")
        self.every_s, self.lines, self.stream, self.clock = every_s, lines, stream, clock
        self._start: tuple[float, int] | None = None  # (clock, frames) when training started
        self._last_line: float | None = None
        self._writes = True  # rank zero only (set at setup)

    def _out(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stdout

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.lines is None:
            isatty = getattr(self._out(), "isatty", None)
            self.lines = not (isatty is not None and isatty())
        if self.lines:
            self.disable()  # the TQDM bars are created disabled: they write nothing
            self._writes = trainer.is_global_zero

    # -- lines ----------------------------------------------------------------------------------------------------
    def _line(self, trainer: Trainer, pl_module: LightningModule, done: bool = False) -> str:
        now, frames = self.clock(), pl_module.frames
        start_clock, start_frames = self._start if self._start is not None else (now, frames)
        elapsed = now - start_clock
        rate = (frames - start_frames) / elapsed if elapsed > 0 else 0.0
        metrics = self.get_metrics(trainer, pl_module)
        train_return = metrics.get("return")
        evaluations = [c for c in trainer.callbacks if isinstance(c, EvaluationCallback) and c.history]
        evaluation = evaluations[0].history[-1] if evaluations else None
        return progress_line(
            frames,
            pl_module.experience.max_frames,
            elapsed,
            rate,
            float(train_return) if train_return is not None else None,
            evaluation,
            done=done,
        )

    def _write(self, line: str) -> None:
        out = self._out()
        print(line, file=out, flush=True)
        self._last_line = self.clock()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start, self._last_line = (self.clock(), pl_module.frames), None

    # -- the bar and the lines ------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.lines:
            return
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.reset(total=pl_module.experience.max_frames)
        # a new epoch starts at every checkpoint segment and on resume: the rate counts this epoch's frames only
        self.train_progress_bar.n = self.train_progress_bar.initial = pl_module.frames
        self.train_progress_bar.unit = "frames"
        self.train_progress_bar.set_description("Training")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.lines:
            due = self._last_line is None or self.clock() - self._last_line >= self.every_s
            if due and self._writes:
                self._write(self._line(trainer, pl_module))
            return
        bar = self.train_progress_bar
        bar.n = pl_module.frames
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k not in ("v_num", "frames")}
        bar.set_postfix(metrics, refresh=False)
        bar.refresh()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.lines and self._writes:
            self._write(self._line(trainer, pl_module, done=True))


# -- what the stack prints in every run ---------------------------------------------------------------------------
_TIP = "💡 Tip:"
"""Lightning's advertisements (litlogger, litmodels), logged at INFO by its rank-zero logger."""

KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # (message regex, category, module regex of the warning's origin)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
)
"""Harmless warnings of the pinned stack that every run prints, each silenced for its message *and* origin."""


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP)


def quiet_known_noise() -> None:
    """Drop Lightning's "💡 Tip" advertisements (a filter on the logger that prints them; its other INFO lines,
    e.g. "GPU available", stay) and :data:`KNOWN_WARNINGS`. Idempotent; nothing else is filtered."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning_utilities.core.rank_zero",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
