"""rliable's aggregate statistics of a sweep report, across tasks on normalised scores.

Normalisation (per task, stated in ``aggregate.md``): a return is min–max normalised with the lowest and highest
evaluation mean of *any* run of that task in the report (every evaluation point and absolute metric), so 0 is the
worst and 1 the best evaluation anyone in the report reached; a win rate is already in [0, 1] and is used as it
is. Scores are therefore relative to the report's runs: adding runs can change them. The optimality gap's
threshold is 1 on these scores.

Score matrices are ``(runs × tasks)`` per cell name, over the tasks the cell was run on; where a cell has
different numbers of runs on its tasks, the lowest seeds up to the smallest number are used (``runs_dropped``
says which were left out). The probability of improvement over such tasks uses every run instead
(:func:`kpg_lightning.report_stats.probability_of_improvement_over_tasks`). Groups come from
:func:`kpg_lightning.report_summary.summarise`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kpg_lightning.report_stats import (
    aggregate_estimates,
    common_grid,
    iqm_curve,
    min_max,
    performance_profiles,
    probability_of_improvement,
    probability_of_improvement_over_tasks,
)

__all__ = ["TAUS", "aggregate", "normalisation"]

TAUS = np.linspace(0.0, 1.0, 101)
"""Thresholds of the performance profiles (normalised score τ)."""


def normalisation(groups: Sequence[dict[str, Any]], metric_by_task: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``{task: {"metric", "min", "max", "reference"}}``: the affine map of each task's scores onto [0, 1]."""
    out = {}
    for task, metric in metric_by_task.items():
        if metric == "win_rate":
            out[task] = {"metric": metric, "min": 0.0, "max": 1.0, "reference": "win rate, not rescaled"}
            continue
        values = [v for g in groups if g["task"] == task for _, curve in g["run_curves"] for v in curve]
        values += [v for g in groups if g["task"] == task for v in (g["absolute"] or {}).get("values", [])]
        low, high = min_max(values)
        out[task] = {"metric": metric, "min": low, "max": high, "reference": "min–max over the report's runs"}
    return out


def _scale(x: Any, norm: dict[str, Any]) -> np.ndarray:
    return (np.asarray(x, dtype=float) - norm["min"]) / (norm["max"] - norm["min"])


