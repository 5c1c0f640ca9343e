"""The report's statistics and number formatting on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kpg_lightning.report_stats import bootstrap_ci, iqm, mean_curve, standard_error
from kpg_lightning.report_tables import fmt


def test_iqm_drops_a_quarter_at_each_end():
    assert iqm([4.0, 1.0, 3.0, 2.0]) == pytest.approx(2.5)
    assert iqm([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(3.0)  # int(5/4) = 1 dropped at each end
    assert iqm(list(range(8))) == pytest.approx(3.5)  # 2, 3, 4, 5
    assert iqm([1.0, 3.0]) == pytest.approx(2.0) and iqm([7.0]) == pytest.approx(7.0)  # n < 4: the mean
    assert iqm([[1, 2, 3, 4], [4, 3, 2, 100]], axis=-1) == pytest.approx([2.5, 3.5])
    with pytest.raises(ValueError):
        iqm([])


def test_bootstrap_ci_is_seeded_and_brackets_the_iqm():
    values = [0.1, 0.5, 0.9, 1.3, 2.0, 2.2, 3.1, 8.0, 9.5, 30.0]
    ci = bootstrap_ci(values, resamples=2000, seed=0)
    assert ci == bootstrap_ci(values, resamples=2000, seed=0)
    assert ci != bootstrap_ci(values, resamples=2000, seed=1)
    assert min(values) < ci[0] < iqm(values) < ci[1] < max(values)
    assert bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0) and bootstrap_ci([2.0]) == (2.0, 2.0)
    assert bootstrap_ci([0.0, 1.0], np.mean) == (0.0, 1.0)  # each extreme has probability 1/4 > 2.5%
    wide, narrow = bootstrap_ci(values, confidence=0.99), bootstrap_ci(values, confidence=0.5)
    assert wide[0] <= narrow[0] and narrow[1] <= wide[1]


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
