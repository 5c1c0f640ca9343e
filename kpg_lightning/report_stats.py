"""Statistics of sweep reports: the IQM (Agarwal et al. 2021; scipy's ``trim_mean(x, 0.25)`` convention, as in
rliable), a seeded percentile bootstrap, the standard error, and mean curves over seeds."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["bootstrap_ci", "iqm", "mean_curve", "standard_error"]


def iqm(values: Any, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean along ``axis``: drop the ``int(n / 4)`` lowest and highest values, average the rest."""
    x = np.sort(np.asarray(values, dtype=float), axis=axis)
    n = x.shape[axis]
    if n == 0:
        raise ValueError("iqm of no values")
    cut = int(0.25 * n)
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[..., Any] = iqm,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``statistic`` (called with ``axis=-1``) over the runs.

    Resamples the runs with replacement ``resamples`` times from ``numpy.random.default_rng(seed)``: the same
    values and seed always give the same interval.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap of no values")
    rng = np.random.default_rng(seed)
    stats = statistic(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=-1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return float(low), float(high)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (sample std with ddof=1 over √n); NaN for fewer than two values."""
    x = np.asarray(values, dtype=float)
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan


def mean_curve(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard error over runs of ``(frames, values)`` curves.

    Runs evaluated at the same frames are averaged point by point; otherwise each is interpolated onto the union of
    their frames, cut to the span every run covers (up to the shortest run).
    """
    grids = [np.asarray(f, dtype=float) for f, _ in series]
    if all(g.shape == grids[0].shape and np.array_equal(g, grids[0]) for g in grids):
        grid, ys = grids[0], np.stack([np.asarray(v, dtype=float) for _, v in series])
    else:
        grid = np.unique(np.concatenate(grids))
        grid = grid[(grid >= max(g[0] for g in grids)) & (grid <= min(g[-1] for g in grids))]
        ys = np.stack([np.interp(grid, g, np.asarray(v, dtype=float)) for g, (_, v) in zip(grids, series, strict=True)])
    se = ys.std(axis=0, ddof=1) / math.sqrt(len(ys)) if len(ys) > 1 else np.zeros_like(grid)
    return grid, ys.mean(axis=0), se


# -- finding runs --------------------------------------------------------------------------------------------------
