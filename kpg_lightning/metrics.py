"""Metrics logged against environment frames, averaged over data-parallel ranks."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule

__all__ = ["log_at_frames", "mean_over_ranks"]


def mean_over_ranks(module: LightningModule, metrics: dict[str, float]) -> dict[str, float]:
    """Mean of each metric over data-parallel ranks (a metric missing on a rank is left out of its mean).

    Collective: every rank calls it at the same point."""
    world = module.trainer.world_size if module._trainer is not None else 1
    if world == 1:
        return metrics
    import torch.distributed as dist

    gathered: list[list[str] | None] = [None] * world
    dist.all_gather_object(gathered, sorted(metrics))
    keys = sorted(set().union(*gathered))
    values = torch.tensor([[float(metrics.get(k, float("nan"))) for k in keys]], dtype=torch.float64)
    values = module.trainer.strategy.all_gather(values.to(module.device)).reshape(world, len(keys))
    return dict(zip(keys, values.nanmean(dim=0).tolist(), strict=True))


def log_at_frames(module: LightningModule, metrics: dict[str, float], frames: int) -> None:
    """Write metrics (averaged over ranks) to every logger of ``module`` with ``frames`` as the step. Collective."""
    metrics = mean_over_ranks(module, metrics)
    for logger in module.loggers:
        logger.log_metrics(metrics, step=frames)
