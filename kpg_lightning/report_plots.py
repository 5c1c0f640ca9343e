"""Figures of a sweep report, drawn on Agg canvases (rliable's plotting functions given their axes): no global
backend is switched.

:func:`plot_task` (learning curves of one task), :func:`plot_profiles` (rliable's performance profiles) and
:func:`plot_sample_efficiency` (IQM of normalised scores against frames) and :func:`plot_sensitivity` (final
metric and ``--axis-metric`` columns against an ``--axis`` setting) return a :class:`matplotlib.figure.Figure`
(show it in a notebook with ``display(fig)``); :func:`write_plots` writes them as PNGs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

__all__ = ["plot_profiles", "plot_sample_efficiency", "plot_sensitivity", "plot_task", "png_name", "write_plots"]

_Y_LABELS = {"return": "evaluation return (greedy policy)", "win_rate": "evaluation win rate (greedy policy)"}
_LINESTYLES = ("-", "--", ":", "-.")


def png_name(task: str, prefix: str = "curves") -> str:
    """``vmas/balance`` → ``curves_vmas-balance.png`` (``<prefix>_vmas-balance.png``)."""
    return f"{prefix}_" + "".join(c if c.isalnum() or c in "-_." else "-" for c in task) + ".png"


def plot_task(task: str, groups: list[dict[str, Any]]) -> Figure:
    """Mean ± standard error over seeds against environment frames, one line per (variant, K) of ``task``.

    ``groups`` are :func:`kpg_lightning.report_summary.summarise` groups (those of other tasks are ignored).
    """
    groups = [g for g in groups if g["task"] == task]
    fig = Figure(figsize=(7.5, 4.6 + 0.22 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = list(dict.fromkeys(g["label"] for g in groups))
    colors = colormaps["tab10"]
    for i, g in enumerate(groups):
        frames, mean, se = (np.asarray(g["curve"][key], dtype=float) for key in ("frames", "mean", "se"))
        style = _LINESTYLES[labels.index(g["label"]) % len(_LINESTYLES)]
        name = textwrap.fill(f"{g['name']}  (n={g['n']} seed{'s' if g['n'] != 1 else ''})", 90)
        ax.plot(
            frames, mean, style, color=colors(i % 10), lw=2, marker="o" if len(frames) < 15 else None, ms=4, label=name
        )
        if g["n"] > 1:
            ax.fill_between(frames, mean - se, mean + se, color=colors(i % 10), alpha=0.2, lw=0)
    metric = groups[0]["metric"] if groups else "return"
    ax.set_title(task, fontsize=13)
    ax.set_xlabel("environment frames")
    ax.set_ylabel(_Y_LABELS[metric])
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    if metric == "win_rate":
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    fig.legend(
        title="mean ± s.e. over seeds",
        fontsize=9,
        title_fontsize=9,
        loc="outside lower center",
        ncols=1 if len(groups) < 3 or any(len(g["name"]) > 30 for g in groups) else 2,
        frameon=False,
    )
    return fig


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _colors(names: list[str]) -> dict[str, Any]:
    return {name: colormaps["tab10"](i % 10) for i, name in enumerate(names)}


def plot_profiles(aggregate: dict[str, Any]) -> Figure:
    """rliable's performance profiles of the last evaluation: fraction of runs with normalised score > τ."""
    from rliable import plot_utils

    p = aggregate["profiles"]
    names = list(p["profiles"])
    fig, ax = _figure(7.5, 4.6 + 0.22 * len(names))
    plot_utils.plot_performance_profiles(
        {n: np.asarray(v) for n, v in p["profiles"].items()},
        np.asarray(p["taus"]),
        performance_profile_cis={n: np.asarray(v) for n, v in p["cis"].items()},
        colors=_colors(names),
        ax=ax,
        xlabel=r"normalised score $\tau$ (see aggregate.md)",
        ylabel=r"fraction of runs with score $> \tau$",
        labelsize="medium",
        ticklabelsize="medium",
    )
    ax.set_title(f"Performance profiles ({aggregate['confidence']:.0%} CIs)", fontsize=12)
    fig.legend(fontsize=9, loc="outside lower center", ncols=1 if len(names) < 3 else 2, frameon=False)
    return fig


