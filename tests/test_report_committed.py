"""The report on the committed studies' runs (docs/results): the committed tables are what it makes of them, and the
probability of improvement (on the absolute metric too, and between any two cells with --compare) equals the
Mann–Whitney count by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from report_checks import REPS, mann_whitney, needs_report

from kpg_lightning.report import main as report_main
from kpg_lightning.report import write_report

ROOT = Path(__file__).resolve().parents[1]


@needs_report
def test_committed_results_match_their_runs(tmp_path):
    """docs/results: the committed tables are what the report makes of the committed runs."""
    study = ROOT / "docs" / "results" / "vmas_maddpg_k1_k2"
    write_report(study / "runs", tmp_path, marl_eval=tmp_path / "marl_eval.json")
    for name in ("final.md", "relative.md", "aggregate.md", "improvement.md", "marl_eval.json"):
        assert (tmp_path / name).read_text() == (study / name).read_text(), name
    results = json.loads((tmp_path / "results.json").read_text())
    assert {(g["task"], g["k"], g["n"]) for g in results["groups"]} >= {
        (task, k, 5) for task in ("vmas/balance", "vmas/navigation", "vmas/sampling") for k in (1, 2)
    }
    assert results["incomplete"] == [] and results["duplicates"] == []


@needs_report
def test_probability_of_improvement_on_the_absolute_metric(tmp_path):
    """Each pair's P(X > Y) is also computed on the runs' absolute metric (committed SMAX study: win rates, not
    rescaled), equal to the Mann–Whitney count by hand on the absolute values, and written to improvement.md under
    its own heading; a cell without an absolute metric gets no such row."""
    runs = ROOT / "docs" / "results" / "pola_smax_3m" / "runs"
    x, y = "POLA K=1", "MAPPO K=1"
    results = write_report(runs, tmp_path, resamples=REPS, compare=[(x, y)])
    agg = results["aggregate"]
    absolute = {(r["name"], r["baseline"]): r["by_tasks"] for r in agg["improvement_absolute"]}
    final = {(r["name"], r["baseline"]): r["by_tasks"] for r in agg["improvement"]}
    assert set(absolute) == set(final) == {(x, y), ("MAPPO K=2", y)}
    values = {g["name"]: g["absolute"]["values"] for g in results["groups"]}
    finals = {g["name"]: g["values"] for g in results["groups"]}
    for (name, base), estimate in absolute.items():
        a, b = np.array(values[name]), np.array(values[base])
        by_hand = mann_whitney(a, b)
        assert estimate["smax/3m"]["p"] == pytest.approx(by_hand)
    # the committed runs order differently on the two metrics, so the rows cannot be the same numbers mislabelled
    a, b = np.array(finals["MAPPO K=2"]), np.array(finals[y])
    assert final["MAPPO K=2", y]["smax/3m"]["p"] == pytest.approx(mann_whitney(a, b))
    assert absolute["MAPPO K=2", y]["smax/3m"]["p"] != final["MAPPO K=2", y]["smax/3m"]["p"]
    text = (tmp_path / "improvement.md").read_text()
    _, tail = text.split("## On the absolute metric")
    p = absolute[x, y]["smax/3m"]
    assert f"| {x} | {y} | {p['p']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}] |" in tail
    no_absolute = write_report(ROOT / "docs" / "results" / "vmas_maddpg_k1_k2" / "runs", tmp_path / "b", resamples=REPS)
    assert not any(g["absolute"] for g in no_absolute["groups"])  # that study's runs predate the absolute metric
    assert no_absolute["aggregate"]["improvement_absolute"] == [] and no_absolute["aggregate"]["improvement"]
    assert "## On the absolute metric" not in (tmp_path / "b" / "improvement.md").read_text()


@needs_report
def test_compare_adds_a_probability_of_improvement_between_any_two_cells(tmp_path, capsys):
    """--compare: P(X > Y) of two cells the K pairing does not relate (here the two K = 1 optimizers of the committed
    study), equal to the Mann–Whitney count by hand on every task, complementary to the reverse pair, in
    improvement.md; an unknown cell name is a one-line error that lists the cells."""
    runs = ROOT / "docs" / "results" / "vmas_maddpg_k1_k2" / "runs"
    x, y = "MADDPG K=1 (rmsprop)", "MADDPG K=1 (adam)"
    results = write_report(runs, tmp_path, resamples=REPS, compare=[(x, y), (y, x)])
    rows = {(r["name"], r["baseline"]): r["by_tasks"] for r in results["aggregate"]["improvement"]}
    assert ("MADDPG K=2 (rmsprop)", y) in rows  # the K pairs stay
    finals = {(g["name"], g["task"]): g["values"] for g in results["groups"]}
    for task in ("vmas/balance", "vmas/navigation", "vmas/sampling"):
        a, b = np.array(finals[x, task]), np.array(finals[y, task])
        by_hand = mann_whitney(a, b)
        assert rows[x, y][task]["p"] == pytest.approx(by_hand)
        assert rows[x, y][task]["p"] + rows[y, x][task]["p"] == pytest.approx(1.0)
    assert rows[x, y]["vmas/sampling"]["p"] > 0.5  # RMSProp's gain at K = 1 (docs/results/vmas_maddpg_k1_k2)
    text = (tmp_path / "improvement.md").read_text()
    assert "--compare" in text.splitlines()[0] and f"| {x} | {y} |" in text
    assert results["compare"] == [[x, y], [y, x]]

    with pytest.raises(SystemExit) as exit_:
        report_main([str(runs), "--out", str(tmp_path / "bad"), "--compare", x, "POLA"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1, err
    assert "--compare: no cell named 'POLA'" in err and repr(y) in err
