"""Sweep reports: ``python -m kpg_lightning.report <sweep dirs...> --out <dir> [--marl-eval out.json]``.

Finds every run below the given directories (a directory holding ``summary.json``), groups the runs into cells
(task, algorithm variant, K, actor optimizer: :mod:`kpg_lightning.report_runs`) and writes

- ``curves_<task>.png``: greedy evaluation return (win rate where the env reports wins) against environment frames,
  mean ± standard error over seeds, one line per cell;
- ``final.md``: per cell mean ± s.e., IQM with its stratified-bootstrap CI (rliable), the absolute metric where
  the runs have one, seeds present and missing; the runs without ``summary.json`` (crashed or still running);
- ``relative.md``: each K > 1 cell over every K = 1 cell of the same variant per task, in % of |K = 1|;
- ``aggregate.md``, ``improvement.md``, ``profile.png``, ``sample_efficiency.png``: rliable's IQM, mean and
  optimality gap over tasks on normalised scores, probability of improvement of each K over K = 1 (on the last
  evaluation and on the absolute metric), performance profiles and IQM curves (:mod:`kpg_lightning.report_aggregate`);
- with ``--axis KEY`` (a numeric setting of the runs' ``.hydra/config.yaml``, e.g. ``algorithm.actor_lr``):
  ``sensitivity.md`` and ``sensitivity_<task>.png``, the final metric and each ``--axis-metric`` (a
  ``csv/metrics.csv`` column, e.g. ``kpg/contraction_2``) against ``KEY``, one line per (variant without ``KEY``,
  K, actor optimizer), with ``--axis-threshold TASK=VALUE`` how many runs per point end above VALUE, and each
  K > 1 line's probability of improvement over K = 1 pooled over the values (:mod:`kpg_lightning.report_sensitivity`);
- ``results.json``: every number above; with ``--marl-eval``, marl-eval's raw-data JSON of the runs
  (:mod:`kpg_lightning.report_export`).

Cell names say what was run: ``MADDPG K=2``, with the actor optimizer (``MADDPG K=2 (rmsprop)``) whenever the
report's cells do not all use the same one. The IQM (Agarwal et al. 2021) is the mean of the middle half of the
runs (``int(n / 4)`` lowest and highest dropped, scipy's ``trim_mean(x, 0.25)``), the mean for fewer than 4 seeds.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kpg_lightning.files import dump_json, write_text
from kpg_lightning.report_runs import Run, load_run, run_config
from kpg_lightning.report_stats import iqm, iqm_ci, mean_curve, standard_error
from kpg_lightning.report_summary import summarise
from kpg_lightning.report_tables import METRIC_NAMES, final_table, fmt, relative_table

# the statistics and tables are part of this module's API (the results notebook reads them from here)
__all__ = [
    "METRIC_NAMES",
    "Run",
    "final_table",
    "find_runs",
    "fmt",
    "iqm",
    "iqm_ci",
    "main",
    "mean_curve",
    "relative_table",
    "standard_error",
    "summarise",
    "write_report",
]


def _incomplete(run_dir: Path, reason: str) -> dict[str, Any]:
    cfg = run_config(run_dir)
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


def find_runs(*roots: str | Path) -> tuple[list[Run], list[dict[str, Any]]]:
    """Every finished run below the ``roots`` and the incomplete ones (a ``.hydra`` folder but no usable summary);
    a run below two of the roots is found once."""
    runs, incomplete, seen = [], [], set()
    for root in roots:
        for folder, dirs, files in sorted(os.walk(root, followlinks=True)):  # symbolic links to sweeps are followed
            run_dir = Path(folder)
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            if "summary.json" in files:
                run = load_run(run_dir)
                if run is None:
                    incomplete.append(_incomplete(run_dir, "summary.json has no evaluation"))
                else:
                    runs.append(run)
            elif ".hydra" in dirs:
                incomplete.append(_incomplete(run_dir, "no summary.json (crashed or still running)"))
    return runs, incomplete


def write_report(
    roots: str | Path | Sequence[str | Path],
    out: str | Path,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    marl_eval: str | Path | None = None,
    compare: Sequence[tuple[str, str]] = (),
    axis: str | None = None,
    axis_metrics: Sequence[str] = (),
    axis_thresholds: Sequence[str] = (),
) -> dict[str, Any]:
    """Find the runs below ``roots`` (one directory or several), write the PNGs, the markdown tables and
    ``results.json`` to ``out`` and, with ``marl_eval``, marl-eval's JSON there; ``compare`` as in
    :func:`summarise`; with ``axis``, the sensitivity to that setting
    (:func:`kpg_lightning.report_sensitivity.sensitivity`, also of the ``axis_metrics`` columns, and with
    ``axis_thresholds``, ``TASK=VALUE`` strings, the count of runs above each task's value).

    Returns the results, with ``files`` naming what was written (and ``marl_eval_notes``: how the export aligned
    the runs).
    """
    from kpg_lightning.report_plots import write_plots
    from kpg_lightning.report_tables import aggregate_table, improvement_table, sensitivity_table

    roots = [roots] if isinstance(roots, str | Path) else list(roots)
    runs, incomplete = find_runs(*roots)
    if not runs:
        raise FileNotFoundError(f"no finished run (a directory with summary.json) below {', '.join(map(str, roots))}")
    if axis_metrics and axis is None:
        raise ValueError(f"axis_metrics={list(axis_metrics)}: need an axis (the setting they are plotted against)")
    if axis_thresholds and axis is None:
        raise ValueError(f"axis_thresholds={list(axis_thresholds)}: need an axis (the setting they are counted along)")
    thresholds: dict[str, float] = {}
    if axis is not None:  # before the bootstrap and any file: a run without a numeric axis value is an error
        from kpg_lightning.report_sensitivity import axis_value, parse_thresholds, sensitivity

        for run in runs:
            axis_value(run.path, axis)
        thresholds = parse_thresholds(axis_thresholds, sorted({r.task for r in runs}))
    results = {
        "roots": [str(r) for r in roots],
        **summarise(runs, incomplete, resamples, confidence, seed, compare=compare),
    }
    if axis is not None:
        results["sensitivity"] = sensitivity(
            runs, axis, axis_metrics, results["metric_by_task"], thresholds, confidence, resamples, seed
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = write_plots(results, out)
    tables = {
        "final.md": final_table(results),
        "relative.md": relative_table(results),
        "aggregate.md": aggregate_table(results),
        "improvement.md": improvement_table(results),
    }
    if axis is not None:
        tables["sensitivity.md"] = sensitivity_table(results)
    for name, text in tables.items():
        write_text(out / name, text)
        files.append(out / name)
    if marl_eval is not None:
        from kpg_lightning.report_export import write_marl_eval

        by_path = {r.path: r for r in runs}
        cells = [(by_path[Path(p)], g["name"]) for g in results["groups"] for p in g["runs"]]
        results["marl_eval_notes"] = write_marl_eval(cells, marl_eval)
        files.append(Path(marl_eval))
    files.append(out / "results.json")
    results["files"] = [str(f) for f in files]
    dump_json(out / "results.json", results)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kpg_lightning.report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs", type=Path, nargs="+", help="multirun directories, run directories, or any folders with runs below"
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: <first>/report)")
    parser.add_argument("--marl-eval", type=Path, default=None, help="also write marl-eval's raw-data JSON here")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level (default: 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument(
        "--compare",
        nargs=2,
        action="append",
        default=[],
        metavar=("CELL", "BASELINE"),
        help="also estimate P(CELL > BASELINE) by cell name, e.g. --compare 'POLA K=1' 'MAPPO K=1' (repeatable; "
        "every K > 1 cell against its K = 1 cells is always reported)",
    )
    parser.add_argument(
        "--axis",
        metavar="KEY",
        default=None,
        help="sensitivity to a numeric setting of the runs' .hydra/config.yaml, e.g. algorithm.actor_lr: "
        "sensitivity.md and sensitivity_<task>.png",
    )
    parser.add_argument(
        "--axis-metric",
        metavar="NAME",
        action="append",
        default=[],
        help="with --axis, also this csv/metrics.csv column (late-half mean per run), e.g. kpg/contraction_2; "
        "repeatable",
    )
    parser.add_argument(
        "--axis-threshold",
        metavar="TASK=VALUE",
        action="append",
        default=[],
        help="with --axis, count per point the runs whose final metric exceeds VALUE on TASK (exact CI, Fisher's "
        "test of K > 1 against K = 1), e.g. vmas/navigation=0; repeatable, one per task",
    )
    args = parser.parse_args(argv)
    if args.axis_metric and args.axis is None:
        parser.error("--axis-metric needs --axis KEY")
    if args.axis_threshold and args.axis is None:
        parser.error("--axis-threshold needs --axis KEY")
    if args.resamples < 1:
        parser.exit(2, f"error: --resamples={args.resamples}: must be a positive integer\n")
    if not 0 < args.confidence < 1:
        parser.exit(2, f"error: --confidence={args.confidence}: must be between 0 and 1 (exclusive)\n")
    out = args.out or args.runs[0] / "report"
    try:
        results = write_report(
            args.runs,
            out,
            args.resamples,
            args.confidence,
            args.seed,
            args.marl_eval,
            [tuple(c) for c in args.compare],
            args.axis,
            args.axis_metric,
            args.axis_threshold,
        )
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(1, f"error: {exc}\n")
    except ModuleNotFoundError as exc:
        extra = "" if "pip install" in str(exc) else ": the plots need matplotlib (pip install 'kpg-lightning[plots]')"
        parser.exit(1, f"error: {exc}{extra}\n")
    n_runs = sum(g["n"] for g in results["groups"])
    print(f"{n_runs} runs in {len(results['groups'])} groups, {len(results['incomplete'])} incomplete")
    for note in results.get("marl_eval_notes", []):
        print(f"marl-eval export: {note}")
    for path in results["files"]:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