def plot_sample_efficiency(aggregate: dict[str, Any]) -> Figure:
    """IQM over runs and tasks of normalised evaluation scores against frames, with rliable's CIs."""
    from rliable import plot_utils

    curves = aggregate["sample_efficiency"]["curves"]
    names = list(curves)
    colors = _colors(names)
    fig, ax = _figure(7.5, 4.6 + 0.22 * len(names))
    for name, c in curves.items():
        plot_utils.plot_sample_efficiency_curve(
            np.asarray(c["frames"]),
            {name: np.asarray(c["iqm"])},
            {name: np.asarray([c["low"], c["high"]])},
            algorithms=[name],
            colors=colors,
            ax=ax,
            xlabel="environment frames",
            ylabel="IQM normalised score",
            labelsize="medium",
            ticklabelsize="medium",
            marker="o" if len(c["frames"]) < 15 else None,
        )
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_title(f"Sample efficiency: IQM over runs and tasks ({aggregate['confidence']:.0%} CIs)", fontsize=12)
    fig.legend(fontsize=9, loc="outside lower center", ncols=1 if len(names) < 3 else 2, frameon=False)
    return fig


def plot_sensitivity(task: str, sensitivity: dict[str, Any]) -> Figure:
    """Mean ± s.e. over seeds against the ``--axis`` value, one line per (variant, K, actor optimizer) of ``task``:
    the final metric, then a panel per ``--axis-metric`` (lines none of whose runs logs it left out); a log x axis
    where the values are positive and span at least 4× (:func:`kpg_lightning.report_sensitivity.log_axis`)."""
    entry, key = sensitivity["tasks"][task], sensitivity["key"]
    panels = [None, *sensitivity["metrics"]]
    fig = Figure(figsize=(5.2 * len(panels), 4.4 + 0.22 * len(entry["lines"])), layout="constrained")
    FigureCanvasAgg(fig)
    colors = _colors([line["name"] for line in entry["lines"]])
    for i, metric in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for line in entry["lines"]:
            stats = [p["final"] if metric is None else p["metrics"][metric] for p in line["points"]]
            xy = [(p["value"], s["mean"], s["se"] or 0.0) for p, s in zip(line["points"], stats, strict=True) if s["n"]]
            if not xy:
                continue
            x, y, se = (np.array(v, dtype=float) for v in zip(*xy, strict=True))
            color = colors[line["name"]]
            label = line["name"] if i == 0 else None
            ax.errorbar(x, y, yerr=se, fmt="-o", color=color, lw=2, ms=5, capsize=3, label=label)
        if entry["log_x"]:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(_Y_LABELS[entry["metric"]] if metric is None else f"{metric} (late-half mean per run)")
        ax.set_title(f"final {entry['metric'].replace('_', ' ')}" if metric is None else metric, fontsize=11)
        ax.grid(alpha=0.3)
    fig.suptitle(task, fontsize=13)
    fig.legend(
        title="mean ± s.e. over seeds",
        fontsize=9,
        title_fontsize=9,
        loc="outside lower center",
        ncols=min(4, max(1, len(entry["lines"]))),
        frameon=False,
    )
    return fig


def write_plots(results: dict[str, Any], out: Path, dpi: int = 120) -> list[Path]:
    """One ``curves_<task>.png`` per task in ``results`` (from :func:`kpg_lightning.report_summary.summarise`), where it
    has rliable's aggregates ``profile.png`` and ``sample_efficiency.png``, and with ``--axis`` (its
    ``sensitivity``) one ``sensitivity_<task>.png`` per task."""
    paths = []
    for task in results["metric_by_task"]:
        path = Path(out) / png_name(task)
        plot_task(task, results["groups"]).savefig(path, dpi=dpi, format="png")
        paths.append(path)
    if "aggregate" in results:
        for name, plot in (("profile.png", plot_profiles), ("sample_efficiency.png", plot_sample_efficiency)):
            plot(results["aggregate"]).savefig(Path(out) / name, dpi=dpi, format="png")
            paths.append(Path(out) / name)
    for task in results.get("sensitivity", {}).get("tasks", {}):
        path = Path(out) / png_name(task, "sensitivity")
        plot_sensitivity(task, results["sensitivity"]).savefig(path, dpi=dpi, format="png")
        paths.append(path)
    return paths
