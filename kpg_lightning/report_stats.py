"""Statistics of sweep reports. The aggregates and their confidence intervals are rliable's (Agarwal et al. 2021):
IQM, mean and optimality gap with stratified-bootstrap percentile CIs, probability of improvement, performance
profiles, and IQM curves over evaluation points; what rliable has nothing for is here: the standard error, mean
curves over seeds on a common frame grid, and per-task min–max normalisation.

rliable's bootstrap draws its indices from numpy's *global* random state (``np.random.choice``; its
``random_state`` argument does not reach them): every estimate here runs under :func:`seeded`, which seeds the
global state and restores the caller's afterwards, so the same scores, ``reps`` and ``seed`` give the same CIs.
rliable is imported on first use (the ``eval`` extra: ``pip install 'kpg-lightning[eval]'``).

The bootstrap resamples are rliable's; the statistics evaluated on each resample are rliable's definitions written
vectorised (:func:`fast_iqm` is ``metrics.aggregate_iqm``, :func:`fast_improvement` is
``metrics.probability_of_improvement``, :func:`fast_profile` is ``library.score_distributions``; tests check they
agree): rliable's own call scipy once per resample and
task (``trim_mean``, ``mannwhitneyu``), 20–50× slower, minutes for a 60-run report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "aggregate_estimates",
    "fast_improvement",
    "fast_iqm",
    "fast_profile",
    "iqm",
    "iqm_ci",
    "iqm_curve",
    "mean_curve",
    "min_max",
    "performance_profiles",
    "probability_of_improvement",
    "probability_of_improvement_over_tasks",
    "rliable",
    "seeded",
    "standard_error",
]

EXTRA = "pip install 'kpg-lightning[eval]'"


def rliable() -> tuple[Any, Any]:
    """``(rliable.library, rliable.metrics)``, or a one-line ModuleNotFoundError naming the extra."""
    try:
        from rliable import library, metrics
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"the report's statistics need rliable ({exc}): {EXTRA}") from None
    return library, metrics


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """numpy's global random state seeded with ``seed`` inside, the caller's restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def fast_iqm(scores: np.ndarray, axis: int | None = None) -> Any:
    """``scipy.stats.trim_mean(scores, 0.25, axis)`` (rliable's ``aggregate_iqm`` with ``axis=None``): sort, drop
    ``int(0.25 n)`` values at each end, average the rest."""
    x = np.sort(np.asarray(scores, dtype=float), axis=axis)
    if axis is None:
        axis = 0
    n = x.shape[axis]
    cut = int(0.25 * n)
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def fast_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's ``probability_of_improvement``: per task the Mann–Whitney U of X over Y / (n_X n_Y), i.e.
    P(X > Y) + P(X = Y) / 2 over all pairs of runs, averaged over tasks."""
    a, b = np.asarray(x, dtype=float)[:, None, :], np.asarray(y, dtype=float)[None, :, :]
    return float(((a > b).mean(axis=(0, 1)) + 0.5 * (a == b).mean(axis=(0, 1))).mean())


def fast_profile(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's score distribution: the fraction of all runs × tasks scores above each τ."""
    return (np.asarray(scores, dtype=float).reshape(-1, 1) > np.asarray(taus, dtype=float)).mean(axis=0)


def iqm(values: Any) -> float:
    """Interquartile mean over all values (rliable's ``aggregate_iqm``: scipy's ``trim_mean(x, 0.25)``, i.e.
    ``int(n / 4)`` values dropped at each end; the mean for fewer than 4 values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("iqm of no values")
    return float(fast_iqm(x))


def _estimates(
    scores: Mapping[str, Any], func: Callable[..., Any], reps: int, confidence: float, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    library, _ = rliable()
    with seeded(seed):
        return library.get_interval_estimates(
            dict(scores), func, reps=reps, confidence_interval_size=confidence, method="percentile"
        )


def iqm_ci(values: Sequence[float], reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of the IQM of one group's runs (rliable's stratified bootstrap, one task)."""
    x = np.asarray(values, dtype=float).reshape(-1, 1)
    if x.size == 0:
        raise ValueError("bootstrap of no values")
    _, cis = _estimates({"x": x}, lambda s: np.array([fast_iqm(s)]), reps, confidence, seed)
    low, high = np.asarray(cis["x"], dtype=float).reshape(2)
    return float(low), float(high)


def aggregate_estimates(
    scores: Mapping[str, np.ndarray], reps: int = 2000, confidence: float = 0.95, seed: int = 0, gamma: float = 1.0
) -> dict[str, dict[str, Any]]:
    """IQM, mean and optimality gap (threshold ``gamma``) of each ``(runs × tasks)`` score matrix, with
    stratified-bootstrap CIs: ``{name: {"iqm": x, "iqm_ci": [lo, hi], "mean": ..., "optimality_gap": ...}}``."""
    _, metrics = rliable()

    def func(s: np.ndarray) -> np.ndarray:
        return np.array([fast_iqm(s), metrics.aggregate_mean(s), metrics.aggregate_optimality_gap(s, gamma)])

    points, cis = _estimates(scores, func, reps, confidence, seed)
    out = {}
    for name in scores:
        ci = np.asarray(cis[name], dtype=float)
        out[name] = {key: float(points[name][i]) for i, key in enumerate(("iqm", "mean", "optimality_gap"))} | {
            f"{key}_ci": ci[:, i].tolist() for i, key in enumerate(("iqm", "mean", "optimality_gap"))
        }
    return out


