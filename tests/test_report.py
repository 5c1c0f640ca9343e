"""Sweeps and reports: a tiny real multirun, the report on it checked against the runs' summaries, partial sweeps,
hand-made runs for grouping and win rates, the notebook, the launcher configs (statistics: test_report_stats.py)."""

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

from kpg_lightning.report import find_runs, fmt, summarise, write_report

ROOT = Path(__file__).resolve().parents[1]
SEEDS, KS = (0, 1), (1, 2)
_has = importlib.util.find_spec
HAS_JOBLIB = _has("joblib") is not None and _has("hydra_plugins.hydra_joblib_launcher") is not None
HAS_SUBMITIT = _has("submitit") is not None and _has("hydra_plugins.hydra_submitit_launcher") is not None
needs_mpl = pytest.mark.skipif(_has("matplotlib") is None, reason="matplotlib not installed ([plots] extra)")


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
@needs_mpl
def test_report_cli_matches_the_runs_summaries(sweep, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "kpg_lightning.report", str(sweep), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_with_root(dict(os.environ)),
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 runs in 2 groups, 0 incomplete" in proc.stdout
    png = out / "curves_vmas-balance.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    final, relative = (out / "final.md").read_text(), (out / "relative.md").read_text()
    summaries = _summaries(sweep)
    means = {}
    for k in KS:
        runs = sorted((s for s in summaries if s["k"] == k), key=lambda s: s["seed"])
        values = [s["eval_return_mean"] for s in runs]
        (group,) = [g for g in results["groups"] if g["k"] == k]
        assert (group["task"], group["label"], group["n"], group["seeds"]) == ("vmas/balance", "maddpg", 2, [0, 1])
        assert group["values"] == values and group["missing_seeds"] == []
        means[k] = sum(values) / len(values)
        se = float(np.std(values, ddof=1)) / math.sqrt(len(values))
        assert group["mean"] == pytest.approx(means[k]) and group["se"] == pytest.approx(se)
        assert group["iqm"] == pytest.approx(_iqm_by_hand(values))
        low, high = group["iqm_ci"]
        assert min(values) <= low <= group["iqm"] <= high <= max(values)
        row = f"| maddpg | {k} | 2 | {fmt(means[k])} ± {fmt(se, means[k])} | {fmt(group['iqm'])} | [{fmt(low)}, "
        assert row in final
        curve = np.mean([[h["return_mean"] for h in s["eval_return_history"]] for s in runs], axis=0)
        assert group["curve"]["frames"] == [0.0, 160.0, 320.0]
        assert group["curve"]["mean"] == pytest.approx(curve.tolist())
    percent = 100 * (means[2] - means[1]) / abs(means[1])
    (row,) = results["relative"]["rows"]
    assert row["percent"] == pytest.approx(percent)
    assert f"| vmas/balance | {percent:+.1f}% |" in relative and f"**{percent:+.1f}%**" in relative


@needs_vmas
@needs_mpl
def test_partial_sweep_reports_missing_seeds_and_incomplete_runs(sweep, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial)
    (crashed,) = [
        p.parent
        for p in partial.glob("*/summary.json")
        if (json.loads(p.read_text())["k"], json.loads(p.read_text())["seed"]) == (2, 1)
    ]
    (crashed / "summary.json").unlink()
    results = write_report(partial, tmp_path / "out")
    by_k = {g["k"]: g for g in results["groups"]}
    assert (by_k[1]["n"], by_k[1]["missing_seeds"]) == (2, [])
    assert (by_k[2]["n"], by_k[2]["seeds"], by_k[2]["missing_seeds"]) == (1, [0], [1])
    assert by_k[2]["se"] is None and by_k[2]["iqm_ci"] == [by_k[2]["mean"]] * 2
    (incomplete,) = results["incomplete"]
    assert incomplete["path"] == str(crashed)
    assert (incomplete["algorithm"], incomplete["task"], incomplete["k"], incomplete["seed"]) == (
        "maddpg",
        "vmas/balance",
        2,
        1,
    )
    final = (tmp_path / "out" / "final.md").read_text()
    assert "| maddpg | 2 | 1 |" in final and final.count("| none |") == 1 and "## Incomplete runs" in final
    assert f"`{crashed}`" in final


@needs_vmas
@pytest.mark.skipif(
    any(_has(m) is None for m in ("nbclient", "nbformat", "ipykernel", "matplotlib")),
    reason="nbclient/nbformat/ipykernel/matplotlib not installed",
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
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 1
    assert sum("text/markdown" in out.get("data", {}) for out in outputs) == 2
    assert (tmp_path / "final.md").is_file() and (tmp_path / "results.json").is_file()


# -- hand-made runs ------------------------------------------------------------------------------------------------
def _fake_run(
    path: Path,
    env: str,
    k: int,
    seed: int,
    returns: list[float],
    overrides: list[str] = (),
    win_rates: list[float] | None = None,
    mtime: float | None = None,
) -> None:
    """A run directory as train.py writes it, evaluated at 0, 100, 200, ... frames."""
    (path / ".hydra").mkdir(parents=True)
    history = [{"frames": 100.0 * i, "return_mean": r, "return_std": 0.0} for i, r in enumerate(returns)]
    summary = {
        "algorithm": "maddpg",
        "env": env,
        "k": k,
        "seed": seed,
        "eval_return_mean": returns[-1],
        "eval_return_history": history,
    }
    if win_rates is not None:
        summary["eval_win_rate"] = win_rates[-1]
        (path / "csv").mkdir()
        rows = [f"{w},{100 * i}" for i, w in enumerate(win_rates)] + [",50"]  # a row of other metrics
        (path / "csv" / "metrics.csv").write_text("eval/win_rate,step\n" + "\n".join(rows) + "\n")
    (path / "summary.json").write_text(json.dumps(summary))
    (path / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in [f"seed={seed}", f"kpg.k={k}", *overrides])
    )
    if mtime is not None:
        os.utime(path / "summary.json", (mtime, mtime))


def test_groups_variants_tasks_and_duplicates(tmp_path):
    exp = {1: "+experiment=maddpg_vmas_balance", 2: "+experiment=k2_maddpg_vmas_balance"}
    finals = {
        (1, 0): [1.0, 2.0, 3.0, 4.0, 100.0],
        (2, 0): [2.0, 3.0, 4.0, 5.0, 6.0],
        (1, 1): [2.0] * 5,
        (2, 1): [3.0] * 5,
    }
    for (k, lr_index), values in finals.items():
        for seed, value in enumerate(values):
            lr = ("3e-4", "1e-3")[lr_index]
            _fake_run(
                tmp_path / f"lr{lr}_k{k}_s{seed}",
                "vmas/balance",
                k,
                seed,
                [0.0, value],
                [exp[k], f"algorithm.actor_lr={lr}", "hydra/launcher=local"],
            )
    for seed in range(2):  # a second task: SMAX reports wins, so its metric is the win rate
        _fake_run(tmp_path / f"smax_k1_s{seed}", "smax/3m", 1, seed, [0.0, 5.0], win_rates=[0.0, 0.5])
        _fake_run(tmp_path / f"smax_k2_s{seed}", "smax/3m", 2, seed, [0.0, 5.0], win_rates=[0.2, 0.75])
    _fake_run(tmp_path / "smax_k2_s1_rerun", "smax/3m", 2, 1, [0.0, 5.0], win_rates=[0.2, 1.0], mtime=4e9)
    runs, incomplete = find_runs(tmp_path)
    assert len(runs) == 25 and incomplete == []
    results = summarise(runs)
    groups = {(g["task"], g["label"], g["k"]): g for g in results["groups"]}
    g = groups[("vmas/balance", "maddpg (algorithm.actor_lr=3e-4)", 1)]
    assert g["n"] == 5 and g["mean"] == pytest.approx(22.0) and g["iqm"] == pytest.approx(3.0)
    assert results["metric_by_task"] == {"smax/3m": "win_rate", "vmas/balance": "return"}
    smax2 = groups[("smax/3m", "maddpg", 2)]
    assert smax2["values"] == [0.75, 1.0] and smax2["curve"]["frames"] == [0.0, 100.0]
    assert smax2["curve"]["mean"] == pytest.approx([0.2, 0.875])
    assert results["duplicates"][0]["replaced_by"].endswith("smax_k2_s1_rerun")
    percent = {(r["task"], r["label"]): r["percent"] for r in results["relative"]["rows"]}
    assert percent[("vmas/balance", "maddpg (algorithm.actor_lr=3e-4)")] == pytest.approx(100 * (4 - 22) / 22)
    assert percent[("vmas/balance", "maddpg (algorithm.actor_lr=1e-3)")] == pytest.approx(50.0)
    assert percent[("smax/3m", "maddpg")] == pytest.approx(75.0)
    assert results["relative"]["average"] == pytest.approx(
        {
            "maddpg (algorithm.actor_lr=3e-4) K=2": 100 * (4 - 22) / 22,
            "maddpg (algorithm.actor_lr=1e-3) K=2": 50.0,
            "maddpg K=2": 75.0,
        }
    )


def test_relative_skips_a_k1_mean_within_noise_of_zero(tmp_path):
    """A return that crosses 0 (VMAS balance) gives no percentage, only the absolute difference ± its s.e."""
    for k, values in {1: [-3.0, 1.0, 2.0], 2: [-1.0, -2.0, -3.0]}.items():
        for seed, value in enumerate(values):
            _fake_run(tmp_path / f"k{k}_s{seed}", "vmas/balance", k, seed, [0.0, value])
    results = summarise(find_runs(tmp_path)[0])
    (row,) = results["relative"]["rows"]
    se1, se2 = np.std([-3.0, 1.0, 2.0], ddof=1) / math.sqrt(3), np.std([-1.0, -2.0, -3.0], ddof=1) / math.sqrt(3)
    assert row["percent"] is None and row["note"] == "K = 1 mean within one s.e. of 0"
    assert row["diff"] == pytest.approx(-2.0 - 0.0) and row["diff_se"] == pytest.approx(math.hypot(se1, se2))
    assert results["relative"]["average"] == {}
    write_report(tmp_path, tmp_path / "report")
    relative = (tmp_path / "report" / "relative.md").read_text()
    assert "| vmas/balance | n/a |" in relative and "(K = 1 mean within one s.e. of 0)" in relative


def test_cli_without_runs_is_one_line(tmp_path):
    from kpg_lightning.report import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 1


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


@needs_mpl
def test_committed_results_match_their_runs(tmp_path):
    """docs/results: the committed tables are what the report makes of the committed runs."""
    study = ROOT / "docs" / "results" / "vmas_maddpg_k1_k2"
    write_report(study / "runs", tmp_path)
    for name in ("final.md", "relative.md"):
        assert (tmp_path / name).read_text() == (study / name).read_text(), name
    results = json.loads((tmp_path / "results.json").read_text())
    assert {(g["task"], g["k"], g["n"]) for g in results["groups"]} >= {
        (task, k, 5) for task in ("vmas/balance", "vmas/navigation", "vmas/sampling") for k in (1, 2)
    }
    assert results["incomplete"] == [] and results["duplicates"] == []
