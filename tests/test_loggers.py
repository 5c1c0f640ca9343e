"""``logger=wandb`` and ``logger=mlflow``: a tiny run writes each one's files under its run directory, offline.

One run selects both options (``logger=[wandb,mlflow]``, each composing over the default TensorBoard + CSV); a test
per logger reads its files, skipped with the reason where its package is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import TINY, needs_vmas, run_train

pytestmark = needs_vmas

LOGGERS = {"wandb": "wandb", "mlflow": "mlflow"}  # option → the package it needs
INSTALLED = [name for name, package in LOGGERS.items() if importlib.util.find_spec(package) is not None]
RUN = [*TINY, "max_frames=320", "eval.every_frames=160"]  # two steps; evaluations at 0, 160 and 320 frames


def needs(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        name not in INSTALLED, reason=f"{LOGGERS[name]} not installed (pip install -e '.[loggers]'; in `all`)"
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loggers")
    result = run_train(root / "run", *RUN, f"logger=[{','.join(INSTALLED)}]")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in root.iterdir()) == ["run"]  # nothing written beside the run directory
    assert (root / "run" / "csv" / "metrics.csv").is_file()  # the default loggers stay
    return root / "run"


@needs("wandb")
def test_wandb_logs_offline_under_the_run_dir(run_dir):
    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    data = runs[0].read_bytes()
    assert b"eval/return_mean" in data and b"train/return" in data and b"maddpg_k2_s0" in data


@needs("mlflow")
def test_mlflow_logs_to_a_file_store_under_the_run_dir(run_dir):
    names = list((run_dir / "mlruns").glob("*/*/tags/mlflow.runName"))
    assert len(names) == 1 and names[0].read_text() == "maddpg_k2_s0", names
    metrics = names[0].parents[1] / "metrics"
    frames = [int(line.split()[2]) for line in (metrics / "eval" / "return_mean").read_text().splitlines()]
    assert frames == [0, 160, 320]  # logged against environment frames
    assert (metrics / "train" / "return").is_file()
