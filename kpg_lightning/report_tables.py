"""The markdown tables of sweep reports (``final.md``, ``relative.md``, ``aggregate.md``, ``improvement.md``), from
:func:`kpg_lightning.report_summary.summarise`'s results."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

__all__ = [
    "METRIC_NAMES",
    "aggregate_table",
    "final_table",
    "fmt",
    "improvement_table",
    "relative_column",
    "relative_table",
    "sensitivity_table",
]

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


def _ci(ci: list[float]) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def final_table(results: dict[str, Any]) -> str:
    """``final.md``: one table per task, a row per cell, then the incomplete and duplicate runs."""
    b = results["bootstrap"]
    lines = [
        "# Final performance",
        "",
        f"Last greedy evaluation of each run. Over seeds: mean ± standard error, IQM (interquartile mean) and "
        f"its {b['confidence']:.0%} CI (rliable's stratified percentile bootstrap, {b['resamples']} resamples, "
        f"seed {b['seed']}). Absolute: the best evaluated policy of each run re-evaluated at the end of training "
        "(summary `absolute_*`), mean ± s.e. over seeds; — where a run has none.",
        "",
    ]
    for task, metric in results["metric_by_task"].items():
        lines += [
            f"## {task}: final {METRIC_NAMES[metric]}",
            "",
            f"| algorithm | K | actor optimizer | seeds | mean ± s.e. | IQM | IQM {b['confidence']:.0%} CI "
            "| absolute mean ± s.e. | missing seeds |",
            "|---|---:|---|---:|---|---:|---|---|---|",
        ]
        for g in (g for g in results["groups"] if g["task"] == task):
            missing = ", ".join(map(str, g["missing_seeds"])) or "none"
            a = g.get("absolute")
            absolute = f"{fmt(a['mean'])} ± {fmt(a['se'], a['mean'])}" if a else "—"
            lines.append(
                f"| {g['name']} | {g['k']} | {g['actor_optimizer'] or '—'} | {g['n']} | "
                f"{fmt(g['mean'])} ± {fmt(g['se'], g['mean'])} | {fmt(g['iqm'])} | {_ci(g['iqm_ci'])} | {absolute} | "
                f"{missing} |"
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


def relative_column(row: dict[str, Any]) -> str:
    """``MADDPG K=2 (rmsprop) vs MADDPG K=1 (adam)``: a relative-table column."""
    return f"{row['name']} vs {row['baseline']}" if row["baseline"] else row["name"]


def relative_table(results: dict[str, Any]) -> str:
    """``relative.md``: tasks as rows, each (K > 1 cell, K = 1 cell) pairing as a column, % improvement."""
    rel = results["relative"]
    columns = list(dict.fromkeys(relative_column(r) for r in rel["rows"]))
    lines = [
        "# Improvement over K = 1",
        "",
        "(mean_K − mean_K=1) / |mean_K=1| × 100 of the final evaluation (return, or win rate where the env "
        "reports wins), same algorithm variant and task, against every K = 1 cell of it (each actor optimizer its "
        "own column); positive is better; n/a: no K = 1 run, or its mean is within one standard error of 0 (a "
        "percentage of it would be noise; see the absolute difference below). Seeds per cell: see final.md; "
        "probability of improvement with CIs: improvement.md.",
        "",
    ]
    if not columns:
        return "\n".join([*lines, "No K > 1 runs found.", ""])

    def cell(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.1f}%"

    lines += ["| task | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for task in results["metric_by_task"]:
        found = {relative_column(r): r["percent"] for r in rel["rows"] if r["task"] == task}
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
        found = {relative_column(r): r for r in rel["rows"] if r["task"] == task}

        def diff(r: dict[str, Any]) -> str:
            text = "n/a" if r["diff"] is None else f"{r['diff']:+.4g} ± {fmt(r['diff_se'], r['diff'])}"
            return f"{text} ({r['note']})" if r["note"] else text

        lines.append(f"| {task} | " + " | ".join(diff(found[c]) if c in found else "" for c in columns) + " |")
    return "\n".join([*lines, ""])


def _protocol(agg: dict[str, Any]) -> list[str]:
    norm = agg["normalisation"]
    lines = [
        f"Statistics: rliable (Agarwal et al. 2021), stratified bootstrap over runs within each task, "
        f"{agg['reps']} resamples, percentile {agg['confidence']:.0%} CIs, numpy's global random state seeded with "
        f"{agg['seed']} for each estimate.",
        "",
        "Normalised score per task: a return is min–max normalised with the lowest and highest evaluation mean of "
        "any run of that task in this report (every evaluation point and absolute metric): 0 is the worst, 1 the "
        "best evaluation in the report, so adding runs can change the scores; a win rate is used as it is. "
        "Optimality gap: mean shortfall below 1 (threshold γ = 1).",
        "",
        "| task | metric | normalised as | min | max |",
        "|---|---|---|---:|---:|",
    ]
    lines += [
        f"| {t} | {n['metric']} | {n['reference']} | {fmt(n['min'])} | {fmt(n['max'])} |" for t, n in norm.items()
    ]
    return [*lines, ""]


def aggregate_table(results: dict[str, Any]) -> str:
    """``aggregate.md``: rliable's IQM, mean and optimality gap over tasks per cell, with the normalisation."""
    agg = results["aggregate"]
    lines = ["# Aggregate performance over tasks", "", *_protocol(agg)]
    titles = {
        "final": "Last evaluation",
        "absolute": "Absolute metric (cells whose runs all have one)",
    }
    for key, title in titles.items():
        if key not in agg:
            continue
        lines += [
            f"## {title}",
            "",
            "Normalised scores; IQM and mean: higher is better; optimality gap: lower is better.",
            "",
            "| algorithm | tasks | runs per task | IQM | mean | optimality gap |",
            "|---|---:|---:|---|---|---|",
        ]
        for row in agg[key]:
            stats = " | ".join(f"{fmt(row[s])} {_ci(row[s + '_ci'])}" for s in ("iqm", "mean", "optimality_gap"))
            lines.append(f"| {row['name']} | {len(row['tasks'])} | {row['runs_per_task']} | {stats} |")
        dropped = [f"{row['name']}: {', '.join(row['runs_dropped'])}" for row in agg[key] if row["runs_dropped"]]
        if dropped:
            lines += ["", "Runs left out to give each cell the same number of runs on every task:", ""]
            lines += [f"- {d}" for d in dropped]
        lines.append("")
    skipped = agg["sample_efficiency"]["skipped"]
    if skipped:
        lines += ["Not in sample_efficiency.png:", "", *[f"- {s}" for s in skipped], ""]
    return "\n".join(lines)


