"""The absolute metric (Gorsane et al., 2022): the best evaluated policy's weights, kept through checkpoints, evaluated
again at the end of training with ``eval.absolute_episodes`` greedy episodes; ``summary.json`` and ``policy.pt``.

One tiny real VMAS run (in-process) is steered by :class:`Steer`: the policy is made good before the evaluation at
320 frames and bad right after it, so the best evaluation is the one at 320 frames and the last is far worse.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import TINY, compose, needs_vmas
from lightning.pytorch import Callback
from omegaconf import OmegaConf

from kpg_lightning.callbacks import EvaluationCallback, policy_state
from kpg_lightning.checkpointing import config_changes, find_checkpoint
from kpg_lightning.train import train

DEFAULT_ABSOLUTE = [o for o in TINY if not o.startswith("eval.absolute_episodes=")]  # null: 10 x eval.episodes
RUN = [*DEFAULT_ABSOLUTE, "max_frames=960", "logger.csv=null", "+callbacks.steer._target_=test_absolute.Steer"]
RECORDS: dict[str, Any] = {}
"""What :class:`Steer` saw, for the tests: the weights evaluated at 320 frames, the final ones."""

ABSOLUTE_KEYS = {
    "absolute_metric",
    "absolute_frames",
    "absolute_episodes",
    "absolute_return_mean",
    "absolute_return_std",
    "absolute_returns",
    "absolute_win_rate",
    "absolute_wins",
    "actor_optimizer",
}


def _set_actor_output(pl_module: Any, bias: float) -> None:
    """Every action saturated one way: the actor's output layer constant (balance: +10 pushes the package to its
    goal, a return of about +3; -10 away from it, about -2.3)."""
    last = [m for m in pl_module.algorithm.actor.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(bias)


class Steer(Callback):
    """Test-only: good weights before the evaluation at 320 frames, bad ones right after it (this callback's
    ``on_train_batch_end`` runs after the evaluation's); records the weights evaluated and the final ones."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.frames == 160:
            _set_actor_output(pl_module, 10.0)
        elif pl_module.frames == 320:
            RECORDS["at_320"] = policy_state(pl_module.algorithm.policy())
            _set_actor_output(pl_module, -10.0)
        RECORDS["before_end"] = policy_state(pl_module.algorithm.policy())

    def on_train_end(self, trainer, pl_module) -> None:  # after the evaluation's (the absolute metric's) end
        RECORDS["end"] = policy_state(pl_module.algorithm.policy())


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _evaluate(state_dict: dict[str, torch.Tensor], episodes: int, seed: int) -> float:
    """Mean greedy return of ``state_dict`` in a fresh evaluation env (other episodes than the run's)."""
    from kpg_lightning.algorithms import make_algorithm
    from kpg_lightning.envs.info import EnvInfo
    from kpg_lightning.envs.registry import make_env
    from kpg_lightning.train import with_episode_returns

    cfg = compose(TINY)
    env = with_episode_returns(make_env(cfg.env, seed=seed, num_envs=episodes))
    info = EnvInfo.from_env(env)
    policy = make_algorithm(OmegaConf.to_object(cfg.algorithm), info, OmegaConf.to_object(cfg.model)).policy()
    policy.load_state_dict(state_dict)
    outcomes = EvaluationCallback(env, episodes, 0, max_steps=cfg.env.max_steps)._outcomes(policy, episodes)
    return sum(outcomes["return"]) / episodes


@pytest.fixture(scope="module")
def steered(tmp_path_factory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("absolute") / "run"
    RECORDS.clear()
    summary = train(RUN, run_dir)
    return run_dir, summary, dict(RECORDS)


@needs_vmas
def test_summary_has_the_absolute_metric_and_per_episode_returns(steered):
    run_dir, summary, _ = steered
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert ABSOLUTE_KEYS <= summary.keys()
    history = summary["eval_return_history"]
    assert [h["frames"] for h in history] == [0, 320, 640, 960]
    for h in history:
        assert len(h["returns"]) == 2 and "wins" not in h  # eval.episodes=2; VMAS reports no wins
        assert h["return_mean"] == pytest.approx(sum(h["returns"]) / 2, rel=1e-6)
    assert summary["absolute_metric"] == "return" and summary["absolute_episodes"] == 20  # null: 10 x eval.episodes
    returns = summary["absolute_returns"]
    assert len(returns) == 20 and len(set(returns)) == 20  # 10 rollouts of 2 envs, all other episodes
    mean = sum(returns) / 20
    assert summary["absolute_return_mean"] == pytest.approx(mean, rel=1e-6)
    assert summary["absolute_return_std"] == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in returns) / 20))
    assert summary["absolute_win_rate"] is None and summary["absolute_wins"] is None
    assert summary["actor_optimizer"] == "rmsprop"  # kpg.actor_optimizer=auto with K=2


