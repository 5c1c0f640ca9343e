"""What users run stays what it was: every ``+experiment=`` name composes to the configuration it composed before
the configuration was restructured, and the default run gives the same numbers.

Fixtures were captured from commit 44723d8 (before defaults moved to one home and experiments became
compositions): ``experiment_configs.json`` holds ``OmegaConf.to_container(compose([f"+experiment={name}"]),
resolve=False)`` for every experiment ("" is the default run); ``default_run_summary.json`` the numbers of
``python -m kpg_lightning.train seed=0 max_frames=6000`` (one torch thread, as ``run_train`` runs it, and torch's
AVX2 CPU kernels).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import compose, cpu_kernels, needs_vmas, run_train
from omegaconf import OmegaConf

from kpg_lightning.algorithms.mappo import MappoConfig
from kpg_lightning.algorithms.pola import PolaConfig

FIXTURES = Path(__file__).parent / "fixtures"
# Settings renamed after the fixtures were captured, so that one setting has one name (``epsilon_anneal_frames`` in
# every ε-greedy algorithm, ``mixer_*`` for every mixer width): the fixtures are read with the new names, values kept.
RENAMED = {"epsilon_frames": "epsilon_anneal_frames", "hypernet_hidden": "mixer_hypernet_hidden"}


# Settings added after the fixtures were captured, with their defaults (which keep what runs where as before on a
# CPU machine): where the simulator runs and where replay is stored (``auto``: the training device when possible), the
# absolute metric's episodes (null: 10 x eval.episodes; it runs after training).
ADDED = {("env", "device"): "auto", ("buffer", "device"): "auto", ("eval", "absolute_episodes"): None}
ADDED_TOP = {"compile": "none", "progress": {"every_s": 30.0}}
"""Keys added since the fixtures were captured, with their defaults: in a group, and at the root."""


def _renamed(config: dict) -> dict:
    config = {**config, "algorithm": {RENAMED.get(key, key): value for key, value in config["algorithm"].items()}}
    for (group, key), value in ADDED.items():
        config[group] = dict(sorted({**config[group], key: value}.items()))
    return dict(sorted({**config, **ADDED_TOP}.items()))


BEFORE = {
    name: _renamed(config) for name, config in json.loads((FIXTURES / "experiment_configs.json").read_text()).items()
}
CONF = Path(__file__).parents[1] / "conf"


def composed(name: str) -> dict:
    return json.loads(
        json.dumps(
            OmegaConf.to_container(compose([f"+experiment={name}"] if name else []), resolve=False),
            sort_keys=True,
            default=str,
        )
    )


@pytest.mark.parametrize("name", sorted(BEFORE), ids=lambda n: n or "default")
def test_experiment_composes_as_before(name):
    assert composed(name) == BEFORE[name]


def _as_pola(twin: dict) -> dict:
    """``twin`` (a K2-MAPPO experiment) with algorithm pola — MAPPO's settings kept, POLA's own at their defaults —
    and K = 1."""
    mappo = {f.name for f in dataclasses.fields(MappoConfig)}
    own = {f.name: f.default for f in dataclasses.fields(PolaConfig) if f.name not in mappo}
    return {**twin, "algorithm": {**twin["algorithm"], "name": "pola", **own}, "kpg": {**twin["kpg"], "k": 1}}


SMAX_ON_POLICY_MAPS = ("3m", "2s3z", "3s5z", "27m_vs_30m")
ADDED_EXPERIMENTS = {f"pola_smax_{m}": (f"k2_mappo_smax_{m}", _as_pola) for m in SMAX_ON_POLICY_MAPS}
"""Experiments added after the fixtures were captured: each composes as an experiment of the fixtures (its twin)
with a stated change, so what the twin composes to is pinned and the change is all that differs."""


@pytest.mark.parametrize("name", sorted(ADDED_EXPERIMENTS))
def test_added_experiment_composes_as_its_twin_changed(name):
    twin, change = ADDED_EXPERIMENTS[name]
    assert composed(name) == change(BEFORE[twin])


def test_every_experiment_has_a_fixture():
    expected = sorted([n for n in BEFORE if n] + list(ADDED_EXPERIMENTS))
    assert sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")) == expected


NUMBERS = ("frames", "train_steps", "iterations", "eval_return_mean", "eval_return_history", "kpg")


FIXTURE_CPU_CAPABILITY = "AVX2"
"""The vector width of torch's CPU kernels the fixture was captured with: the last bits of a float reduction depend on
it (under AVX512 the run's level deltas differ from the fixture's in the sixth digit, its returns not at all), so the
run is pinned to it to stay comparable bit for bit on any x86 machine that has it."""


@needs_vmas
def test_default_run_gives_the_same_numbers(tmp_path):
    absolute = "eval.absolute_episodes=10"  # after training (numbers unchanged); the default 100 take ~15 s more
    flags = ("trainer.enable_progress_bar=false", "logger.tensorboard=null", absolute)
    pinned = cpu_kernels(FIXTURE_CPU_CAPABILITY)
    result = run_train(tmp_path / "run", "seed=0", "max_frames=6000", *flags, env=pinned)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    expected = json.loads((FIXTURES / "default_run_summary.json").read_text())
    for h in summary["eval_return_history"]:  # per-episode returns were added since (their means are compared)
        assert len(h.pop("returns")) == 10 and "wins" not in h
    assert summary["absolute_episodes"] == 10 and summary["absolute_frames"] == 0  # the best: the initial policy
    platform = summary["platform"]  # what the numbers depend on beside the configuration, as the run saw it
    assert platform["cpu_capability"] == FIXTURE_CPU_CAPABILITY and platform["gpu"] is None
    assert platform["versions"]["torch"] == torch.__version__ and "vmas" in platform["versions"]
    assert {key: summary[key] for key in NUMBERS} == {key: expected[key] for key in NUMBERS}