def probability_of_improvement(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """P(X > Y) averaged over tasks for each ``(X, Y)`` pair of ``(runs × tasks)`` matrices (same tasks, any
    numbers of runs), with CIs from rliable's stratified independent bootstrap: ``{key: {"p": p, "ci": [lo, hi]}}``."""
    points, cis = _estimates({key: [x, y] for key, (x, y) in pairs.items()}, fast_improvement, reps, confidence, seed)
    return {
        key: {"p": float(points[key]), "ci": np.asarray(cis[key], dtype=float).reshape(2).tolist()} for key in pairs
    }


def probability_of_improvement_over_tasks(
    xs: Sequence[Any], ys: Sequence[Any], reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """P(X > Y) averaged over tasks where the tasks have different numbers of runs (``xs[t]``, ``ys[t]``: task t's
    scores of X and of Y), every run used: the point is the mean of the per-task :func:`fast_improvement`, its CI the
    percentile interval of that mean over ``reps`` stratified bootstrap resamples (each task's X runs and Y runs
    resampled with replacement on their own, as rliable's ``StratifiedIndependentBootstrap`` does for equal numbers;
    the draws are numpy's, seeded). ``{"p": p, "ci": [lo, hi]}``."""
    tasks = [
        (np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()) for x, y in zip(xs, ys, strict=True)
    ]
    if not tasks or any(x.size == 0 or y.size == 0 for x, y in tasks):
        raise ValueError("probability of improvement over tasks: every task needs runs of both cells")

    def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # P(a > b) + P(a = b) / 2 over the last two axes
        return (a > b).mean(axis=(-2, -1)) + 0.5 * (a == b).mean(axis=(-2, -1))

    point = float(np.mean([pairwise(x[:, None], y[None, :]) for x, y in tasks]))
    draws = np.zeros(reps)
    rng = np.random.default_rng(seed)
    for x, y in tasks:
        rx, ry = x[rng.integers(0, x.size, (reps, x.size))], y[rng.integers(0, y.size, (reps, y.size))]
        draws += pairwise(rx[:, :, None], ry[:, None, :])
    draws /= len(tasks)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"p": point, "ci": [float(low), float(high)]}


def performance_profiles(
    scores: Mapping[str, np.ndarray], taus: np.ndarray, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's score-distribution performance profiles (fraction of runs above each τ) with CIs."""
    library, _ = rliable()
    with seeded(seed):
        return library.create_performance_profile(
            dict(scores), taus, custom_profile_func=fast_profile, reps=reps, confidence_interval_size=confidence
        )


def iqm_curve(
    scores: Mapping[str, np.ndarray], reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, dict[str, list[float]]]:
    """IQM over runs × tasks at each evaluation point of ``(runs × tasks × points)`` arrays, with CIs (rliable's
    sample-efficiency recipe): ``{name: {"iqm": [...], "low": [...], "high": [...]}}``."""

    def func(s: np.ndarray) -> np.ndarray:
        return fast_iqm(s.reshape(-1, s.shape[-1]), axis=0)  # aggregate_iqm(s[..., t]) for every point t

    points, cis = _estimates(scores, func, reps, confidence, seed)
    return {
        name: {"iqm": np.asarray(points[name]).tolist(), "low": cis[name][0].tolist(), "high": cis[name][1].tolist()}
        for name in scores
    }


def min_max(values: Sequence[float]) -> tuple[float, float]:
    """The (min, max) reference of a task's min–max normalisation; a task whose values are all equal gets
    ``(v - 1, v)`` (normalised to 1, not divided by zero)."""
    low, high = float(np.min(values)), float(np.max(values))
    return (low, high) if high > low else (high - 1.0, high)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (sample std with ddof=1 over √n); NaN for fewer than two values."""
    x = np.asarray(values, dtype=float)
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan


def common_grid(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``(frames, runs × frames values)``: runs evaluated at the same frames as they are; otherwise each run
    interpolated onto the union of their frames, cut to the span every run covers (up to the shortest run)."""
    grids = [np.asarray(f, dtype=float) for f, _ in series]
    if all(g.shape == grids[0].shape and np.array_equal(g, grids[0]) for g in grids):
        return grids[0], np.stack([np.asarray(v, dtype=float) for _, v in series])
    grid = np.unique(np.concatenate(grids))
    grid = grid[(grid >= max(g[0] for g in grids)) & (grid <= min(g[-1] for g in grids))]
    return grid, np.stack(
        [np.interp(grid, g, np.asarray(v, dtype=float)) for g, (_, v) in zip(grids, series, strict=True)]
    )


def mean_curve(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard error over runs of ``(frames, values)`` curves on their :func:`common_grid`."""
    grid, ys = common_grid(series)
    se = ys.std(axis=0, ddof=1) / math.sqrt(len(ys)) if len(ys) > 1 else np.zeros_like(grid)
    return grid, ys.mean(axis=0), se
