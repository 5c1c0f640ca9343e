"""KPG diagnostics in deep runs: per-level deltas and contraction logged and summarised; adaptive K."""

import csv
import itertools
import json

from conftest import TINY, needs_vmas, run_train

pytestmark = needs_vmas


def _rows(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_k4_run_logs_and_summarises_level_deltas(tmp_path):
    result = run_train(tmp_path / "run", *TINY, "max_frames=480", "kpg.k=4")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["kpg"]
    assert len(summary["level_delta_mean"]) == 4 and len(summary["contraction_mean"]) == 3
    deltas = summary["level_delta_mean"]
    assert deltas[0] > 0 and summary["levels_run_mean"] == 4
    # the levels contract (here so fast that level 4 may equal level 3 to float32 precision)
    assert all(later <= earlier for earlier, later in itertools.pairwise(deltas))
    assert all(0 <= ratio < 1 for ratio in summary["contraction_mean"])
    rows = [r for r in _rows(tmp_path / "run") if r.get("kpg/level_delta_4")]
    assert len(rows) == 3  # one per collected batch
    for r in rows:
        assert 0 < float(r["kpg/contraction_2"]) < 1 and float(r["kpg/level_delta_1"]) > 0
        assert float(r["kpg/levels_run"]) == 4


def test_adaptive_k_stops_early_within_the_cap(tmp_path):
    # a tolerance this loose is met as soon as two levels can be compared: every recursion stops at level 2
    result = run_train(tmp_path / "run", *TINY, "max_frames=320", "kpg.k=5", "kpg.adaptive_tol=10.0")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["kpg"]["levels_run_mean"] == 2 and len(summary["kpg"]["level_delta_mean"]) == 2
    assert set(summary["phases_s"]) == {"collect", "critic", "level_1", "level_2", "rest"}
    assert all(float(r["kpg/levels_run"]) == 2 for r in _rows(tmp_path / "run") if r.get("kpg/levels_run"))
