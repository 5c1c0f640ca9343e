"""Live convergence diagnostics of the K-level recursion (Theorem 4.2's contraction, measured in deep runs)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from kpg_lightning.kpg import KLevelStats
from kpg_lightning.metrics import log_at_frames

__all__ = ["KPGDiagnostics", "mean_level_stats"]


def mean_level_stats(stats: list[KLevelStats]) -> dict[str, float]:
    """Means over updates of ‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖, its contraction ratio, the objective per level and levels run."""
    sums: dict[str, list[float]] = defaultdict(list)
    for s in stats:
        sums["levels_run"].append(s.levels_run)
        for level, (delta, objective) in enumerate(zip(s.level_delta, s.objective, strict=True), start=1):
            sums[f"level_delta_{level}"].append(delta)
            sums[f"objective_{level}"].append(objective)
        for level, ratio in enumerate(s.contraction, start=2):
            if not math.isnan(ratio):
                sums[f"contraction_{level}"].append(ratio)
    return {key: sum(values) / len(values) for key, values in sums.items() if values}


class KPGDiagnostics(Callback):
    """Logs ``kpg/level_delta_k``, ``kpg/contraction_k`` (‖θ⁽ᵏ⁾−θ⁽ᵏ⁻¹⁾‖ / ‖θ⁽ᵏ⁻¹⁾−θ⁽ᵏ⁻²⁾‖),
    ``kpg/objective_k`` and ``kpg/levels_run`` every ``every_n_steps`` training steps, averaged over the step's
    updates; :meth:`summary` gives the run's means for ``summary.json``.
    """

    def __init__(self, every_n_steps: int = 1):
        if every_n_steps < 1:
            raise ValueError(f"callbacks.kpg_diagnostics.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._steps = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        means = mean_level_stats(pl_module.record.levels)
        for key, value in means.items():
            self.totals[key] += value
            self.counts[key] += 1
        self._steps += 1
        if means and self._steps % self.every_n_steps == 0:
            log_at_frames(pl_module, {f"kpg/{key}": value for key, value in means.items()}, pl_module.frames)

    def summary(self) -> dict[str, Any]:
        means = {key: self.totals[key] / self.counts[key] for key in self.totals}

        def per_level(prefix: str) -> list[float]:
            levels = sorted(int(k.rsplit("_", 1)[1]) for k in means if k.startswith(prefix))
            return [means[f"{prefix}{level}"] for level in levels]

        return {
            "level_delta_mean": per_level("level_delta_"),
            "contraction_mean": per_level("contraction_"),
            "objective_mean": per_level("objective_"),
            "levels_run_mean": means.get("levels_run"),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"totals": dict(self.totals), "counts": dict(self.counts), "steps": self._steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.totals = defaultdict(float, state_dict.get("totals", {}))
        self.counts = defaultdict(int, state_dict.get("counts", {}))
        self._steps = state_dict.get("steps", 0)