def improvement_table(results: dict[str, Any]) -> str:
    """``improvement.md``: probability of improvement of each K > 1 cell over each K = 1 cell of its variant, and of
    each pair asked for with ``--compare``."""
    agg = results["aggregate"]
    rows = agg["improvement"]
    asked = results.get("compare") or []
    title = "over K = 1" if not asked else "(K > 1 over K = 1, and the pairs asked for with --compare)"
    lines = [
        f"# Probability of improvement {title}",
        "",
        "P(X > Y): the probability that a run of X scores higher than a run of Y on a task (Mann–Whitney U / "
        "(n_X n_Y)), averaged over the tasks named, on the normalised scores of the last evaluation (see "
        f"aggregate.md), with rliable's {agg['confidence']:.0%} stratified-bootstrap CIs ({agg['reps']} resamples, "
        f"seed {agg['seed']}). 0.5: no difference; a CI above 0.5: X better.",
        "",
    ]
    if not rows:
        return "\n".join([*lines, "No K > 1 cell with a K = 1 cell of the same variant, no pair asked for.", ""])
    lines += _improvement_rows(rows)
    absolute = agg.get("improvement_absolute") or []
    if absolute:
        lines += [
            "",
            "## On the absolute metric",
            "",
            "The same pairs on each run's absolute metric (its best evaluated policy re-evaluated with more episodes "
            "at the end; see final.md), normalised as above, on the tasks where every run of both cells has one. "
            "It is less noisy than a single last evaluation, and it scores a run by its best policy, not its last.",
            "",
            *_improvement_rows(absolute),
        ]
    ragged = [r for r in [*rows, *absolute] if r.get("runs") and "all tasks" in r["by_tasks"]]
    if ragged:
        pairs = list(dict.fromkeys(f"{r['name']} over {r['baseline']}" for r in ragged))
        every = len(pairs) == len(
            {(r["name"], r["baseline"]) for r in [*rows, *absolute] if "all tasks" in r["by_tasks"]}
        )
        lines += [
            "",
            'Where a pair\'s tasks have different numbers of runs, its "all tasks" estimate averages the per-task '
            "estimates over every run, each task's runs of X and of Y resampled on their own for the CI (the same "
            "stratified bootstrap, with numpy's seeded draws: rliable's needs equal numbers of runs per task). "
            "Such pairs here: " + ("every pair above." if every else f"{'; '.join(pairs)}."),
        ]
    return "\n".join([*lines, ""])


