"""Sensitivity of a sweep to one numeric setting: ``python -m kpg_lightning.report DIR --axis KEY [--axis-metric
NAME ...]``.

``KEY`` is a dotted config key (``algorithm.actor_lr``) read from each run's ``.hydra/config.yaml``. Runs are grouped
into lines, (task, algorithm variant without ``KEY``, K, actor optimizer), named like the report's cells
(:func:`kpg_lightning.report_runs.cell_names`), and within a line into points by their ``KEY`` value; a point is the
mean ± standard error over its seeds of the task's final metric (the last greedy evaluation: return, or win rate
where the env reports wins) and of each ``--axis-metric``: a column of the run's ``csv/metrics.csv`` (e.g.
``kpg/contraction_2``) summarised per run by :func:`late_half_mean`. A run without that metric is listed, never
dropped silently; a line none of whose runs logs it (K = 1 has no contraction) has no numbers for it.

With ``--axis-threshold TASK=VALUE`` a point also counts its runs whose final metric exceeds ``VALUE`` ("runs that
train", where a diverged run ends far below it), with an exact (Clopper–Pearson) CI, and a K > 1 point gets
Fisher's exact test against the K = 1 point of the same variant, optimizer and value: whether K changes how often
a run trains at that setting.

Each K > 1 line is also compared with the K = 1 line of its variant and optimizer over every value both were run
at (``pooled``): the probability that a run of the K > 1 line scores higher than a run of the K = 1 line at the same
value (Mann–Whitney U / (n_X n_Y), ties counted half), averaged over the values, per task and over every (task,
value) setting, with a stratified-bootstrap CI (each setting's runs of each line resampled on their own,
:func:`kpg_lightning.report_stats.probability_of_improvement_over_tasks`). It is one number for "does K help at
this grid", where a row per value has too few seeds to say; on the final metric, and on the absolute metric where
every run compared has one. A per-value comparison is improvement.md's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from kpg_lightning.config import is_number
from kpg_lightning.errors import ConfigError
from kpg_lightning.report_runs import Run, absolute_values, by_seed, cell_names, csv_curve, variant_labels
from kpg_lightning.report_stats import probability_of_improvement_over_tasks, standard_error

__all__ = ["LATE_HALF", "axis_value", "late_half_mean", "log_axis", "parse_thresholds", "pooled", "sensitivity"]

LATE_HALF = "mean over the last half of each run's logged values (the last ⌈n/2⌉ of n, NaN skipped)"
"""How an ``--axis-metric`` is summarised per run, as the tables say it."""

_ABSENT = object()


def axis_value(run_dir: Path, key: str) -> float:
    """The value of the dotted ``key`` in ``run_dir/.hydra/config.yaml``; ConfigError (one line naming the key and
    the run) where the run has no config, no such key, or a value that is not a finite number."""
    where = f"--axis {key}: run {run_dir}"
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{where} has no .hydra/config.yaml to read the key from")
    try:
        value = OmegaConf.select(OmegaConf.load(path), key, default=_ABSENT, throw_on_missing=True)
    except Exception as exc:  # an unresolvable interpolation, a ??? value
        raise ConfigError(f"{where}: cannot read it ({str(exc).splitlines()[0]})") from exc
    if value is _ABSENT:
        raise ConfigError(f"{where} has no such key in .hydra/config.yaml")
    if not is_number(value):
        shown = repr(value) if len(repr(value)) <= 60 else f"a {type(value).__name__}"
        raise ConfigError(f"{where}: {shown} is not a number (the axis must be a finite int or float setting)")
    return float(value)


def late_half_mean(run_dir: Path, column: str) -> tuple[float | None, str | None]:
    """``(mean, None)``: the mean of the last ⌈n/2⌉ of the n values ``column`` has in ``run_dir/csv/metrics.csv``
    (in frame order, the last value per frame count), NaN values skipped; ``(None, reason)`` where there is none."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None, "no csv/metrics.csv"
    curve = csv_curve(path, column)
    if curve is None:
        return None, "not logged"
    values = curve[1]
    late = values[len(values) // 2 :]
    late = late[np.isfinite(late)]
    return (float(late.mean()), None) if late.size else (None, "only NaN in the last half")


def parse_thresholds(items: Sequence[str], tasks: Sequence[str]) -> dict[str, float]:
    """``{task: value}`` from ``TASK=VALUE`` strings; ConfigError (one line) for a malformed item, a task none of
    the runs has (the message lists theirs), a value that is not a finite number, or a task given twice."""
    out: dict[str, float] = {}
    for item in items:
        task, sep, text = item.rpartition("=")
        if not sep or not task:
            raise ConfigError(f"--axis-threshold {item!r}: expected TASK=VALUE, e.g. vmas/navigation=0")
        if task not in tasks:
            raise ConfigError(f"--axis-threshold {item!r}: no run of task {task!r}; the tasks are {', '.join(tasks)}")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"--axis-threshold {item!r}: {text!r} is not a finite number")
        if task in out:
            raise ConfigError(f"--axis-threshold {item!r}: {task} given twice")
        out[task] = value
    return out


