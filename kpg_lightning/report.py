"""Sweep reports: ``python -m kpg_lightning.report <runs or multirun dir> --out <dir>``.

Finds every run below a directory (a directory holding ``summary.json``), groups the runs by (task, algorithm
variant, K) and writes

- ``curves_<task>.png``: greedy evaluation return (win rate where the env reports wins) against environment frames,
  mean ± standard error over seeds, one line per (algorithm, K);
- ``final.md``: per group mean ± s.e., IQM and a seeded percentile-bootstrap CI of the IQM, seeds present and
  missing; the runs without ``summary.json`` (crashed or still running);
- ``relative.md``: each K over K = 1 of the same algorithm per task, in % of |K = 1|, and the average over tasks;
- ``results.json``: every number above.

The algorithm *variant* is the algorithm name plus every command-line override (``.hydra/overrides.yaml``) that
differs between runs of that algorithm on that task, except ``seed``, ``kpg.k``, ``experiment``, ``resume`` and
``hydra.*``: a sweep over ``algorithm.actor_lr`` gives one line per learning rate, while the K = 1 and K = 2 twins
of an experiment (``+experiment=maddpg_vmas_balance`` / ``k2_maddpg_vmas_balance``) share one.
The IQM (Agarwal et al. 2021) is the mean of the middle half of the runs: ``int(n / 4)`` lowest and highest values
dropped, scipy's ``trim_mean(x, 0.25)`` convention, as in rliable; it equals the mean for fewer than 4 seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from kpg_lightning.report_stats import bootstrap_ci, iqm, mean_curve, standard_error
from kpg_lightning.report_tables import METRIC_NAMES, final_table, fmt, relative_table

# the statistics and tables are part of this module's API (the results notebook reads them from here)
__all__ = [
    "METRIC_NAMES",
    "Run",
    "bootstrap_ci",
    "final_table",
    "find_runs",
    "fmt",
    "iqm",
    "main",
    "mean_curve",
    "relative_table",
    "standard_error",
    "summarise",
    "write_report",
]

_NOT_A_VARIANT = ("seed", "kpg.k", "experiment", "resume")


@dataclass
class Run:
    """One finished run: its identity, final values and evaluation curves (``metric -> (frames, values)``)."""

    path: Path
    algorithm: str
    task: str
    k: int
    seed: int
    finals: dict[str, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    overrides: dict[str, str] = field(default_factory=dict)
    """The command line's overrides (``{"algorithm.actor_lr": "3e-4", ...}``), for variant labels."""


def _overrides(run_dir: Path) -> dict[str, str]:
    """``.hydra/overrides.yaml`` as ``{key: value}``, without the keys that do not make a variant."""
    path = run_dir / ".hydra" / "overrides.yaml"
    pairs = (str(o).partition("=") for o in (OmegaConf.load(path) if path.is_file() else []))
    return {
        key.lstrip("+~"): value
        for key, _, value in pairs
        if key.lstrip("+~") not in _NOT_A_VARIANT and not key.lstrip("+~").startswith("hydra")
    }


def _config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}  # type: ignore[return-value]


