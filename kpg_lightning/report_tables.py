"""The markdown tables of sweep reports (``final.md``, ``relative.md``), from :func:`kpg_lightning.report.summarise`'s
results."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["METRIC_NAMES", "final_table", "fmt", "relative_table"]

METRIC_NAMES = {"return": "greedy evaluation return", "win_rate": "greedy evaluation win rate"}


def fmt(x: float | None, like: float | None = None) -> str:
    """Four significant digits without exponent (``-1.626``, ``3457``, ``0.01230``); ``—`` for no value.

    With ``like``, as many decimals as ``like`` gets (a standard error next to its mean: ``-1.867 ± 0.037``).
    """
    if x is None or not math.isfinite(x):
        return "—"
    ref = x if like is None or not math.isfinite(like) else like
    digits = 3 if ref == 0 else max(0, 3 - math.floor(math.log10(abs(ref))))
    return f"{x:.{digits}f}"


def final_table(results: dict[str, Any]) -> str:
    """``final.md``: one table per task, a row per (variant, K), then the incomplete and duplicate runs."""
    b = results["bootstrap"]
    lines = [
        "# Final performance",
        "",
        f"Last greedy evaluation of each run. Over seeds: mean ± standard error, IQM (interquartile mean) and "
        f"its {b['confidence']:.0%} percentile-bootstrap CI ({b['resamples']} resamples, seed {b['seed']}).",
        "",
    ]
    for task, metric in results["metric_by_task"].items():
        lines += [
            f"## {task}: final {METRIC_NAMES[metric]}",
            "",
            "| algorithm | K | seeds | mean ± s.e. | IQM | IQM 95% CI | missing seeds |",
            "|---|---:|---:|---|---:|---|---|",
        ]
        for g in (g for g in results["groups"] if g["task"] == task):
            low, high = g["iqm_ci"]
            missing = ", ".join(map(str, g["missing_seeds"])) or "none"
            lines.append(
                f"| {g['label']} | {g['k']} | {g['n']} | {fmt(g['mean'])} ± {fmt(g['se'], g['mean'])} | "
                f"{fmt(g['iqm'])} | [{fmt(low)}, {fmt(high)}] | {missing} |"
            )
        lines.append("")
    if results["incomplete"]:
        lines += [
            "## Incomplete runs",
            "",
            "| run | algorithm | task | K | seed | reason |",
            "|---|---|---|---:|---:|---|",
        ]
        lines += [
            f"| `{r['path']}` | {r['algorithm']} | {r['task']} | {r['k']} | {r['seed']} | {r['reason']} |"
            for r in results["incomplete"]
        ]
        lines.append("")
    if results["duplicates"]:
        lines += ["## Duplicate runs (same configuration and seed; the newer one is used)", ""]
        lines += [f"- `{d['path']}` (replaced by `{d['replaced_by']}`)" for d in results["duplicates"]] + [""]
    return "\n".join(lines)


def relative_table(results: dict[str, Any]) -> str:
    """``relative.md``: tasks as rows, each (variant, K > 1) as a column, % improvement over K = 1."""
    rel = results["relative"]
    columns = list(dict.fromkeys(f"{r['label']} K={r['k']}" for r in rel["rows"]))
    lines = [
        "# Improvement over K = 1",
        "",
        "(mean_K − mean_K=1) / |mean_K=1| × 100 of the final evaluation (return, or win rate where the env "
        "reports wins), same algorithm and task; positive is better; n/a: no K = 1 run, or its mean is within one "
        "standard error of 0 (a percentage of it would be noise; see the absolute difference below). "
        "Seeds per group: see final.md.",
        "",
    ]
    if not columns:
        return "\n".join([*lines, "No K > 1 runs found.", ""])

    def cell(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.1f}%"

    lines += ["| task | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for task in results["metric_by_task"]:
        found = {f"{r['label']} K={r['k']}": r["percent"] for r in rel["rows"] if r["task"] == task}
        lines.append(f"| {task} | " + " | ".join(cell(found[c]) if c in found else "" for c in columns) + " |")
    lines.append(
        "| **average over tasks** | "
        + " | ".join(f"**{rel['average'][c]:+.1f}%**" if c in rel["average"] else "" for c in columns)
        + " |"
    )
    lines += [
        "",
        "## Absolute difference",
        "",
        "mean_K − mean_K=1 ± its standard error (√(s.e.² + s.e._K=1²)), in the task's metric; n/a notes say why "
        "a percentage above is missing.",
        "",
        "| task | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for task in results["metric_by_task"]:
        found = {f"{r['label']} K={r['k']}": r for r in rel["rows"] if r["task"] == task}

        def diff(r: dict[str, Any]) -> str:
            text = "n/a" if r["diff"] is None else f"{r['diff']:+.4g} ± {fmt(r['diff_se'], r['diff'])}"
            return f"{text} ({r['note']})" if r["note"] else text

        lines.append(f"| {task} | " + " | ".join(diff(found[c]) if c in found else "" for c in columns) + " |")
    return "\n".join([*lines, ""])
