"""The benchmark scripts run end to end on tiny budgets and write their tables (no timing is asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import needs_vmas

pytestmark = needs_vmas
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=out.parent,
    )


def test_k_overhead_table_has_paired_overheads_and_floors(tmp_path):
    out = tmp_path / "results"
    result = _run(
        "k_overhead.py",
        "--settings",
        "maddpg_vmas",
        "--ks",
        "1",
        "2",
        "--repeats",
        "2",
        "--frames",
        "1800",
        "--warmup",
        "1",
        out=out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads((out / "k_overhead.json").read_text())["maddpg_vmas"]
    assert len(runs["1"]) == len(runs["2"]) == 2 and "level_2" in runs["2"][0] and "level_2" not in runs["1"][0]
    rows = [line for line in (out / "k_overhead.md").read_text().splitlines() if line.startswith("| maddpg_vmas")]
    assert len(rows) == 2 and rows[0].split("|")[4:6] == [" +0.0% ", " +0.0% "]


def test_profile_update_writes_operator_table(tmp_path):
    out = tmp_path / "results"
    result = _run(
        "profile_update.py",
        "--setting",
        "maddpg_vmas",
        "--ks",
        "2",
        "--updates",
        "3",
        "--warmup",
        "1",
        "--frames",
        "600",
        out=out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = (out / "profile_maddpg_vmas.md").read_text()
    assert "## K = 2" in text and "aten::addmm" in text and "ms per update without the profiler" in text


def test_gpu_check_cpu_smoke_writes_goals_and_tables(tmp_path):
    out = tmp_path / "gpu"
    result = _run(
        "gpu_check.py",
        "--device",
        "cpu",
        "--quick",
        "--parts",
        "smoke,vmas",
        "--families",
        "maddpg_vmas",
        "--sizes",
        "4",
        out=out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["status"] == "done" and data["machine"]["device"] == "cpu" and "torch" in data["machine"]
    assert set(data["goals"]) == {
        "collect_4096",
        "collect_16384",
        "speedup_vs_cpu",
        "k2_over_k1",
        "speedup_vs_committed_cpu",
        "facmac_k2_cudagraphs",
        "facmac_k5_cudagraphs",
        "facmac_k2_update_ms",
        "facmac_2m_hours",
    }
    assert data["goals"]["collect_4096"]["met"] is None  # 4096 envs did not run
    smoke = data["parts"]["smoke"]
    assert smoke["status"] == "done" and smoke["runs"]["maddpg_vmas"]["status"] == "ok", smoke
    assert smoke["runs"]["maddpg_vmas"]["frames"] > 0
    runs = data["parts"]["vmas"]["runs"]
    assert set(runs) == {"k1_n4", "k2_n4", "cpu_k1_n4"} and all(r["status"] == "ok" for r in runs.values()), runs
    for run in runs.values():
        assert run["collect_fps"] > 0 and run["iteration_fps"] > 0 and run["update_ms"] > 0
        assert run["gpu_memory"] == {"device": "cpu", "max_allocated_mb": None, "max_reserved_mb": None}
    markdown = (out / "gpu_check.md").read_text()
    assert (
        "## Smoke runs" in markdown and "## VMAS balance MADDPG" in markdown and "| k2_n4 | cpu | 4 | 2 |" in markdown
    )
    assert "K overhead" not in markdown