def _above(finals: list[float], threshold: float, confidence: float) -> dict[str, Any]:
    from scipy.stats import binomtest

    count, n = sum(v > threshold for v in finals), len(finals)
    ci = binomtest(count, n).proportion_ci(confidence, method="exact")
    return {"threshold": threshold, "count": int(count), "n": n, "ci": [float(ci.low), float(ci.high)]}


def _fisher(point: dict[str, Any], base: dict[str, Any]) -> float:
    from scipy.stats import fisher_exact

    table = [[point["count"], point["n"] - point["count"]], [base["count"], base["n"] - base["count"]]]
    return float(fisher_exact(table).pvalue)


def log_axis(values: Sequence[float]) -> bool:
    """A logarithmic x axis: every value positive and the largest at least 4 × the smallest."""
    return bool(values) and min(values) > 0 and max(values) >= 4 * min(values)


def _stats(values: list[float]) -> dict[str, Any]:
    se = standard_error(values) if values else math.nan
    return {
        "n": len(values),
        "values": values,
        "mean": float(np.mean(values)) if values else None,
        "se": se if math.isfinite(se) else None,
    }


def sensitivity(
    runs: Sequence[Run],
    key: str,
    metrics: Sequence[str],
    metric_by_task: dict[str, str],
    thresholds: dict[str, float] | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``sensitivity`` entry of ``results.json``: per task its lines, each with one point per ``key`` value
    (sorted): seeds, runs, the final metric's and every ``metrics`` column's statistics over the seeds, and the runs
    without a column; for a task in ``thresholds``, each point's count of runs above it (``above``: count, n,
    exact ``confidence`` CI and, at K > 1, Fisher's exact p against the K = 1 point of its variant, optimizer and
    value where there is one); ``pooled``: each K > 1 line against its K = 1 line over every value (:func:`pooled`,
    ``resamples`` bootstrap draws seeded with ``seed``). The same line, value and seed twice: the newer run (by
    ``summary.json``'s mtime), listed in ``duplicates``. Raises ConfigError where a run has no numeric ``key``."""
    thresholds = thresholds or {}
    values = {r.path: axis_value(r.path, key) for r in runs}
    without = [replace(r, overrides={k: v for k, v in r.overrides.items() if k != key}) for r in runs]
    labels = variant_labels(without)
    groups, duplicates = by_seed(runs, lambda r: (r.task, labels[r.path], r.k, r.actor_optimizer, values[r.path]))
    cells: dict[tuple[str, str, int, str | None], dict[float, dict[int, Run]]] = {}
    for (task, label, k, opt, value), point in groups.items():
        cells.setdefault((task, label, k, opt), {})[value] = point
    names = cell_names(list(dict.fromkeys((label, k, opt) for _, label, k, opt in cells)))
    tasks: dict[str, dict[str, Any]] = {}
    for (task, label, k, opt), points in sorted(cells.items(), key=lambda item: (*item[0][:3], str(item[0][3]))):
        final = metric_by_task[task]
        line: dict[str, Any] = {"name": names[(label, k, opt)], "label": label, "k": k, "actor_optimizer": opt}
        line |= {"points": [], "has_metric": {}}
        for value in sorted(points):
            members = [points[value][seed] for seed in sorted(points[value])]
            point = {
                "value": value,
                "seeds": [r.seed for r in members],
                "runs": [str(r.path) for r in members],
                "final": _stats([r.finals[final] for r in members]),
                "absolute": absolute_values(members, final),
                "metrics": {},
            }
            if task in thresholds:
                point["above"] = _above([r.finals[final] for r in members], thresholds[task], confidence)
            for metric in metrics:
                summaries = [(r, *late_half_mean(r.path, metric)) for r in members]
                stats = _stats([m for _, m, _ in summaries if m is not None])
                stats["missing"] = [{"path": str(r.path), "reason": why} for r, m, why in summaries if m is None]
                point["metrics"][metric] = stats
            line["points"].append(point)
        for metric in metrics:  # logged by some run of the line (K = 1 logs no contraction: False)
            line["has_metric"][metric] = any(p["metrics"][metric]["n"] for p in line["points"])
        entry = tasks.setdefault(task, {"metric": final, "lines": []})
        entry["lines"].append(line)
    for task, entry in tasks.items():
        entry["log_x"] = log_axis([p["value"] for line in entry["lines"] for p in line["points"]])
        if task not in thresholds:
            continue
        entry["threshold"] = thresholds[task]
        k1 = {(ln["label"], ln["actor_optimizer"]): ln for ln in entry["lines"] if ln["k"] == 1}
        for line in entry["lines"]:
            base = k1.get((line["label"], line["actor_optimizer"]))
            if line["k"] == 1 or base is None:
                continue
            base_points = {p["value"]: p["above"] for p in base["points"]}
            for p in line["points"]:
                if p["value"] in base_points:
                    p["above"]["fisher_p_vs_k1"] = _fisher(p["above"], base_points[p["value"]])
    return {
        "key": key,
        "metrics": list(metrics),
        "summary": LATE_HALF,
        "confidence": confidence,
        "tasks": tasks,
        "pooled": pooled(tasks, resamples, confidence, seed),
        "duplicates": duplicates,
    }


def pooled(tasks: dict[str, dict[str, Any]], resamples: int, confidence: float, seed: int) -> list[dict[str, Any]]:
    """Per K > 1 line name: P(a run of it > a run of its K = 1 line at the same value), averaged over every value
    both lines have, per task and over every (task, value) setting ("all tasks"), on the final metric and on the
    absolute metric (where every run of those settings has one, else None). Each estimate: ``p``, ``ci``,
    ``settings`` (how many values it averages), ``runs`` (of the line and of K = 1) and ``single_run_settings``
    (settings where a line has one run: the bootstrap cannot vary them, so the CI understates the uncertainty)."""
    strata: dict[tuple[str, str], dict[str, list[tuple[dict, dict]]]] = {}  # (line, K = 1 line) -> task -> pairs
    for task, entry in tasks.items():
        k1 = {(ln["label"], ln["actor_optimizer"]): ln for ln in entry["lines"] if ln["k"] == 1}
        for line in entry["lines"]:
            base = k1.get((line["label"], line["actor_optimizer"]))
            if line["k"] == 1 or base is None:
                continue
            base_points = {p["value"]: p for p in base["points"]}
            pairs = [(p, base_points[p["value"]]) for p in line["points"] if p["value"] in base_points]
            if pairs:
                strata.setdefault((line["name"], base["name"]), {})[task] = pairs

    def estimate(pairs: list[tuple[dict, dict]], key: str) -> dict[str, Any] | None:
        xs = [p["final"]["values"] if key == "final" else p["absolute"] for p, _ in pairs]
        ys = [b["final"]["values"] if key == "final" else b["absolute"] for _, b in pairs]
        if any(v is None for v in (*xs, *ys)):
            return None
        found = probability_of_improvement_over_tasks(xs, ys, resamples, confidence, seed)
        runs = [sum(len(x) for x in xs), sum(len(y) for y in ys)]
        single = sum(min(len(x), len(y)) < 2 for x, y in zip(xs, ys, strict=True))
        return {**found, "settings": len(pairs), "runs": runs, "single_run_settings": single}

    out = []
    for (name, base), by_task in strata.items():
        subsets = dict(by_task)
        if len(by_task) > 1:
            subsets["all tasks"] = [p for ps in by_task.values() for p in ps]
        row: dict[str, Any] = {"name": name, "baseline": base, "tasks": list(by_task)}
        for key in ("final", "absolute"):
            row[key] = {subset: estimate(pairs, key) for subset, pairs in subsets.items()}
        out.append(row)
    return out
