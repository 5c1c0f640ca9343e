"""Learning-curve figures of a sweep report, drawn on Agg canvases without pyplot.

:func:`plot_task` returns a :class:`matplotlib.figure.Figure` (show it in a notebook with ``display(fig)``);
:func:`write_plots` writes one PNG per task. No global backend is switched.
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

__all__ = ["plot_task", "png_name", "write_plots"]

_Y_LABELS = {"return": "evaluation return (greedy policy)", "win_rate": "evaluation win rate (greedy policy)"}
_LINESTYLES = ("-", "--", ":", "-.")


def png_name(task: str) -> str:
    """``vmas/balance`` → ``curves_vmas-balance.png``."""
    return "curves_" + "".join(c if c.isalnum() or c in "-_." else "-" for c in task) + ".png"


def plot_task(task: str, groups: list[dict[str, Any]]) -> Figure:
    """Mean ± standard error over seeds against environment frames, one line per (variant, K) of ``task``.

    ``groups`` are :func:`kpg_lightning.report.summarise` groups (those of other tasks are ignored).
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
        name = textwrap.fill(f"{g['label']}, K={g['k']}  (n={g['n']} seed{'s' if g['n'] != 1 else ''})", 90)
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
        ncols=1 if len(groups) < 3 or any(len(g["label"]) > 30 for g in groups) else 2,
        frameon=False,
    )
    return fig


def write_plots(results: dict[str, Any], out: Path, dpi: int = 120) -> list[Path]:
    """One ``curves_<task>.png`` per task in ``results`` (from :func:`kpg_lightning.report.summarise`)."""
    paths = []
    for task in results["metric_by_task"]:
        path = Path(out) / png_name(task)
        plot_task(task, results["groups"]).savefig(path, dpi=dpi, format="png")
        paths.append(path)
    return paths
