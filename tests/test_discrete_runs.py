"""Discrete K-FACMAC / K-MADDPG experiments (SMAC/SMAX, Appendix E.2): they compose, K = 1 twins differ only in K,
and a tiny real SMAX run writes its win rate."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import compose

from kpg_lightning.configure import validate

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        importlib.util.find_spec("jaxmarl") is None, reason="jaxmarl not installed (pip install 'kpg-lightning[smax]')"
    ),
]

EXPERIMENTS = [
    "k2_facmac_smac_mmm",
    "facmac_smac_mmm",
    "k2_facmac_smac_corridor",
    "facmac_smac_corridor",
    "k2_facmac_smax_mmm",
    "facmac_smax_mmm",
    "k2_maddpg_smax_3m",
    "maddpg_smax_3m",
]


def test_experiments_compose_and_twins_differ_only_in_k():
    for name in EXPERIMENTS:
        validate(compose([f"+experiment={name}"]))
    for k2, k1 in [(EXPERIMENTS[i], EXPERIMENTS[i + 1]) for i in range(0, len(EXPERIMENTS), 2)]:
        a, b = compose([f"+experiment={k2}"]), compose([f"+experiment={k1}"])
        assert (a.kpg.k, b.kpg.k) == (2, 1)
        b.kpg.k = 2
        assert a == b, k2
    cfg = compose(["+experiment=k2_facmac_smac_mmm"])
    assert (
        cfg.model.recurrent,
        cfg.model.gru_hidden,
        cfg.buffer.size,
        cfg.buffer.batch_size,
        cfg.algorithm.target_update,
        cfg.algorithm.target_update_interval,
        cfg.algorithm.actor_lr,
        cfg.algorithm.critic_lr,
        cfg.eval.episodes,
        cfg.eval.every_frames,
        cfg.max_frames,
    ) == (True, 64, 5000, 32, "hard", 200, 0.0025, 0.0005, 32, 10_000, 2_000_000)
    assert compose(["+experiment=k2_facmac_smax_mmm"]).env.map_name == "MMM_no_medivac"


TINY = [
    "env.map_name=3m",
    "env.num_envs=4",
    "collector.frames_per_batch=200",
    "max_frames=800",
    "model.actor_hidden=[16]",
    "model.critic_hidden=[16,16]",
    "model.gru_hidden=16",
    "buffer.batch_size=8",
    "buffer.updates_per_batch=2",
    "buffer.learning_starts=0",
    "eval.episodes=4",
    "eval.absolute_episodes=4",
    "eval.every_frames=400",
    "checkpoint.every_frames=800",
    "trainer.enable_progress_bar=false",
    "logger.tensorboard=null",
    "logger.csv=null",
]


@pytest.mark.parametrize(("experiment", "recurrent"), [("k2_facmac_smax_mmm", True), ("maddpg_smax_3m", False)])
def test_tiny_smax_run_writes_win_rate(tmp_path, experiment, recurrent):
    """A whole run in this process (the 4-env SMAX functions are compiled once per process)."""
    from kpg_lightning.train import train

    summary = train([f"+experiment={experiment}", *TINY], tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["train_steps"] == summary["train_steps"]
    algorithm, k = ("facmac", 2) if recurrent else ("maddpg", 1)
    assert (summary["algorithm"], summary["env"], summary["k"], summary["frames"]) == (algorithm, "smax/3m", k, 800)
    assert summary["train_steps"] > 0 and 0.0 <= summary["eval_win_rate"] <= 1.0
    assert [h["frames"] for h in summary["eval_return_history"]] == [0, 400, 800]
    assert all(len(h["wins"]) == len(h["returns"]) == 4 for h in summary["eval_return_history"])
    wins = summary["absolute_wins"]  # the absolute metric picks the best policy by win rate where there is one
    assert summary["absolute_metric"] == "win_rate" and len(wins) == len(summary["absolute_returns"]) == 4
    assert summary["absolute_win_rate"] == pytest.approx(sum(wins) / 4) and set(wins) <= {0.0, 1.0}
    assert summary["actor_optimizer"] == ("rmsprop" if k == 2 else "adam")
