"""marl-eval's raw-data JSON (InstaDeep's ``id-marl-eval``; Gorsane et al. 2022) of a sweep report's runs.

Layout: environment (the env family: ``vmas``, ``mamujoco``, ``smax``, ``smac``) → task (the scenario) →
algorithm (the report's cell name, lower-cased, commas replaced by ``;``: marl-eval lower-cases every key and
splits algorithm pairs on commas) → run (``seed_<seed>``) → ``step_<i>`` (``step_count``: environment frames;
``return``: one value per evaluation episode; ``win_rate``: a 1-element list, where the env reports wins) and
``absolute_metrics`` (the same metrics of the absolute evaluation). Summaries without per-episode returns give
1-element lists of their means; runs without an absolute metric get their last evaluation as ``absolute_metrics``
(counted in ``notes``).

marl-eval needs, within an environment, the same algorithms on every task, the same number of runs per algorithm
and task, the same number of steps per run and the same metrics. Where the runs differ, the export aligns them —
algorithms missing from a task of their environment are left out of that environment, the lowest seeds up to the
smallest number of runs are kept, runs are cut to the smallest number of evaluations, ``win_rate`` is dropped from
an environment where not every run has it — and says so in ``notes`` (the CLI prints them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kpg_lightning.files import dump_json
from kpg_lightning.report_runs import Run

__all__ = ["marl_eval_data", "marl_eval_name", "write_marl_eval"]


def marl_eval_name(name: str) -> str:
    """A cell name as a marl-eval algorithm key: lower case (marl-eval lower-cases keys), no commas."""
    return name.lower().replace(",", ";")


def _step(e: dict[str, Any], wins: bool) -> dict[str, Any]:
    return {"return": list(e["returns"])} | ({"win_rate": [e["win_rate"]]} if wins else {})


def marl_eval_data(runs: Sequence[tuple[Run, str]]) -> tuple[dict[str, Any], list[str]]:
    """``(raw data, notes)`` of ``(run, cell name)`` pairs (one run per cell and seed)."""
    by_env: dict[str, dict[str, dict[str, list[Run]]]] = {}
    keys: dict[str, str] = {}
    for run, name in runs:
        key = marl_eval_name(name)
        if keys.setdefault(key, name) != name:
            raise ValueError(f"cells {keys[key]!r} and {name!r} have the same marl-eval name {key!r}")
        by_env.setdefault(run.env, {}).setdefault(run.scenario, {}).setdefault(key, []).append(run)
    data: dict[str, Any] = {}
    notes: list[str] = []
    for env, tasks in sorted(by_env.items()):
        common = set.intersection(*(set(algos) for algos in tasks.values()))
        for task, algos in sorted(tasks.items()):
            for key in sorted(set(algos) - common):
                notes.append(f"{env}: {key} left out of {env}/{task}: not run on every {env} task")
                del algos[key]
        if not common:
            continue
        cells = {
            (task, key): sorted(rs, key=lambda r: r.seed) for task, algos in tasks.items() for key, rs in algos.items()
        }
        n_runs = min(len(rs) for rs in cells.values())
        kept = [r for rs in cells.values() for r in rs[:n_runs]]
        for (task, key), rs in sorted(cells.items()):
            if len(rs) > n_runs:
                dropped = ", ".join(str(r.seed) for r in rs[n_runs:])
                notes.append(f"{env}: {task} {key}: kept the {n_runs} lowest seeds, left out seed(s) {dropped}")
        n_steps = min(len(r.history) for r in kept)
        if any(len(r.history) > n_steps for r in kept):
            notes.append(f"{env}: runs cut to their first {n_steps} evaluations (the shortest run's)")
        wins = all("win_rate" in e for r in kept for e in r.history[:n_steps])
        if not wins and any("win_rate" in r.finals for r in kept):
            notes.append(f"{env}: win_rate left out: not every run reports wins")
        fallback = [r for r in kept if r.absolute is None]
        if fallback:
            notes.append(f"{env}: {len(fallback)} of {len(kept)} runs have no absolute metric: their last evaluation")
        data[env] = {}
        for task, algos in sorted(tasks.items()):
            data[env][task] = {}
            for key, rs in sorted(algos.items()):
                data[env][task][key] = {
                    f"seed_{r.seed}": _run(r, n_steps, wins) for r in sorted(rs, key=lambda r: r.seed)[:n_runs]
                }
    return data, notes


def _run(run: Run, n_steps: int, wins: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        f"step_{i}": {"step_count": round(e["frames"]), **_step(e, wins)} for i, e in enumerate(run.history[:n_steps])
    }
    a = run.absolute
    if a is None:
        out["absolute_metrics"] = _step(run.history[n_steps - 1], wins)
    else:
        win = a["win_rate"] if a["win_rate"] is not None else run.history[n_steps - 1].get("win_rate")
        out["absolute_metrics"] = {"return": list(a["returns"])} | ({"win_rate": [win]} if wins else {})
    return out


def write_marl_eval(runs: Sequence[tuple[Run, str]], path: str | Path) -> list[str]:
    """Write the marl-eval JSON of ``runs`` to ``path`` atomically; returns the alignment notes."""
    data, notes = marl_eval_data(runs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dump_json(path, data)
    return notes
