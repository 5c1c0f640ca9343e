"""Figures of the Meet-up game (Fig. 2a, 2b and 3 of the paper), drawn on Agg canvases without pyplot.

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save` writes it as PNG. No global
backend is switched, so they work in scripts, tests and notebooks alike (show one with ``display(fig)``).
The game's geometry (start positions, Nash point, returns) comes in as arguments, from :mod:`kpg_lightning.meetup`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["plot_distance", "plot_levels", "plot_paths", "save"]

_AGENT_COLORS = ("tab:blue", "tab:orange")

Points = Sequence[Sequence[float]]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """Write ``fig`` as a PNG."""
    fig.savefig(path, dpi=dpi, format="png")


def _arrows(
    ax: Axes, start: Points, theta: Sequence[float], color: Any, label: str | None = None, lw: float = 1.8
) -> None:
    for i, (origin, angle) in enumerate(zip(start, theta, strict=True)):
        ax.annotate(
            "",
            xy=(origin[0] + math.cos(angle), origin[1] + math.sin(angle)),
            xytext=origin,
            arrowprops={"arrowstyle": "-|>", "color": color, "lw": lw},
        )
        if label and i == 0:
            ax.plot([], [], color=color, lw=lw, label=label)


def _board(ax: Axes, start: Points, title: str) -> None:
    (x1, y1), (x2, y2) = start
    ax.plot([x1, x2], [y1, y2], "--", color="0.6", lw=1, label="optimal (straight at each other)")
    for (x, y), color in zip(start, _AGENT_COLORS, strict=True):
        ax.plot(x, y, "o", color=color, ms=7)
    ax.set_xlim(-1.3, 4.3)
    ax.set_ylim(-1.3, 3.3)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)


def plot_levels(levels: Sequence[Sequence[float]], start: Points, max_panels: int = 8) -> Figure:
    """Fig. 2a: agents' first steps per level of one update, the agents starting at ``start``.

    Panel k shows the level-(k−1) steps (gold) each agent responds to, where agent i aims (dotted: from
    its start to the other's level-(k−1) destination) and the level-k steps (red). The last panel overlays
    all levels, darker for higher k, converging on the fixed point of the recursion.
    """
    k = len(levels) - 1
    shown = list(range(1, k + 1)) if k < max_panels else [*range(1, max_panels - 1), k]
    n = len(shown) + 1
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(3.0 * ncols, 2.5 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, level in zip(axes, shown, strict=False):
        _board(ax, start, f"level {level}")
        prev = levels[level - 1]
        for i, origin in enumerate(start):
            other = start[1 - i]
            dest = (other[0] + math.cos(prev[1 - i]), other[1] + math.sin(prev[1 - i]))
            ax.plot([origin[0], dest[0]], [origin[1], dest[1]], ":", color=_AGENT_COLORS[i], lw=1)
        _arrows(ax, start, prev, "gold", f"level {level - 1}")
        _arrows(ax, start, levels[level], "tab:red", f"level {level}")
        ax.legend(fontsize=6, loc="lower right")
    ax = axes[len(shown)]
    _board(ax, start, f"levels 0..{k}")
    cmap = colormaps["Reds"]
    for level, theta in enumerate(levels):
        _arrows(ax, start, theta, cmap(0.25 + 0.75 * level / max(k, 1)), lw=1.2)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle("One K-level update: each level responds to the others' previous level")
    return fig


def _nash_copies(
    nash: Sequence[float], xlim: tuple[float, float], ylim: tuple[float, float]
) -> list[tuple[float, float]]:
    """All 2π-translates of θ* (``nash``) inside the given box."""
    tau = 2 * math.pi

    def copies(centre: float, lo: float, hi: float) -> list[float]:
        first, last = math.floor((lo - centre) / tau), math.ceil((hi - centre) / tau)
        return [centre + tau * m for m in range(first, last + 1)]

    xs, ys = copies(nash[0], *xlim), copies(nash[1], *ylim)
    return [(x, y) for x in xs for y in ys if xlim[0] <= x <= xlim[1] and ylim[0] <= y <= ylim[1]]


def plot_paths(
    theta0: Sequence[float],
    trajectories: Mapping[Any, Mapping[str, Any]],
    nash: Sequence[float],
    returns: Callable[[Tensor], Tensor],
) -> Figure:
    """Fig. 2b: θ = (θ₁, θ₂) after each update, one path per K (darker = higher K), over contours of J₁ + J₂.

    ``trajectories`` maps K to ``{"theta": [[θ₁, θ₂], ...]}`` (the ``trajectory`` entry of ``meetup.json``);
    ``nash`` is θ* (marked with its 2π-translates); ``returns`` maps θ ``(..., 2)`` to (J₁, J₂) ``(..., 2)``.
    """
    fig = _figure(6.0, 5.0)
    ax = fig.subplots()
    paths = {int(kk): [list(theta0), *tr["theta"]] for kk, tr in trajectories.items()}
    xs = [p[0] for path in paths.values() for p in path] + [nash[0]]
    ys = [p[1] for path in paths.values() for p in path] + [nash[1]]
    pad = 0.3
    xlim = (min(xs) - pad, max(xs) + pad)
    ylim = (min(ys) - pad, max(ys) + pad)
    gx = torch.linspace(*xlim, 160, dtype=torch.float64)
    gy = torch.linspace(*ylim, 160, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)
    total = returns(grid).sum(-1)
    contour = ax.contourf(gx.numpy(), gy.numpy(), total.numpy(), levels=20, cmap="Greys_r", alpha=0.6)
    fig.colorbar(contour, ax=ax, label="J₁ + J₂")
    cmap = colormaps["viridis_r"]
    ordered = sorted(paths)
    for rank, kk in enumerate(ordered):
        path = paths[kk]
        color = cmap(0.15 + 0.85 * rank / max(len(ordered) - 1, 1))
        ax.plot([p[0] for p in path], [p[1] for p in path], "o-", ms=3, lw=1, color=color, label=f"K={kk}")
    ax.plot(*theta0, "s", color="black", ms=6, label="start")
    for i, (x, y) in enumerate(_nash_copies(nash, xlim, ylim)):
        ax.plot(x, y, "*", color="tab:green", ms=16, mec="black", label="Nash θ*" if i == 0 else None)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("θ₁ (agent 1 angle)")
    ax.set_ylabel("θ₂ (agent 2 angle)")
    ax.legend(fontsize=8)
    ax.set_title("Gradient ascent with K-level updates")
    return fig


def plot_distance(level_distance: Sequence[float], level_deltas: Sequence[float], bound: Sequence[float]) -> Figure:
    """Fig. 3: distance to Nash of θ⁽ᵏ⁾ vs level k for one update; right: ‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖ vs Theorem 4.2."""
    fig = _figure(9.0, 3.6)
    left, right = fig.subplots(1, 2)
    left.plot(range(len(level_distance)), level_distance, "o-", color="tab:purple")
    left.set_xlabel("level k")
    left.set_ylabel("‖θ⁽ᵏ⁾ − θ*‖")
    left.set_title("Distance to Nash after one update")
    levels = range(1, len(level_deltas) + 1)
    right.semilogy(levels, [max(d, 1e-300) for d in level_deltas], "o-", label="‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖")
    right.semilogy(levels, bound, "k--", label="Theorem 4.2 bound")
    right.set_xlabel("level k")
    right.set_title("Consecutive levels contract")
    right.legend(fontsize=8)
    return fig