def _csv_curve(path: Path, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(frames, values)`` of one column of a run's ``csv/metrics.csv`` (the last value per frame count)."""
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        points = {float(row["step"]): float(row[column]) for row in csv.DictReader(f) if row.get(column)}
    if not points:
        return None
    frames = np.array(sorted(points))
    return frames, np.array([points[x] for x in frames])


def _load_run(run_dir: Path) -> Run | None:
    summary = json.loads((run_dir / "summary.json").read_text())
    history = summary.get("eval_return_history") or []
    if summary.get("eval_return_mean") is None or not history:
        return None
    finals = {"return": float(summary["eval_return_mean"])}
    curves = {
        "return": (
            np.array([h["frames"] for h in history], dtype=float),
            np.array([h["return_mean"] for h in history], dtype=float),
        )
    }
    if summary.get("eval_win_rate") is not None:
        finals["win_rate"] = float(summary["eval_win_rate"])
        win = _csv_curve(run_dir / "csv" / "metrics.csv", "eval/win_rate")
        curves["win_rate"] = win or (curves["return"][0][-1:], np.array([finals["win_rate"]]))
    seed = summary["seed"] if "seed" in summary else _config(run_dir).get("seed", 0)  # summaries before "seed"
    return Run(
        run_dir,
        str(summary["algorithm"]),
        str(summary["env"]),
        int(summary["k"]),
        int(seed),
        finals,
        curves,
        _overrides(run_dir),
    )


def _incomplete(run_dir: Path, reason: str) -> dict[str, Any]:
    cfg = _config(run_dir)
    task = None
    try:  # the registry imports torchrl: only needed here, for runs without a summary
        from kpg_lightning.envs.registry import task_name

        task = task_name(OmegaConf.create(cfg["env"]))
    except Exception:
        pass
    return {
        "path": str(run_dir),
        "algorithm": cfg.get("algorithm", {}).get("name"),
        "task": task,
        "k": cfg.get("kpg", {}).get("k"),
        "seed": cfg.get("seed"),
        "reason": reason,
    }


def find_runs(root: str | Path) -> tuple[list[Run], list[dict[str, Any]]]:
    """Every finished run below ``root`` and the incomplete ones (a ``.hydra`` folder but no usable summary)."""
    runs, incomplete = [], []
    for folder, dirs, files in sorted(os.walk(root, followlinks=True)):  # symbolic links to sweeps are followed
        run_dir = Path(folder)
        if "summary.json" in files:
            run = _load_run(run_dir)
            if run is None:
                incomplete.append(_incomplete(run_dir, "summary.json has no evaluation"))
            else:
                runs.append(run)
        elif ".hydra" in dirs:
            incomplete.append(_incomplete(run_dir, "no summary.json (crashed or still running)"))
    return runs, incomplete


def _variant_labels(runs: Sequence[Run]) -> dict[Path, str]:
    """Label each run with its algorithm and the overrides that vary among its algorithm's runs on its task."""
    labels = {}
    for algorithm, task in {(r.algorithm, r.task) for r in runs}:
        same = [r for r in runs if (r.algorithm, r.task) == (algorithm, task)]
        keys = sorted({key for r in same for key in r.overrides})
        varying = [key for key in keys if len({r.overrides.get(key) for r in same}) > 1]
        for r in same:
            extra = ", ".join(f"{key}={r.overrides[key]}" for key in varying if key in r.overrides)
            labels[r.path] = f"{algorithm} ({extra})" if extra else algorithm
    return labels


# -- summary -------------------------------------------------------------------------------------------------------
def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def summarise(
    runs: Sequence[Run],
    incomplete: Iterable[dict[str, Any]] = (),
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """All the report's numbers (what ``results.json`` holds): groups, curves, relative improvements."""
    labels = _variant_labels(runs)
    tasks = sorted({r.task for r in runs})
    metric = {t: "win_rate" if all("win_rate" in r.finals for r in runs if r.task == t) else "return" for t in tasks}
    by_group: dict[tuple[str, str, int], dict[int, Run]] = {}
    duplicates = []
    for r in sorted(runs, key=lambda r: (r.path / "summary.json").stat().st_mtime):
        group = by_group.setdefault((r.task, labels[r.path], r.k), {})
        if r.seed in group:  # the same configuration and seed twice: keep the newer run
            duplicates.append({"path": str(group[r.seed].path), "replaced_by": str(r.path)})
        group[r.seed] = r
    all_seeds = {s for group in by_group.values() for s in group}
    groups = []
    for (task, label, k), members in sorted(by_group.items()):
        seeds = sorted(members)
        name = metric[task]
        values = [members[s].finals[name] for s in seeds]
        frames, mean, se = mean_curve([members[s].curves[name] for s in seeds])
        groups.append(
            {
                "task": task,
                "label": label,
                "algorithm": members[seeds[0]].algorithm,
                "k": k,
                "metric": name,
                "n": len(seeds),
                "seeds": seeds,
                "missing_seeds": sorted(all_seeds - set(seeds)),
                "values": values,
                "mean": float(np.mean(values)),
                "se": _clean(standard_error(values)),
                "iqm": float(iqm(values)),
                "iqm_ci": list(bootstrap_ci(values, iqm, resamples, confidence, seed)),
                "runs": [str(members[s].path) for s in seeds],
                "curve": {"frames": frames.tolist(), "mean": mean.tolist(), "se": se.tolist()},
            }
        )
    return {
        "metric_by_task": metric,
        "groups": groups,
        "relative": _relative(groups),
        "incomplete": list(incomplete),
        "duplicates": duplicates,
        "bootstrap": {"statistic": "iqm", "resamples": resamples, "confidence": confidence, "seed": seed},
    }


def _relative(groups: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """(mean_K − mean_K1) / |mean_K1| × 100 per task and variant, and its average over tasks; also the absolute
    difference and its standard error. A percentage of a K = 1 mean that is within one standard error of 0 (e.g.
    a return that crosses 0) is left out (``percent`` None, ``note`` says why): its size would be noise."""
    base = {(g["task"], g["label"]): g for g in groups if g["k"] == 1}
    rows = []
    for g in groups:
        ref = base.get((g["task"], g["label"]))
        if g["k"] == 1:
            continue
        k1 = ref["mean"] if ref else None
        ses = [x for x in (g["se"], ref["se"] if ref else None) if x is not None]
        diff = None if k1 is None else g["mean"] - k1
        diff_se = float(math.sqrt(sum(x * x for x in ses))) if ref and ses else None
        note = None
        if k1 is None:
            note = "no K = 1 run"
        elif k1 == 0 or (ref["se"] is not None and abs(k1) <= ref["se"]):
            note = "K = 1 mean within one s.e. of 0"
        percent = None if note else 100.0 * diff / abs(k1)
        rows.append(
            {
                "task": g["task"],
                "label": g["label"],
                "k": g["k"],
                "k1_mean": k1,
                "mean": g["mean"],
                "percent": percent,
                "diff": diff,
                "diff_se": diff_se,
                "note": note,
            }
        )
    average: dict[str, float] = {}
    for column in dict.fromkeys(f"{r['label']} K={r['k']}" for r in rows):
        values = [r["percent"] for r in rows if f"{r['label']} K={r['k']}" == column and r["percent"] is not None]
        if values:
            average[column] = float(np.mean(values))
    return {"rows": rows, "average": average}


def write_report(
    root: str | Path, out: str | Path, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Find the runs below ``root``, write the PNGs, ``final.md``, ``relative.md`` and ``results.json`` to ``out``.

    Returns the results, with ``files`` naming what was written.
    """
    from kpg_lightning.report_plots import write_plots

    runs, incomplete = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no finished run (a directory with summary.json) below {root}")
    results = {"root": str(root), **summarise(runs, incomplete, resamples, confidence, seed)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = write_plots(results, out)
    for name, text in (("final.md", final_table(results)), ("relative.md", relative_table(results))):
        (out / name).write_text(text)
        files.append(out / name)
    files.append(out / "results.json")
    results["files"] = [str(f) for f in files]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kpg_lightning.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="a multirun directory, a run directory, or any folder with runs below")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: <runs>/report)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level (default: 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    args = parser.parse_args(argv)
    try:
        results = write_report(args.runs, args.out or args.runs / "report", args.resamples, args.confidence, args.seed)
    except FileNotFoundError as exc:
        parser.exit(1, f"error: {exc}\n")
    except ModuleNotFoundError as exc:
        parser.exit(1, f"error: {exc}: the plots need matplotlib (pip install 'kpg-lightning[plots]')\n")
    n_runs = sum(g["n"] for g in results["groups"])
    print(f"{n_runs} runs in {len(results['groups'])} groups, {len(results['incomplete'])} incomplete")
    for path in results["files"]:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
