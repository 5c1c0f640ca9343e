"""One run of a sweep report as read from its directory (``summary.json``, ``.hydra/``, ``csv/metrics.csv``), and
the names of the report's cells.

A cell is (task, algorithm variant, K, actor optimizer). The variant is the algorithm name plus every command-line
override (``.hydra/overrides.yaml``) that differs between runs of that algorithm on that task, except ``seed``,
``kpg.k``, ``kpg.actor_optimizer``, ``experiment``, ``resume`` and ``hydra.*``. The actor optimizer is the one the
run used: the summary's ``actor_optimizer``, or for older summaries ``kpg.actor_optimizer`` of
``.hydra/config.yaml`` with ``auto`` resolved by the rule of :func:`kpg_lightning.optim.make_actor_optimizer`
(RMSProp for K > 1, Adam for K = 1); None for algorithms without an actor.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

__all__ = [
    "Run",
    "absolute_values",
    "by_seed",
    "cell_names",
    "csv_curve",
    "load_run",
    "resolve_actor_optimizer",
    "run_config",
]

_NOT_A_VARIANT = ("seed", "kpg.k", "kpg.actor_optimizer", "experiment", "resume")
_NO_ACTOR = frozenset({"qmix", "vdn", "iql", "comix"})  # has_actor = False (summaries before `actor_optimizer`)


def resolve_actor_optimizer(name: str, k: int) -> str:
    """``kpg.actor_optimizer`` as :func:`kpg_lightning.optim.make_actor_optimizer` resolves it."""
    return ("rmsprop" if k > 1 else "adam") if name == "auto" else name


@dataclass
class Run:
    """One finished run: identity, last evaluation, evaluation history and absolute metric."""

    path: Path
    algorithm: str
    task: str
    k: int
    seed: int
    finals: dict[str, float]
    """The last evaluation: ``return`` and, where the env reports wins, ``win_rate``."""
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    """``metric -> (frames, per-evaluation means)``."""
    overrides: dict[str, str] = field(default_factory=dict)
    actor_optimizer: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per evaluation: ``frames``, ``returns`` (per episode; ``[return_mean]`` in older summaries),
    ``win_rate`` (1-element list semantics: one number) where the env reports wins."""
    absolute: dict[str, Any] | None = None
    """The absolute metric (summary ``absolute_*``): ``frames``, ``metric``, ``episodes``, ``return_mean``,
    ``returns``, ``win_rate`` (None where no wins); None where the run has none."""

    @property
    def env(self) -> str:
        """The environment family (``vmas`` of ``vmas/balance``)."""
        return self.task.partition("/")[0]

    @property
    def scenario(self) -> str:
        """The task within its family (``balance`` of ``vmas/balance``)."""
        return self.task.partition("/")[2] or self.task


def run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}  # type: ignore[return-value]


def _overrides(run_dir: Path) -> dict[str, str]:
    """``.hydra/overrides.yaml`` as ``{key: value}``, without the keys that do not make a variant."""
    path = run_dir / ".hydra" / "overrides.yaml"
    pairs = (str(o).partition("=") for o in (OmegaConf.load(path) if path.is_file() else []))
    return {
        key.lstrip("+~"): value
        for key, _, value in pairs
        if key.lstrip("+~") not in _NOT_A_VARIANT and not key.lstrip("+~").startswith("hydra")
    }


