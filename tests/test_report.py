"""Sweeps and reports: a tiny real multirun, the report on it checked against the runs' summaries and a direct rliable
call, its marl-eval export loaded with marl-eval's own functions, partial sweeps, the notebook, the launcher configs
(hand-made runs: test_report_runs.py; statistics: test_report_stats.py; the committed studies' runs:
test_report_committed.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, needs_vmas
from report_checks import REPS, check_with_marl_eval, needs_report

from kpg_lightning.report import fmt, write_report

ROOT = Path(__file__).resolve().parents[1]
SEEDS, KS = (0, 1), (1, 2)
_has = importlib.util.find_spec
HAS_JOBLIB = _has("joblib") is not None and _has("hydra_plugins.hydra_joblib_launcher") is not None
HAS_SUBMITIT = _has("submitit") is not None and _has("hydra_plugins.hydra_submitit_launcher") is not None


def _with_root(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        "PYTHONWARNINGS": "ignore",
    }


def _iqm_by_hand(values: list[float]) -> float:
    """The IQM as the test reads its definition: drop the floor(n/4) lowest and highest, average the rest."""
    x = sorted(values)
    cut = len(x) // 4
    return sum(x[cut : len(x) - cut]) / (len(x) - 2 * cut)


# -- a tiny real sweep ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``-m seed=0,1 kpg.k=1,2`` with the TINY overrides, through ``hydra/launcher=local`` where joblib is there."""
    root = tmp_path_factory.mktemp("sweep")
    env = _with_root(dict(os.environ))
    if HAS_JOBLIB:  # the launcher sets the thread cap itself: leave the variable unset so that is what is tested
        env.pop("OMP_NUM_THREADS", None)
    else:
        env["OMP_NUM_THREADS"] = "1"
    overrides = [o for o in TINY if not o.startswith("eval.every_frames")] + ["eval.every_frames=160"]
    cmd = [
        sys.executable,
        "-m",
        "kpg_lightning.train",
        "-m",
        *(["hydra/launcher=local"] if HAS_JOBLIB else []),
        f"seed={','.join(map(str, SEEDS))}",
        f"kpg.k={','.join(map(str, KS))}",
        "max_frames=320",
        "+experiment=maddpg_vmas_balance",
        *overrides,
        f"hydra.sweep.dir={root / 'multirun'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "multirun"


def _summaries(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]


@needs_vmas
def test_multirun_writes_one_directory_per_job(sweep):
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == len(SEEDS) * len(KS)
    for job in jobs:
        assert (job / "summary.json").is_file() and (job / ".hydra" / "overrides.yaml").is_file()
        header = (job / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
        assert {"step", "eval/return_mean"} <= set(header)
    assert {(s["k"], s["seed"]) for s in _summaries(sweep)} == {(k, s) for k in KS for s in SEEDS}


@needs_vmas
@pytest.mark.skipif(not HAS_JOBLIB, reason="hydra-joblib-launcher not installed ([sweeps] extra)")
def test_local_launcher_caps_threads_per_job(sweep):
    import joblib

    n_jobs = 2  # conf/hydra/launcher/local.yaml
    assert {s["torch_threads"] for s in _summaries(sweep)} == {max(1, joblib.cpu_count() // n_jobs)}


@needs_vmas
@needs_report
def test_report_cli_matches_the_runs_summaries(sweep, tmp_path):
    out = tmp_path / "report"
    args = [str(sweep), "--out", str(out), f"--resamples={REPS}", "--marl-eval", str(tmp_path / "marl_eval.json")]
    proc = subprocess.run(
        [sys.executable, "-m", "kpg_lightning.report", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_with_root(dict(os.environ)),
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 runs in 2 groups, 0 incomplete" in proc.stdout
    for name in ("curves_vmas-balance.png", "profile.png", "sample_efficiency.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    results = json.loads((out / "results.json").read_text())
    final, relative = (out / "final.md").read_text(), (out / "relative.md").read_text()
    summaries = _summaries(sweep)
    means, optimizer = {}, {1: "adam", 2: "rmsprop"}  # kpg.actor_optimizer=auto
    for k in KS:
        runs = sorted((s for s in summaries if s["k"] == k), key=lambda s: s["seed"])
        values = [s["eval_return_mean"] for s in runs]
        (group,) = [g for g in results["groups"] if g["k"] == k]
        assert (group["task"], group["label"], group["n"], group["seeds"]) == ("vmas/balance", "maddpg", 2, [0, 1])
        assert group["name"] == f"MADDPG K={k} ({optimizer[k]})" and group["actor_optimizer"] == optimizer[k]
        assert group["values"] == values and group["missing_seeds"] == []
        means[k] = sum(values) / len(values)
        se = float(np.std(values, ddof=1)) / math.sqrt(len(values))
        assert group["mean"] == pytest.approx(means[k]) and group["se"] == pytest.approx(se)
        assert group["iqm"] == pytest.approx(_iqm_by_hand(values))
        low, high = group["iqm_ci"]
        assert min(values) <= low <= group["iqm"] <= high <= max(values)
        row = f"| {group['name']} | {k} | {optimizer[k]} | 2 | {fmt(means[k])} ± {fmt(se, means[k])} | "
        assert row + f"{fmt(group['iqm'])} | [{fmt(low)}, " in final
        curve = np.mean([[h["return_mean"] for h in s["eval_return_history"]] for s in runs], axis=0)
        assert group["curve"]["frames"] == [0.0, 160.0, 320.0]
        assert group["curve"]["mean"] == pytest.approx(curve.tolist())
    percent = 100 * (means[2] - means[1]) / abs(means[1])
    (row,) = results["relative"]["rows"]
    assert (row["name"], row["baseline"]) == ("MADDPG K=2 (rmsprop)", "MADDPG K=1 (adam)")
    assert row["percent"] == pytest.approx(percent)
    assert f"| vmas/balance | {percent:+.1f}% |" in relative and f"**{percent:+.1f}%**" in relative
    _check_against_rliable(results, summaries, out)
    processed, final_matrix, curves = check_with_marl_eval(tmp_path / "marl_eval.json", ["return"])
    for k in KS:
        algo = f"maddpg k={k} ({optimizer[k]})"
        assert final_matrix["mean_norm_return"][algo].shape == (2, 1)
        assert curves["mean_norm_return"][algo].shape == (2, 1, 3)
        for s in summaries:
            if s["k"] == k:
                steps = processed["vmas"]["balance"][algo][f"seed_{s['seed']}"]
                assert steps["step_2"]["mean_return"] == pytest.approx(s["eval_return_mean"])
                assert [steps[f"step_{i}"]["step_count"] for i in range(3)] == [0, 160, 320]


def _check_against_rliable(results: dict, summaries: list[dict], out: Path) -> None:
    """aggregate.md / improvement.md numbers = a direct rliable call on the summaries' min–max normalised scores."""
    from rliable import library, metrics

    history = [h["return_mean"] for s in summaries for h in s["eval_return_history"]]
    low, high = min(history), max(history)
    scores = {
        f"MADDPG K={k} ({opt})": np.array(
            [
                [(s["eval_return_mean"] - low) / (high - low)]
                for s in sorted(summaries, key=lambda s: s["seed"])
                if s["k"] == k
            ]
        )
        for k, opt in ((1, "adam"), (2, "rmsprop"))
    }

    def func(x):
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x), metrics.aggregate_optimality_gap(x, 1)])

    np.random.seed(0)
    points, cis = library.get_interval_estimates(scores, func, reps=REPS)
    agg = results["aggregate"]
    assert agg["normalisation"]["vmas/balance"]["min"] == pytest.approx(low)
    table = (out / "aggregate.md").read_text()
    for row in agg["final"]:
        for i, key in enumerate(("iqm", "mean", "optimality_gap")):
            assert row[key] == pytest.approx(points[row["name"]][i])
            assert row[f"{key}_ci"] == pytest.approx(cis[row["name"]][:, i].tolist())
        assert f"| {row['name']} | 1 | 2 | {fmt(row['iqm'])} [{fmt(row['iqm_ci'][0])}, " in table
    np.random.seed(0)
    pair = [scores["MADDPG K=2 (rmsprop)"], scores["MADDPG K=1 (adam)"]]
    p, ci = library.get_interval_estimates({"x": pair}, metrics.probability_of_improvement, reps=REPS)
    (improvement,) = agg["improvement"]
    estimate = improvement["by_tasks"]["vmas/balance"]
    assert estimate["p"] == pytest.approx(p["x"]) and estimate["ci"] == pytest.approx(ci["x"].ravel().tolist())
    assert f"| MADDPG K=2 (rmsprop) | MADDPG K=1 (adam) | {estimate['p']:.2f} [" in (out / "improvement.md").read_text()
    np.random.seed(0)
    profiles, _ = library.create_performance_profile(scores, np.linspace(0, 1, 101), reps=REPS)
    for name, profile in profiles.items():
        assert agg["profiles"]["profiles"][name] == pytest.approx(profile.tolist())


@needs_vmas
@needs_report
def test_axis_on_the_sweep(sweep, tmp_path):
    """``--axis algorithm.actor_lr --axis-metric kpg/contraction_2`` on real runs: one lr (the default), the K = 2
    contraction the late-half mean of what its runs logged, K = 1 without one."""
    import csv

    results = write_report(
        sweep, tmp_path, resamples=REPS, axis="algorithm.actor_lr", axis_metrics=["kpg/contraction_2"]
    )
    (task,) = results["sensitivity"]["tasks"].values()
    k1, k2 = task["lines"]
    assert (k1["k"], k1["has_metric"], k2["k"], k2["has_metric"]) == (
        1,
        {"kpg/contraction_2": False},
        2,
        {"kpg/contraction_2": True},
    )
    (point,) = k2["points"]
    assert point["value"] == 3e-4 and point["seeds"] == list(SEEDS)
    by_hand = []
    for run in point["runs"]:
        with (Path(run) / "csv" / "metrics.csv").open() as f:
            logged = [float(row["kpg/contraction_2"]) for row in csv.DictReader(f) if row["kpg/contraction_2"]]
        assert len(logged) == 2  # one per training step (kpg.log_every_n_steps=1): 320 frames / 160
        by_hand.append(float(np.mean(logged[len(logged) // 2 :])))
    assert point["metrics"]["kpg/contraction_2"]["values"] == pytest.approx(by_hand)
    assert point["final"]["values"] == next(g for g in results["groups"] if g["k"] == 2)["values"]
    assert (tmp_path / "sensitivity_vmas-balance.png").stat().st_size > 10_000
    assert (
        "- MADDPG K=1 (adam): none of its 2 runs logs it (not logged: 2)" in (tmp_path / "sensitivity.md").read_text()
    )


@needs_vmas
@needs_report
def test_partial_sweep_reports_missing_seeds_and_incomplete_runs(sweep, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial)
    (crashed,) = [
        p.parent
        for p in partial.glob("*/summary.json")
        if (json.loads(p.read_text())["k"], json.loads(p.read_text())["seed"]) == (2, 1)
    ]
    (crashed / "summary.json").unlink()
    results = write_report(partial, tmp_path / "out", resamples=REPS)
    by_k = {g["k"]: g for g in results["groups"]}
    assert (by_k[1]["n"], by_k[1]["missing_seeds"]) == (2, [])
    assert (by_k[2]["n"], by_k[2]["seeds"], by_k[2]["missing_seeds"]) == (1, [0], [1])
    assert by_k[2]["se"] is None and by_k[2]["iqm_ci"] == pytest.approx([by_k[2]["mean"]] * 2)
    (incomplete,) = results["incomplete"]
    assert incomplete["path"] == str(crashed)
    assert (incomplete["algorithm"], incomplete["task"], incomplete["k"], incomplete["seed"]) == (
        "maddpg",
        "vmas/balance",
        2,
        1,
    )
    final = (tmp_path / "out" / "final.md").read_text()
    assert (
        "| MADDPG K=2 (rmsprop) | 2 | rmsprop | 1 |" in final
        and final.count("| none |") == 1
        and "## Incomplete runs" in final
    )
    assert f"`{crashed}`" in final


@needs_vmas
@pytest.mark.skipif(
    any(_has(m) is None for m in ("nbclient", "nbformat", "ipykernel", "matplotlib", "rliable")),
    reason="nbclient/nbformat/ipykernel/matplotlib/rliable not installed",
)
def test_notebook_executes_on_the_sweep(sweep, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PATH", os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    monkeypatch.setenv("PYTHONPATH", _with_root(dict(os.environ))["PYTHONPATH"])
    nb = nbformat.read(ROOT / "notebooks" / "results.ipynb", as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") for cell in code)  # saved without outputs
    assert 'SWEEP_DIR = Path("../multirun")' in code[0].source
    code[0].source = f"from pathlib import Path\nSWEEP_DIR = Path({str(sweep)!r})\nOUT_DIR = Path({str(tmp_path)!r})"
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [out for cell in code for out in cell.outputs]
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 3  # curves, profiles, sample efficiency
    assert sum("text/markdown" in out.get("data", {}) for out in outputs) == 4
    for name in ("final.md", "aggregate.md", "improvement.md", "profile.png", "results.json"):
        assert (tmp_path / name).is_file(), name


# -- launcher configs ----------------------------------------------------------------------------------------------
def _hydra_config(overrides: list[str]):
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    from kpg_lightning.configure import register_configs

    register_configs()

    with initialize_config_module("kpg_lightning.conf", version_base=None):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} and hydra.* interpolations resolve against it
    return cfg


@pytest.mark.skipif(not HAS_JOBLIB, reason="hydra-joblib-launcher not installed ([sweeps] extra)")
def test_local_launcher_composes():
    launcher = _hydra_config(["hydra/launcher=local"]).hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 2


@pytest.mark.skipif(not HAS_SUBMITIT, reason="hydra-submitit-launcher not installed ([sweeps] extra)")
def test_slurm_launcher_composes_into_an_sbatch_script(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    cfg = _hydra_config(["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.cpus_per_task=8"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["_target_"].endswith("SlurmLauncher") and params["submitit_folder"].endswith(".submitit/%j")
    # what SlurmLauncher.launch does, up to the sbatch call; submitit only checks that srun exists
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path), os.environ.get("PATH", "")]))
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=tmp_path / "submitit", slurm_max_num_timeout=params["max_num_timeout"]
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{
            key if key in base else f"slurm_{key}": value
            for key, value in params.items()
            if key not in {"_target_", "submitit_folder", "max_num_timeout"}
        }
    )
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --cpus-per-task=8", "#SBATCH --partition=cpu", "export OMP_NUM_THREADS=8"):
        assert line in script