def _cells(groups: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    cells: dict[str, list[dict[str, Any]]] = {}
    for g in groups:
        cells.setdefault(g["name"], []).append(g)
    return cells


def _matrix(members: list[dict[str, Any]], norms: dict[str, Any], key: str) -> tuple[np.ndarray, list[str]]:
    """``(runs × tasks)`` normalised scores of one cell and the runs left out to make it rectangular."""
    n = min(g["n"] for g in members)
    dropped = [f"{g['task']} seed {s}" for g in members for s in g["seeds"][n:]]
    values = [g["values"] if key == "final" else g["absolute"]["values"] for g in members]
    return np.stack([_scale(v[:n], norms[g["task"]]) for g, v in zip(members, values, strict=True)], axis=1), dropped


def _curves(members: list[dict[str, Any]], norms: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(frames, runs × tasks × points)`` normalised evaluation curves on a common frame grid, or None."""
    n = min(g["n"] for g in members)
    series = [(f, _scale(v, norms[g["task"]])) for g in members for f, v in g["run_curves"][:n]]
    frames, ys = common_grid([(np.asarray(f, dtype=float), v) for f, v in series])
    if frames.size == 0:
        return None
    return frames, ys.reshape(len(members), n, -1).transpose(1, 0, 2)


def _improvements(
    cells: dict[str, list[dict[str, Any]]],
    pairs: Sequence[tuple[str, str]],
    norms: dict[str, Any],
    key: str,
    reps: int,
    confidence: float,
    seed: int,
) -> list[dict[str, Any]]:
    """P(X > Y) of each ``(X, Y)`` pair on ``key``'s scores ("final": the last evaluation; "absolute": the
    absolute metric, on the tasks where every run of both cells has one), per common task and over all of them."""
    rows = []
    for name, base in pairs:
        x, y = {g["task"]: g for g in cells[name]}, {g["task"]: g for g in cells[base]}
        tasks = [t for t in x if t in y and (key == "final" or (x[t]["absolute"] and y[t]["absolute"]))]
        if not tasks:
            continue
        subsets = {t: [t] for t in tasks} | ({"all tasks": tasks} if len(tasks) > 1 else {})

        def matrix(cell: dict[str, Any], ts: list[str]) -> np.ndarray:
            return _matrix([cell[t] for t in ts], norms, key)[0]

        ragged = len({x[t]["n"] for t in tasks}) > 1 or len({y[t]["n"] for t in tasks}) > 1
        rectangular = {k: ts for k, ts in subsets.items() if not (ragged and k == "all tasks")}
        estimates = probability_of_improvement(
            {k: (matrix(x, ts), matrix(y, ts)) for k, ts in rectangular.items()}, reps, confidence, seed
        )
        if ragged and "all tasks" in subsets:  # every run of every task, not the lowest seeds up to the fewest
            xs, ys = ([matrix(cell, [t])[:, 0] for t in tasks] for cell in (x, y))
            estimates["all tasks"] = probability_of_improvement_over_tasks(xs, ys, reps, confidence, seed)
        row = {"name": name, "baseline": base, "tasks": tasks, "by_tasks": estimates}
        if ragged:
            row["runs"] = {t: [x[t]["n"], y[t]["n"]] for t in tasks}
        rows.append(row)
    return rows


def aggregate(
    groups: Sequence[dict[str, Any]],
    metric_by_task: dict[str, str],
    pairs: Sequence[tuple[str, str]],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Every rliable number of the report: the normalisation, aggregate IQM / mean / optimality gap of the last
    evaluation (and of the absolute metric where every run of a cell has one), probability of improvement of
    each ``(cell, baseline)`` pair per task and over their common tasks (on the last evaluation, and on the
    absolute metric where both cells have it), performance profiles and IQM curves."""
    norms = normalisation(groups, metric_by_task)
    cells = _cells(groups)
    out: dict[str, Any] = {"normalisation": norms, "reps": reps, "confidence": confidence, "seed": seed, "gamma": 1.0}
    scores = {}
    for key in ("final", "absolute"):
        chosen = {n: m for n, m in cells.items() if key == "final" or all(g["absolute"] for g in m)}
        matrices = {name: _matrix(members, norms, key) for name, members in chosen.items()}
        if not matrices:
            continue
        scores[key] = {name: m for name, (m, _) in matrices.items()}
        stats = aggregate_estimates(scores[key], reps, confidence, seed)
        out[key] = [
            {
                "name": name,
                "tasks": [g["task"] for g in chosen[name]],
                "runs_per_task": int(scores[key][name].shape[0]),
                "runs_dropped": matrices[name][1],
                **stats[name],
            }
            for name in chosen
        ]
    for key in ("final", "absolute"):
        out["improvement" if key == "final" else "improvement_absolute"] = _improvements(
            cells, pairs, norms, key, reps, confidence, seed
        )
    profiles, cis = performance_profiles(scores["final"], TAUS, reps, confidence, seed)
    out["profiles"] = {
        "taus": TAUS.tolist(),
        "profiles": {n: np.asarray(p).tolist() for n, p in profiles.items()},
        "cis": {n: np.asarray(c).tolist() for n, c in cis.items()},
    }
    curves, skipped = {}, []
    for name, members in cells.items():
        found = _curves(members, norms)
        if found is None:
            skipped.append(f"{name}: its tasks' evaluations cover no common frames")
        else:
            curves[name] = found
    estimates = iqm_curve({n: ys for n, (_, ys) in curves.items()}, reps, confidence, seed) if curves else {}
    out["sample_efficiency"] = {
        "curves": {n: {"frames": curves[n][0].tolist(), **estimates[n]} for n in curves},
        "skipped": skipped,
    }
    return out