def csv_curve(path: Path, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(frames, values)`` of one column of a run's ``csv/metrics.csv`` (the last value per frame count)."""
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        points = {float(row["step"]): float(row[column]) for row in csv.DictReader(f) if row.get(column)}
    if not points:
        return None
    frames = np.array(sorted(points))
    return frames, np.array([points[x] for x in frames])


def _optimizer(summary: dict[str, Any], run_dir: Path, algorithm: str, k: int) -> str | None:
    if "actor_optimizer" in summary:
        return summary["actor_optimizer"]
    if algorithm in _NO_ACTOR:
        return None
    name = run_config(run_dir).get("kpg", {}).get("actor_optimizer", "auto")
    return resolve_actor_optimizer(str(name), k)


def _absolute(summary: dict[str, Any]) -> dict[str, Any] | None:
    if summary.get("absolute_return_mean") is None:
        return None
    mean = float(summary["absolute_return_mean"])
    win = summary.get("absolute_win_rate")
    return {
        "frames": summary.get("absolute_frames"),
        "metric": summary.get("absolute_metric") or "return",
        "episodes": summary.get("absolute_episodes"),
        "return_mean": mean,
        "returns": [float(x) for x in summary.get("absolute_returns") or [mean]],
        "win_rate": None if win is None else float(win),
    }


def absolute_values(runs: Sequence[Run], metric: str) -> list[float] | None:
    """Each run's absolute metric in the task's ``metric`` ("return" or "win_rate"); None where a run has none."""
    key = "win_rate" if metric == "win_rate" else "return_mean"
    if any(r.absolute is None or r.absolute[key] is None for r in runs):
        return None
    return [float(r.absolute[key]) for r in runs]  # type: ignore[index]


def load_run(run_dir: Path) -> Run | None:
    """The run in ``run_dir`` (which holds ``summary.json``), None if its summary has no evaluation."""
    summary = json.loads((run_dir / "summary.json").read_text())
    history = summary.get("eval_return_history") or []
    if summary.get("eval_return_mean") is None or not history:
        return None
    algorithm, k = str(summary["algorithm"]), int(summary["k"])
    frames = np.array([h["frames"] for h in history], dtype=float)
    finals = {"return": float(summary["eval_return_mean"])}
    curves = {"return": (frames, np.array([h["return_mean"] for h in history], dtype=float))}
    evaluations = [
        {"frames": float(h["frames"]), "returns": [float(x) for x in h.get("returns") or [h["return_mean"]]]}
        for h in history
    ]
    if summary.get("eval_win_rate") is not None:
        finals["win_rate"] = float(summary["eval_win_rate"])
        if all(h.get("win_rate") is not None for h in history):
            win = frames, np.array([h["win_rate"] for h in history], dtype=float)
        else:  # older summaries: the win rate only in the CSV log
            win = csv_curve(run_dir / "csv" / "metrics.csv", "eval/win_rate") or (
                frames[-1:],
                np.array([finals["win_rate"]]),
            )
        curves["win_rate"] = win
        for e in evaluations:
            e["win_rate"] = float(np.interp(e["frames"], win[0], win[1]))
    seed = summary["seed"] if "seed" in summary else run_config(run_dir).get("seed", 0)  # summaries before "seed"
    return Run(
        run_dir,
        algorithm,
        str(summary["env"]),
        k,
        int(seed),
        finals,
        curves,
        _overrides(run_dir),
        _optimizer(summary, run_dir, algorithm, k),
        evaluations,
        _absolute(summary),
    )


def variant_labels(runs: list[Run]) -> dict[Path, str]:
    """Each run's variant: its algorithm and the overrides that vary among its algorithm's runs on its task."""
    labels = {}
    for algorithm, task in {(r.algorithm, r.task) for r in runs}:
        same = [r for r in runs if (r.algorithm, r.task) == (algorithm, task)]
        keys = sorted({key for r in same for key in r.overrides})
        varying = [key for key in keys if len({r.overrides.get(key) for r in same}) > 1]
        for r in same:
            extra = ", ".join(f"{key}={r.overrides[key]}" for key in varying if key in r.overrides)
            labels[r.path] = f"{algorithm} ({extra})" if extra else algorithm
    return labels


def by_seed(
    runs: Sequence[Run], key: Callable[[Run], Hashable]
) -> tuple[dict[Any, dict[int, Run]], list[dict[str, str]]]:
    """Runs grouped by ``key`` and then by seed. The same group and seed twice (a run repeated): the newer run, by
    ``summary.json``'s mtime, with ``{"path": older, "replaced_by": newer}`` in the returned duplicates."""
    groups: dict[Any, dict[int, Run]] = {}
    duplicates = []
    for r in sorted(runs, key=lambda r: (r.path / "summary.json").stat().st_mtime):
        group = groups.setdefault(key(r), {})
        if r.seed in group:
            duplicates.append({"path": str(group[r.seed].path), "replaced_by": str(r.path)})
        group[r.seed] = r
    return groups, duplicates


def cell_names(cells: list[tuple[str, int, str | None]]) -> dict[tuple[str, int, str | None], str]:
    """``(variant, K, actor optimizer) -> name``: ``MADDPG K=2``, with ``(rmsprop)`` added to every name when the
    report's cells do not all use the same actor optimizer (a report never hides an optimizer difference)."""
    show = len({opt for _, _, opt in cells if opt is not None}) > 1
    names = {}
    for variant, k, opt in cells:
        algorithm, _, extra = variant.partition(" (")
        name = f"{algorithm.upper()} K={k}"
        details = [opt] if show and opt is not None else []
        details += [extra.rstrip(")")] if extra else []
        names[(variant, k, opt)] = f"{name} ({', '.join(details)})" if details else name
    return names