@needs_vmas
def test_absolute_metric_is_the_best_evaluations_weights_not_the_last(steered):
    run_dir, summary, records = steered
    history = summary["eval_return_history"]
    best = max(range(len(history)), key=lambda i: (history[i]["return_mean"], -i))
    assert history[best]["frames"] == 320 == summary["absolute_frames"]
    assert history[-1]["return_mean"] < history[best]["return_mean"] - 3.0  # the steering worked
    saved = torch.load(run_dir / "policy.pt", weights_only=True)
    assert saved["best"]["frames"] == 320 and saved["best"]["metric"] == "return"
    assert saved["best"]["value"] == history[best]["return_mean"]
    assert _equal(saved["best"]["state_dict"], records["at_320"])
    best_return = _evaluate(saved["best"]["state_dict"], 20, seed=123)
    last_return = _evaluate(saved["last"]["state_dict"], 20, seed=123)
    assert best_return > last_return + 3.0
    assert abs(summary["absolute_return_mean"] - best_return) < 1.5, (summary["absolute_return_mean"], best_return)
    assert abs(summary["absolute_return_mean"] - last_return) > 3.0


@needs_vmas
def test_policy_file_holds_the_final_weights_and_training_state_is_unchanged(steered):
    run_dir, _, records = steered
    saved = torch.load(run_dir / "policy.pt", weights_only=True)
    assert saved["format"] == 1 and saved["config"]["max_frames"] == 960 and saved["last"]["frames"] == 960
    assert _equal(records["end"], records["before_end"])  # the absolute evaluation put the last weights back
    assert _equal(saved["last"]["state_dict"], records["end"])
    assert not _equal(saved["last"]["state_dict"], saved["best"]["state_dict"])
    assert not list(run_dir.glob(".*.tmp"))
    # the final checkpoint holds the same weights and the best evaluation in the callback's state
    ckpt = torch.load(find_checkpoint(run_dir)[0] / "model.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EvaluationCallback"))
    assert state["best"]["frames"] == 320 and _equal(state["best"]["state_dict"], records["at_320"])


@needs_vmas
def test_best_weights_survive_resume(steered, tmp_path):
    run_dir, _, records = steered
    at_640 = run_dir / "checkpoints" / "frames_000000000640"
    resumed = train([*RUN, f"resume={at_640}", "eval.absolute_episodes=4"], tmp_path / "resumed")
    assert resumed["absolute_frames"] == 320 and resumed["absolute_episodes"] == 4  # may change on resume
    assert [h["frames"] for h in resumed["eval_return_history"]] == [0, 320, 640, 960]
    saved = torch.load(tmp_path / "resumed" / "policy.pt", weights_only=True)
    assert _equal(saved["best"]["state_dict"], records["at_320"])


def test_callback_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    callback = EvaluationCallback(None, episodes=2, every_frames=0, max_steps=1)
    callback.history = [{"frames": 0.0, "return_mean": 1.0, "return_std": 0.5, "returns": [0.5, 1.5]}]
    weights = {"module.0.weight": torch.randn(3, 2), "module.1.eps": torch.tensor(0.3)}
    callback.best = {"frames": 0, "metric": "return", "value": 1.0, "state_dict": weights}
    torch.save({"callbacks": {"EvaluationCallback": callback.state_dict()}}, tmp_path / "model.ckpt")
    restored = EvaluationCallback(None, episodes=2, every_frames=0, max_steps=1)
    restored.load_state_dict(torch.load(tmp_path / "model.ckpt", weights_only=True)["callbacks"]["EvaluationCallback"])
    assert restored.history == callback.history and restored.best["frames"] == 0
    assert _equal(restored.best["state_dict"], weights)


def test_older_state_without_best_or_per_episode_returns_is_read():
    callback = EvaluationCallback(None, episodes=2, every_frames=0, max_steps=1)
    callback.load_state_dict({"history": [{"frames": 0.0, "return_mean": -1.0, "return_std": 0.0}], "next_frames": 5})
    assert callback.best is None and callback.absolute_episodes == 20
    summary = callback.summary()
    assert summary["eval_return_history"] == [{"frames": 0.0, "return_mean": -1.0, "return_std": 0.0}]
    assert all(summary[key] is None for key in ABSOLUTE_KEYS - {"actor_optimizer"})
    # a checkpoint's configuration from before eval.absolute_episodes existed resumes with it
    new = OmegaConf.to_container(compose(TINY), resolve=False)
    old = {**new, "eval": {k: v for k, v in new["eval"].items() if k != "absolute_episodes"}}
    assert config_changes(old, {**new, "eval": {**new["eval"], "absolute_episodes": 7}}) == []


def test_zero_absolute_episodes_turns_it_off():
    callback = EvaluationCallback(None, episodes=2, every_frames=0, max_steps=1, absolute_episodes=0)
    callback.history = [{"frames": 0.0, "return_mean": 1.0, "return_std": 0.0, "returns": [1.0, 1.0]}]
    callback.best = {"frames": 0, "metric": "return", "value": 1.0, "state_dict": {}}
    finished = SimpleNamespace(frames=0)  # its final evaluation is in the history: only the absolute one could run
    callback.on_train_end(finished, finished)
    assert callback.absolute is None and callback.summary()["absolute_return_mean"] is None