def _improvement_rows(rows: list[dict[str, Any]]) -> list[str]:
    subsets = list(dict.fromkeys(t for r in rows for t in r["by_tasks"]))
    lines = ["| X | Y | " + " | ".join(subsets) + " |", "|---|---|" + "---|" * len(subsets)]
    for r in rows:
        cells = [
            f"{r['by_tasks'][t]['p']:.2f} [{r['by_tasks'][t]['ci'][0]:.2f}, {r['by_tasks'][t]['ci'][1]:.2f}]"
            if t in r["by_tasks"]
            else ""
            for t in subsets
        ]
        lines.append(f"| {r['name']} | {r['baseline']} | " + " | ".join(cells) + " |")
    return lines


def _mean_se(stats: dict[str, Any]) -> str:
    return f"{fmt(stats['mean'])} ± {fmt(stats['se'], stats['mean'])} ({stats['n']})" if stats["n"] else "—"


def sensitivity_table(results: dict[str, Any]) -> str:
    """``sensitivity.md``: per task, a row per ``--axis`` value and a column per line, the final metric and then
    each ``--axis-metric``; the runs (and whole lines) without an ``--axis-metric`` are listed below its table."""
    sens = results["sensitivity"]
    key = sens["key"]
    lines = [
        f"# Sensitivity to {key}",
        "",
        f"Rows: `{key}` (each run's `.hydra/config.yaml`). Columns: lines, task × algorithm variant (without "
        f"`{key}`) × K × actor optimizer. Cells: mean ± standard error over seeds (number of seeds); — where a line "
        "has no run at that value. final.md has the same runs with each value a cell of its own.",
        "",
    ]
    for task, entry in sens["tasks"].items():
        values = sorted({p["value"] for line in entry["lines"] for p in line["points"]})
        tables = [(f"final {METRIC_NAMES[entry['metric']]}", None)] + [
            (f"`{m}`, {sens['summary']}", m) for m in sens["metrics"]
        ]
        for title, metric in tables:
            shown = [line for line in entry["lines"] if metric is None or line["has_metric"][metric]]
            lines += [f"## {task}: {title}", ""]
            if shown:
                lines += [f"| {key} | " + " | ".join(line["name"] for line in shown) + " |"]
                lines += ["|---:|" + "---|" * len(shown)]
            for value in values if shown else []:
                cells = []
                for line in shown:
                    point = next((p for p in line["points"] if p["value"] == value), None)
                    stats = None if point is None else point["final"] if metric is None else point["metrics"][metric]
                    cells.append("—" if stats is None else _mean_se(stats))
                lines.append(f"| {value:g} | " + " | ".join(cells) + " |")
            if metric is not None:
                absent = [line for line in entry["lines"] if not line["has_metric"][metric]]
                missing = [
                    m
                    for line in entry["lines"]
                    if line["has_metric"][metric]
                    for p in line["points"]
                    for m in p["metrics"][metric]["missing"]
                ]
                if absent or missing:
                    lines += [*([""] if shown else []), f"Without `{metric}` (not in the means above):", ""]
                    for line in absent:
                        reasons = Counter(m["reason"] for p in line["points"] for m in p["metrics"][metric]["missing"])
                        why = ", ".join(f"{reason}: {n}" for reason, n in reasons.items())
                        lines.append(f"- {line['name']}: none of its {sum(reasons.values())} runs logs it ({why})")
                    lines += [f"- `{m['path']}`: {m['reason']}" for m in missing]
            lines.append("")
            if metric is None and "threshold" in entry:
                lines += _above_table(key, task, entry, values, sens["confidence"])
    lines += _pooled_table(key, sens)
    if sens["duplicates"]:
        lines += ["## Duplicate runs (same line, value and seed; the newer one is used)", ""]
        lines += [f"- `{d['path']}` (replaced by `{d['replaced_by']}`)" for d in sens["duplicates"]] + [""]
    return "\n".join(lines)


