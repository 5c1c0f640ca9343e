"""A report's numbers from its runs (what ``results.json`` holds, before the sensitivity and the files): cells of runs
with their final metric, curve, IQM and absolute metric; each K > 1 cell relative to its K = 1 cells; and, through
:mod:`kpg_lightning.report_aggregate`, rliable's statistics over tasks. :mod:`kpg_lightning.report` writes them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kpg_lightning.report_runs import Run, absolute_values, by_seed, cell_names, variant_labels
from kpg_lightning.report_stats import iqm, iqm_ci, mean_curve, standard_error
from kpg_lightning.report_tables import relative_column

__all__ = ["summarise"]


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _cells(runs: Sequence[Run]) -> tuple[dict[tuple[str, str, int, str | None], dict[int, Run]], list[dict[str, str]]]:
    """Runs by cell ``(task, variant, K, actor optimizer)`` and seed; the same cell and seed twice: the newer."""
    labels = variant_labels(list(runs))
    return by_seed(runs, lambda r: (r.task, labels[r.path], r.k, r.actor_optimizer))


def _absolute(members: list[Run], metric: str) -> dict[str, Any] | None:
    """The absolute metric of a cell (every run has one), in the task's metric; None otherwise."""
    values = absolute_values(members, metric)
    if values is None:
        return None
    return {
        "values": values,
        "mean": float(np.mean(values)),
        "se": _clean(standard_error(values)),
        "iqm": iqm(values),
        "frames": [r.absolute["frames"] for r in members],  # type: ignore[index]
        "episodes": [r.absolute["episodes"] for r in members],  # type: ignore[index]
        "selected_by": sorted({str(r.absolute["metric"]) for r in members}),  # type: ignore[index]
    }


def summarise(
    runs: Sequence[Run],
    incomplete: Iterable[dict[str, Any]] = (),
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    aggregates: bool = True,
    compare: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """All the report's numbers (what ``results.json`` holds): cells, curves, relative improvements and, with
    ``aggregates``, rliable's statistics over tasks (:func:`kpg_lightning.report_aggregate.aggregate`).

    ``compare``: more ``(cell, baseline)`` pairs, by cell name (``POLA K=1``), for the probability of improvement
    (every K > 1 cell against its K = 1 cells is always there), e.g. a baseline algorithm against another."""
    tasks = sorted({r.task for r in runs})
    metric = {t: "win_rate" if all("win_rate" in r.finals for r in runs if r.task == t) else "return" for t in tasks}
    by_cell, duplicates = _cells(runs)
    names = cell_names([(variant, k, opt) for _, variant, k, opt in by_cell])
    all_seeds = {s for cell in by_cell.values() for s in cell}
    groups = []
    for (task, label, k, opt), members in sorted(by_cell.items(), key=lambda item: (*item[0][:3], str(item[0][3]))):
        seeds = sorted(members)
        runs_ = [members[s] for s in seeds]
        name = metric[task]
        values = [r.finals[name] for r in runs_]
        frames, mean, se = mean_curve([r.curves[name] for r in runs_])
        groups.append(
            {
                "task": task,
                "name": names[(label, k, opt)],
                "label": label,
                "algorithm": runs_[0].algorithm,
                "k": k,
                "actor_optimizer": opt,
                "metric": name,
                "n": len(seeds),
                "seeds": seeds,
                "missing_seeds": sorted(all_seeds - set(seeds)),
                "values": values,
                "mean": float(np.mean(values)),
                "se": _clean(standard_error(values)),
                "iqm": iqm(values),
                "iqm_ci": list(iqm_ci(values, resamples, confidence, seed)),
                "absolute": _absolute(runs_, name),
                "runs": [str(r.path) for r in runs_],
                "curve": {"frames": frames.tolist(), "mean": mean.tolist(), "se": se.tolist()},
                "run_curves": [[r.curves[name][0].tolist(), r.curves[name][1].tolist()] for r in runs_],
            }
        )
    relative = _relative(groups)
    known = list(dict.fromkeys(g["name"] for g in groups))
    for pair in compare:
        for name in pair:
            if name not in known:
                raise ValueError(f"--compare: no cell named {name!r}; the cells are {', '.join(map(repr, known))}")
        if pair[0] == pair[1]:
            raise ValueError(f"--compare: {pair[0]!r} against itself; name two different cells")
    results = {
        "metric_by_task": metric,
        "groups": groups,
        "relative": relative,
        "incomplete": list(incomplete),
        "duplicates": duplicates,
        "compare": [list(p) for p in compare],
        "bootstrap": {
            "method": "rliable stratified bootstrap, percentile CIs",
            "resamples": resamples,
            "confidence": confidence,
            "seed": seed,
        },
    }
    if aggregates:
        from kpg_lightning.report_aggregate import aggregate

        pairs = [(r["name"], r["baseline"]) for r in relative["rows"] if r["baseline"]]
        pairs = list(dict.fromkeys([*pairs, *(tuple(p) for p in compare)]))
        results["aggregate"] = aggregate(groups, metric, pairs, resamples, confidence, seed)
    return results


def _relative(groups: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """(mean_K − mean_K1) / |mean_K1| × 100 of each K > 1 cell over every K = 1 cell of the same variant and task
    (with different actor optimizers, each pairing is its own column), and the average over tasks; also the
    absolute difference and its standard error. A percentage of a K = 1 mean within one standard error of 0 (e.g.
    a return that crosses 0) is left out (``percent`` None, ``note`` says why): its size would be noise."""
    rows = []
    for g in (g for g in groups if g["k"] != 1):
        refs = [b for b in groups if b["k"] == 1 and (b["task"], b["label"]) == (g["task"], g["label"])]
        for ref in refs or [None]:
            k1 = ref["mean"] if ref else None
            ses = [x for x in (g["se"], ref["se"] if ref else None) if x is not None]
            diff = None if k1 is None else g["mean"] - k1
            note = None
            if ref is None:
                note = "no K = 1 run"
            elif k1 == 0 or (ref["se"] is not None and abs(k1) <= ref["se"]):
                note = "K = 1 mean within one s.e. of 0"
            rows.append(
                {
                    "task": g["task"],
                    "name": g["name"],
                    "baseline": ref["name"] if ref else None,
                    "label": g["label"],
                    "k": g["k"],
                    "k1_mean": k1,
                    "mean": g["mean"],
                    "percent": None if note else 100.0 * diff / abs(k1),  # type: ignore[operator]
                    "diff": diff,
                    "diff_se": float(math.sqrt(sum(x * x for x in ses))) if ref and ses else None,
                    "note": note,
                }
            )
    average: dict[str, float] = {}
    for column in dict.fromkeys(relative_column(r) for r in rows):
        values = [r["percent"] for r in rows if relative_column(r) == column and r["percent"] is not None]
        if values:
            average[column] = float(np.mean(values))
    return {"rows": rows, "average": average}
