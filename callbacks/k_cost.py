"""Wall-clock cost of K: each training step split into collection, critic, every K level and the rest."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from kpg_lightning.metrics import log_at_frames

__all__ = ["KCostCallback"]


class KCostCallback(Callback):
    """Logs ``time/<phase>_s`` per training step and summarises the means at the end (the paper's Table 2, live).

    Phases: ``collect`` (environment frames), ``critic`` (critic/mixer steps), ``level_k`` (the k-th actor level,
    including the outputs it hands the next level) and ``rest`` (replay, targets, logging, weight sync); a compiled
    update (``compile=default|cudagraphs``) is one ``update`` phase instead of ``critic`` and the levels.
    Reads the module's per-step record (on a GPU the module synchronizes around each phase: ``time_levels``).
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = 0
        self._start = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        phases = dict(pl_module.record.timing)
        step = phases.get("collect", 0.0) + time.perf_counter() - self._start
        phases["rest"] = max(0.0, step - sum(phases.values()))
        phases["step"] = step
        for key, value in phases.items():
            self.totals[key] += value
        self.steps += 1
        log_at_frames(pl_module, {f"time/{key}_s": value for key, value in phases.items()}, pl_module.frames)

    def summary(self) -> dict[str, Any]:
        """Mean seconds per training step of each phase, and the share of the step each level takes."""
        if not self.steps:
            return {}
        means = {key: value / self.steps for key, value in self.totals.items()}
        levels = sorted((k for k in means if k.startswith("level_")), key=lambda k: int(k.split("_")[1]))
        return {
            "time_per_step_s": means["step"],
            "phases_s": {k: means[k] for k in ("collect", "critic", *levels, "update", "rest") if k in means},
            "level_share": {k: means[k] / means["step"] for k in levels},
            "steps": self.steps,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"totals": dict(self.totals), "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.totals = defaultdict(float, state_dict.get("totals", {}))
        self.steps = state_dict.get("steps", 0)
