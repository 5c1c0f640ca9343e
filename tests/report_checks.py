"""What the report tests share: the bootstrap resamples they use, the skip where the report's plotting and statistics
are not installed, the Mann–Whitney count by hand, and the check of a marl-eval JSON with marl-eval's own loaders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

_has = importlib.util.find_spec
HAS_MARL_EVAL = _has("marl_eval") is not None and _has("colorama") is not None
REPS = 200  # bootstrap resamples in tests
needs_report = pytest.mark.skipif(
    _has("matplotlib") is None or _has("rliable") is None, reason="matplotlib/rliable not installed ([plots], [eval])"
)


def mann_whitney(a: np.ndarray, b: np.ndarray) -> float:
    """P(X > Y) counted by hand over every pair of runs, ties counting one half."""
    return float(((a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])).mean())


def check_with_marl_eval(path: Path, metrics: list[str]) -> tuple[dict, dict, dict]:
    """Load a marl-eval JSON with marl-eval's own diagnosis and processing; returns (processed, final, curves) of
    its first environment, or skips (with the reason) where marl-eval is not importable."""
    if not HAS_MARL_EVAL:
        pytest.skip("id-marl-eval not installed (make install adds it without its dependencies)")
    from marl_eval.utils.data_processing_utils import create_matrices_for_rliable, data_process_pipeline
    from marl_eval.utils.diagnose_data_errors import DiagnoseData

    raw = json.loads(path.read_text())
    checks = DiagnoseData(raw).check_data()
    assert checks and all(all(v.values()) for v in checks.values()), checks
    processed = data_process_pipeline(raw_data=raw, metrics_to_normalize=["return"])
    assert "extra" in processed  # marl-eval returns the raw data unchanged when its processing fails
    env = next(iter(raw))
    final, curves = create_matrices_for_rliable(processed, env, metrics_to_normalize=["return"])
    assert set(final) == {"mean_norm_return", *(f"mean_{m}" for m in metrics if m != "return")}
    return processed, final, curves
