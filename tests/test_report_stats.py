"""The report's statistics and number formatting on hand-made numbers; the vectorised statistics against rliable's
own functions (the bootstrap itself is rliable's)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kpg_lightning.report_stats import (
    aggregate_estimates,
    fast_improvement,
    fast_iqm,
    fast_profile,
    iqm,
    iqm_ci,
    mean_curve,
    min_max,
    probability_of_improvement,
    probability_of_improvement_over_tasks,
    standard_error,
)
from kpg_lightning.report_tables import fmt

rliable = pytest.importorskip("rliable", reason="rliable not installed ([eval] extra)")


def test_iqm_drops_a_quarter_at_each_end():
    assert iqm([4.0, 1.0, 3.0, 2.0]) == pytest.approx(2.5)
    assert iqm([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(3.0)  # int(5/4) = 1 dropped at each end
    assert iqm(list(range(8))) == pytest.approx(3.5)  # 2, 3, 4, 5
    assert iqm([1.0, 3.0]) == pytest.approx(2.0) and iqm([7.0]) == pytest.approx(7.0)  # n < 4: the mean
    assert fast_iqm(np.array([[1, 2, 3, 4], [4, 3, 2, 100]]).T, axis=0) == pytest.approx([2.5, 3.5])
    with pytest.raises(ValueError):
        iqm([])


def test_vectorised_statistics_equal_rlibles():
    from rliable import library, metrics

    rng = np.random.default_rng(0)
    for shape in [(5, 3), (4, 1), (7, 2), (1, 3)]:
        x = rng.normal(size=shape)
        y = np.round(rng.normal(size=(shape[0] + 1, shape[1])), 1)  # ties, other numbers of runs
        assert fast_iqm(x) == pytest.approx(metrics.aggregate_iqm(x), abs=1e-12)
        assert fast_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y), abs=1e-12)
        assert fast_improvement(np.round(x), np.round(x)) == pytest.approx(0.5)
        taus = np.linspace(-2, 2, 9)
        assert fast_profile(x, taus) == pytest.approx(library.score_distributions(x, taus))


def test_iqm_ci_is_seeded_and_brackets_the_iqm():
    values = [0.1, 0.5, 0.9, 1.3, 2.0, 2.2, 3.1, 8.0, 9.5, 30.0]
    ci = iqm_ci(values, reps=300, seed=0)
    assert ci == iqm_ci(values, reps=300, seed=0)
    assert ci != iqm_ci(values, reps=300, seed=1)
    state = np.random.get_state()[1].copy()
    iqm_ci(values, reps=50, seed=3)
    assert np.array_equal(np.random.get_state()[1], state)  # the caller's global random state is restored
    assert min(values) < ci[0] < iqm(values) < ci[1] < max(values)
    assert iqm_ci([5.0, 5.0, 5.0], reps=50) == pytest.approx((5.0, 5.0))
    assert iqm_ci([2.0], reps=50) == pytest.approx((2.0, 2.0))
    wide, narrow = iqm_ci(values, 300, confidence=0.99), iqm_ci(values, 300, confidence=0.5)
    assert wide[0] <= narrow[0] and narrow[1] <= wide[1]


def test_aggregates_and_improvement_match_a_direct_rliable_call():
    from rliable import library, metrics

    rng = np.random.default_rng(1)
    scores = {"a": rng.uniform(size=(5, 3)), "b": rng.uniform(0.3, 1.3, size=(4, 3))}
    ours = aggregate_estimates(scores, reps=200, seed=7)

    def func(s):
        return np.array([metrics.aggregate_iqm(s), metrics.aggregate_mean(s), metrics.aggregate_optimality_gap(s, 1)])

    np.random.seed(7)
    points, cis = library.get_interval_estimates(scores, func, reps=200)
    for name in scores:
        for i, key in enumerate(("iqm", "mean", "optimality_gap")):
            assert ours[name][key] == pytest.approx(points[name][i])
            assert ours[name][f"{key}_ci"] == pytest.approx(cis[name][:, i].tolist())
    poi = probability_of_improvement({"b>a": (scores["b"], scores["a"])}, reps=200, seed=7)
    np.random.seed(7)
    points, cis = library.get_interval_estimates(
        {"b>a": [scores["b"], scores["a"]]}, metrics.probability_of_improvement, reps=200
    )
    assert poi["b>a"]["p"] == pytest.approx(points["b>a"]) and poi["b>a"]["ci"] == pytest.approx(
        cis["b>a"].ravel().tolist()
    )
    assert min_max([3.0, 1.0, 2.0]) == (1.0, 3.0) and min_max([2.0, 2.0]) == (1.0, 2.0)


def test_improvement_over_tasks_with_different_numbers_of_runs_uses_every_run():
    """Over tasks with 5 and 3 runs the estimate is the mean of the per-task estimates on all runs (a rectangular
    matrix would keep 3 of the first task's 5); with equal numbers its point is rliable's and its CI close to it."""
    first_x, first_y = np.array([0.9, 0.8, 0.1, 0.2, 0.95]), np.array([0.5, 0.5, 0.5, 0.85, 0.6])
    second_x, second_y = np.array([0.3, 0.7, 0.2]), np.array([0.4, 0.1, 0.2])
    got = probability_of_improvement_over_tasks([first_x, second_x], [first_y, second_y], reps=2000, seed=3)
    per_task = [fast_improvement(x[:, None], y[:, None]) for x, y in ((first_x, first_y), (second_x, second_y))]
    assert got["p"] == pytest.approx(np.mean(per_task)) == pytest.approx((14 / 25 + 6.5 / 9) / 2)  # counted by hand
    truncated = fast_improvement(np.stack([first_x[:3], second_x], 1), np.stack([first_y[:3], second_y], 1))
    assert not math.isclose(got["p"], truncated)  # what the lowest seeds alone would have said
    assert got["ci"][0] < got["p"] < got["ci"][1] and 0 <= got["ci"][0] and got["ci"][1] <= 1
    assert probability_of_improvement_over_tasks([first_x, second_x], [first_y, second_y], reps=2000, seed=3) == got

    rng = np.random.default_rng(0)
    x, y = rng.normal(0.6, 0.2, (10, 3)), rng.normal(0.5, 0.2, (10, 3))
    ours = probability_of_improvement_over_tasks(list(x.T), list(y.T), reps=4000, seed=0)
    theirs = probability_of_improvement({"x>y": (x, y)}, reps=4000, seed=0)["x>y"]
    assert ours["p"] == pytest.approx(theirs["p"])
    assert ours["ci"] == pytest.approx(theirs["ci"], abs=0.03)  # the same bootstrap, other draws
    with pytest.raises(ValueError, match="every task needs runs"):
        probability_of_improvement_over_tasks([first_x, np.array([])], [first_y, second_y])


def test_standard_error_and_fmt():
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(standard_error([1.0]))
    assert (fmt(-1.62635), fmt(3456.7), fmt(0.012345), fmt(0.0), fmt(None)) == (
        "-1.626",
        "3457",
        "0.01235",
        "0.000",
        "—",
    )
    assert fmt(0.03702, like=-1.867) == "0.037"


def test_mean_curve_aligns_or_interpolates():
    frames, mean, se = mean_curve([([0, 100], [0.0, 2.0]), ([0, 100], [2.0, 4.0])])
    assert frames.tolist() == [0, 100] and mean.tolist() == [1.0, 3.0] and se.tolist() == pytest.approx([1.0, 1.0])
    frames, mean, _ = mean_curve([([0, 100, 200], [0.0, 1.0, 2.0]), ([0, 150, 300], [0.0, 3.0, 6.0])])
    assert frames.tolist() == [0, 100, 150, 200]  # the union of both grids, up to the shorter run
    assert mean.tolist() == pytest.approx([0.0, 1.5, 2.25, 3.0])
    frames, mean, se = mean_curve([([0, 10], [1.0, 2.0])])
    assert mean.tolist() == [1.0, 2.0] and se.tolist() == [0.0, 0.0]