def _pooled_table(key: str, sens: dict[str, Any]) -> list[str]:
    """Each K > 1 line against its K = 1 line over every value of ``key``, per task and over all (task, value)
    settings, on the final and on the absolute metric."""
    rows = sens.get("pooled") or []
    if not rows:
        return []
    subsets = list(dict.fromkeys(s for row in rows for s in row["final"]))
    lines = [
        f"## K > 1 against K = 1 over every {key}",
        "",
        f"P(X > Y): the probability that a run of the K > 1 line X scores higher than a run of the K = 1 line Y of "
        f"its variant and optimizer at the same `{key}` (Mann–Whitney U / (n_X n_Y), ties half), averaged over every "
        f"value both lines were run at, per task and over every (task, value) setting, with a "
        f"{sens['confidence']:.0%} stratified-bootstrap CI (each setting's runs of X and of Y resampled on their "
        "own). 0.5: K makes no difference over this grid; a CI above 0.5: X better. Cells: P [CI] (settings; runs "
        "of X / of Y). improvement.md has each value on its own.",
        "",
    ]
    for key_, title in (("final", "final metric (the last evaluation)"), ("absolute", "absolute metric")):
        if not any(est for row in rows for est in row[key_].values()):
            continue
        header = ["| X | Y | " + " | ".join(subsets) + " |", "|---|---|" + "---|" * len(subsets)]
        lines += [f"On the {title}:", "", *header]
        for row in rows:
            cells = []
            for subset in subsets:
                est = row[key_].get(subset)
                cells.append(
                    "—"
                    if est is None
                    else f"{est['p']:.2f} [{est['ci'][0]:.2f}, {est['ci'][1]:.2f}] "
                    f"({est['settings']}; {est['runs'][0]} / {est['runs'][1]})"
                    + ("†" if est["single_run_settings"] else "")
                )
            lines.append(f"| {row['name']} | {row['baseline']} | " + " | ".join(cells) + " |")
        lines.append("")
    estimates = [est for row in rows for e in ("final", "absolute") for est in row[e].values() if est]
    if any(est["single_run_settings"] for est in estimates):
        lines += [
            "†: at some of its settings a line has a single run, which the bootstrap cannot vary: the CI is "
            "narrower than the uncertainty.",
            "",
        ]
    return lines


def _above_table(key: str, task: str, entry: dict[str, Any], values: list[float], confidence: float) -> list[str]:
    """Per value and line: how many runs end above the task's ``--axis-threshold``, with the exact CI, and Fisher's
    exact p against K = 1 at K > 1."""
    metric = METRIC_NAMES[entry["metric"]]
    lines = [
        f"## {task}: runs whose final {metric} exceeds {entry['threshold']:g}",
        "",
        f"Cells: runs above the threshold of the line's runs at that value, the exact (Clopper–Pearson) "
        f"{confidence:.0%} CI of that fraction and, at K > 1, Fisher's exact test (two-sided p) against the K = 1 "
        "line of the same variant and actor optimizer at that value.",
        "",
        f"| {key} | " + " | ".join(line["name"] for line in entry["lines"]) + " |",
        "|---:|" + "---|" * len(entry["lines"]),
    ]
    for value in values:
        cells = []
        for line in entry["lines"]:
            point = next((p for p in line["points"] if p["value"] == value), None)
            if point is None:
                cells.append("—")
                continue
            above = point["above"]
            cell = f"{above['count']} of {above['n']} [{above['ci'][0]:.2f}, {above['ci'][1]:.2f}]"
            if "fisher_p_vs_k1" in above:
                cell += f", p = {above['fisher_p_vs_k1']:.2f}"
            cells.append(cell)
        lines.append(f"| {value:g} | " + " | ".join(cells) + " |")
    return [*lines, ""]
