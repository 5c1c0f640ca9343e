"""docs/results/smax_mappo_k: K2-MAPPO against MAPPO on SMAX with Adam at both K, Appendix E.1's settings (issue 20,
part 2). The committed tables are what the report makes of the committed runs (default suite); the `slow` test
re-runs one committed run with the study's command and must reproduce its whole evaluation history (CPU runs are
deterministic with one torch thread)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import run_train
from report_checks import needs_report

from kpg_lightning.report import write_report

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "results" / "smax_mappo_k"
STUDY_OVERRIDES = ["max_frames=500000", "eval.every_frames=50000", "checkpoint.every_frames=100000"]
# SMAX map -> the seeds committed for each of MAPPO (K = 1) and K2-MAPPO on it
SEEDS = {"3m": [0, 1, 2, 3, 4], "2s3z": [0, 1, 2, 3, 4], "3s5z": [0, 1, 2, 3, 4]}

_has = importlib.util.find_spec
needs_smax = pytest.mark.skipif(_has("jaxmarl") is None, reason="jaxmarl not installed ([smax])")


@needs_report
def test_committed_study_matches_its_runs(tmp_path):
    """The committed tables are the report of the committed runs; every map has the stated seeds for both cells,
    every run finished at the full budget with Adam and the study's overrides, none crashed or duplicated."""
    results = write_report(STUDY / "runs", tmp_path, marl_eval=tmp_path / "marl_eval.json")
    for name in ("final.md", "relative.md", "aggregate.md", "improvement.md", "marl_eval.json"):
        assert (tmp_path / name).read_text() == (STUDY / name).read_text(), name
    assert results["incomplete"] == [] and results["duplicates"] == []
    expected = {(f"smax/{m}", f"MAPPO K={k}"): seeds for m, seeds in SEEDS.items() for k in (1, 2)}
    assert {(g["task"], g["name"]): g["seeds"] for g in results["groups"]} == expected
    for path in (STUDY / "runs").iterdir():
        summary = json.loads((path / "summary.json").read_text())
        smax_map = summary["env"].removeprefix("smax/")
        assert smax_map in SEEDS and summary["algorithm"] == "mappo", path.name
        assert summary["frames"] >= 500_000 and summary["stopped_by"] is None, path.name
        assert summary["actor_optimizer"] == "adam", path.name
        overrides = (path / ".hydra" / "overrides.yaml").read_text()
        experiment = "mappo" if summary["k"] == 1 else "k2_mappo"
        assert f"+experiment={experiment}_smax_{smax_map}" in overrides, path.name
        assert all(o in overrides for o in STUDY_OVERRIDES), path.name
    [improvement] = results["aggregate"]["improvement"]  # K2-MAPPO over MAPPO, per map (and over all maps)
    assert (improvement["name"], improvement["baseline"]) == ("MAPPO K=2", "MAPPO K=1")
    assert sorted(improvement["tasks"]) == sorted(f"smax/{m}" for m in SEEDS)


@pytest.mark.slow  # ~15 min on one core: one committed 500k-frame K2-MAPPO run, re-run
@needs_smax
def test_a_committed_run_reproduces(tmp_path):
    """The study's command for 3m, K2-MAPPO, seed 2 reproduces the committed run's evaluations."""
    overrides = ["+experiment=k2_mappo_smax_3m", "seed=2", *STUDY_OVERRIDES]
    result = run_train(tmp_path / "run", *overrides, timeout=3 * 3600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    committed = json.loads((STUDY / "runs" / "3m_k2_s2" / "summary.json").read_text())
    assert summary["frames"] == committed["frames"] >= 500_000
    assert summary["eval_return_history"] == committed["eval_return_history"]
