"""SmacEnv: the StarCraft2Env → TorchRL mapping (on a stand-in game) and the error when SMAC is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDictBase
from torchrl.envs.utils import check_env_specs

from kpg_lightning.envs.smac import SmacEnv, SmacUnavailableError, make_smac_env

NO_OP, STOP, FIRST_ATTACK = 0, 1, 6


class FakeStarCraft2Env:
    """Stand-in for oxwhirl's ``smac.env.StarCraft2Env``: StarCraft II cannot be installed here.

    Same methods, return types and action semantics (0 no-op for dead agents only, 1 stop, 2-5 moves, 6+j
    attack enemy j; an unavailable action fails an assertion; time-outs carry ``info["episode_limit"]`` only
    with ``continuing_episode=True``). A deterministic skirmish: 3 agents against 2 enemies of 2 hit points,
    every attack on a living enemy lands (1 point, reward 1), a win adds 10; enemy fire kills agent 2 at step
    ``kill_step`` (everyone at step 2 if ``lethal``). The seed only draws observation noise.
    """

    n_agents, n_enemies, n_actions = 3, 2, 8

    def __init__(
        self,
        map_name: str = "3m",
        seed: int | None = None,
        episode_limit: int = 6,
        kill_step: int = 3,
        lethal: bool = False,
        continuing_episode: bool = False,
    ) -> None:
        self.map_name, self.episode_limit, self.kill_step = map_name, episode_limit, kill_step
        self.lethal, self.continuing_episode = lethal, continuing_episode
        self.rng = np.random.default_rng(seed)
        self.closed = False

    def get_env_info(self) -> dict[str, int]:
        return dict(state_shape=9, obs_shape=6, n_actions=8, n_agents=3, episode_limit=self.episode_limit)

    def reset(self) -> tuple[list[np.ndarray], np.ndarray]:
        self.t, self.over = 0, False
        self.alive = np.ones(self.n_agents, dtype=bool)
        self.enemy_hp = np.full(self.n_enemies, 2)
        self.noise = self.rng.normal(size=(self.n_agents, 2)).astype(np.float32)
        return self.get_obs(), self.get_state()

    def get_avail_agent_actions(self, agent_id: int) -> list[int]:
        if not self.alive[agent_id]:
            return [1] + [0] * (self.n_actions - 1)
        return [0, 1, 1, 1, 1, 1] + [int(hp > 0) for hp in self.enemy_hp]

    def get_avail_actions(self) -> list[list[int]]:
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def get_obs(self) -> list[np.ndarray]:
        head = [self.enemy_hp[0] / 2, self.enemy_hp[1] / 2, self.t / self.episode_limit]
        rows = zip(self.alive, self.noise, strict=True)
        return [np.array([alive, *head, *noise], dtype=np.float32) for alive, noise in rows]

    def get_state(self) -> np.ndarray:
        return np.array([*self.alive, *self.enemy_hp / 2, self.t, *self.noise[:, 0]], dtype=np.float32)

    def step(self, actions: list[int]) -> tuple[float, bool, dict]:
        assert not self.over, "step after the episode ended"
        actions = [int(a) for a in actions]
        for agent_id, action in enumerate(actions):
            assert self.get_avail_agent_actions(agent_id)[action] == 1, f"Agent {agent_id} can't do {action}"
        reward = 0.0
        for action in actions:
            if action >= FIRST_ATTACK and self.enemy_hp[action - FIRST_ATTACK] > 0:
                self.enemy_hp[action - FIRST_ATTACK] -= 1
                reward += 1.0
        self.t += 1
        if self.lethal and self.t >= 2:
            self.alive[:] = False
        elif self.t >= self.kill_step:
            self.alive[2] = False
        info = {"battle_won": False}
        won, lost = not self.enemy_hp.any(), not self.alive.any()
        if won or lost:
            self.over = True
            if won and not lost:
                info["battle_won"] = True
                reward += 10.0
        elif self.t >= self.episode_limit:
            self.over = True
            if self.continuing_episode:
                info["episode_limit"] = True
        return reward, self.over, info

    def close(self) -> None:
        self.closed = True


def fake_env(seed: int = 0, **kwargs: object) -> SmacEnv:
    return make_smac_env("3m", seed=seed, env_factory=FakeStarCraft2Env, **kwargs)


def focus_fire(td: TensorDictBase) -> TensorDictBase:
    """Every living agent attacks the first living enemy; dead agents no-op."""
    mask = td.get(("agents", "action_mask"))
    target = mask[:, FIRST_ATTACK:].float().argmax(-1) + FIRST_ATTACK
    td.set(("agents", "action"), torch.where(mask[:, NO_OP], NO_OP, target))
    return td


def stop(td: TensorDictBase) -> TensorDictBase:
    mask = td.get(("agents", "action_mask"))
    td.set(("agents", "action"), torch.where(mask[:, NO_OP], NO_OP, STOP))
    return td


@pytest.fixture(scope="module")
def env() -> SmacEnv:
    return fake_env()


def test_specs(env: SmacEnv) -> None:
    assert isinstance(env, SmacEnv) and env.batch_size == ()
    assert env.env_info == dict(n_agents=3, n_actions=8, obs_shape=6, state_shape=9, episode_limit=6)
    obs_spec = env.full_observation_spec
    assert obs_spec["agents", "observation"].shape == (3, 6)
    assert obs_spec["agents", "observation"].dtype == torch.float32
    assert obs_spec["agents", "action_mask"].shape == (3, 8)
    assert obs_spec["agents", "action_mask"].dtype == torch.bool
    assert obs_spec["state"].shape == (9,) and obs_spec["state"].dtype == torch.float32
    assert obs_spec["battle_won"].shape == (1,) and obs_spec["battle_won"].dtype == torch.bool
    action = env.full_action_spec["agents", "action"]
    assert action.shape == (3,) and action.space.n == 8 and action.dtype == torch.int64
    assert env.full_reward_spec["agents", "reward"].shape == (3, 1)
    for key in ("done", "terminated", "truncated"):
        assert env.full_done_spec[key].shape == (1,) and env.full_done_spec["agents", key].shape == (3, 1)
    check_env_specs(env)


def test_masks_at_reset_and_step(env: SmacEnv) -> None:
    td = env.reset()
    expected = torch.tensor(env._env.get_avail_actions(), dtype=torch.bool)
    assert torch.equal(td["agents", "action_mask"], expected) and not expected[:, NO_OP].any()
    rollout = env.rollout(10, stop)
    assert rollout.shape == (6,), "the stand-in's episode times out after 6 steps"
    mask = rollout["next", "agents", "action_mask"]  # agent 2 is killed at step 3
    assert torch.equal(mask[2:, 2], torch.nn.functional.one_hot(torch.tensor([NO_OP] * 4), 8).bool())
    assert mask[2:, :2, STOP].all() and (rollout["next", "agents", "observation"][2:, 2, 0] == 0).all()


def test_win_reward_and_flags(env: SmacEnv) -> None:
    rollout = env.rollout(10, focus_fire)
    assert rollout.shape == (2,), "3 attacks a step on two 2-hit-point enemies: won at step 2"
    nxt = rollout["next"]
    assert torch.equal(nxt["agents", "reward"], torch.tensor([2.0, 12.0]).reshape(2, 1, 1).expand(2, 3, 1))
    assert nxt["agents", "reward"].dtype == torch.float32
    assert nxt["battle_won"].squeeze(-1).tolist() == [False, True]
    assert nxt["terminated"].squeeze(-1).tolist() == [False, True]
    assert not nxt["truncated"].any() and torch.equal(nxt["done"], nxt["terminated"])
    assert torch.equal(nxt["agents", "terminated"], nxt["terminated"].unsqueeze(-2).expand(2, 3, 1))


def test_loss_is_terminated() -> None:
    nxt = fake_env(lethal=True).rollout(10, stop)["next"]
    assert nxt.shape == (2,) and nxt["terminated"][-1].item() and not nxt["truncated"].any()
    assert not nxt["battle_won"].any()


@pytest.mark.parametrize("continuing_episode", [False, True])
def test_time_out_is_truncated(continuing_episode: bool) -> None:
    """Truncated at ``episode_limit`` whether or not SMAC flags it with ``info["episode_limit"]``."""
    nxt = fake_env(kill_step=99, continuing_episode=continuing_episode).rollout(10, stop)["next"]
    assert nxt.shape == (6,) and nxt["truncated"].squeeze(-1).tolist() == [False] * 5 + [True]
    assert not nxt["terminated"].any() and not nxt["battle_won"].any()
    assert torch.equal(nxt["agents", "truncated"], nxt["truncated"].unsqueeze(-2).expand(6, 3, 1))


def test_long_masked_random_rollout_auto_resets(env: SmacEnv) -> None:
    torch.manual_seed(0)
    rollout = env.rollout(60, break_when_any_done=False)  # the stand-in asserts every action is available
    taken = rollout["agents", "action_mask"].gather(-1, rollout["agents", "action"].unsqueeze(-1))
    assert taken.all() and rollout["next", "done"].sum() >= 8


def test_same_seed_same_rollout() -> None:
    def run(seed: int) -> TensorDictBase:
        torch.manual_seed(0)
        return fake_env(seed=seed).rollout(20, break_when_any_done=False)

    assert (run(3) == run(3)).all()
    assert not torch.equal(run(3)["next", "state"], run(4)["next", "state"])


def test_set_seed_warns_and_close_closes_the_game() -> None:
    env = fake_env(seed=1)
    with pytest.warns(UserWarning, match="fixed when the game is created"):
        env.set_seed(2)
    env.close()
    assert env._env.closed and env.is_closed


def _package(root: Path, *subdirs: str) -> None:
    for sub in ("", *subdirs):
        (root / "smac" / sub).mkdir(parents=True, exist_ok=True)
        (root / "smac" / sub / "__init__.py").write_text("")


def _assert_install_hint(message: str) -> None:
    assert "pip install git+https://github.com/oxwhirl/smac.git" in message and "SC2PATH" in message
    assert "SMAC3, a different project" in message and "StarCraft II" in message


def test_error_when_smac_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "smac", None)  # find_spec("smac") is None: not installed
    with pytest.raises(SmacUnavailableError, match="`smac` package is not installed") as err:
        make_smac_env("3m")
    assert isinstance(err.value, RuntimeError)
    _assert_install_hint(str(err.value))


def test_error_when_smac_is_smac3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _package(tmp_path, "facade", "runhistory")  # the layout of PyPI's SMAC3
    monkeypatch.delitem(sys.modules, "smac", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SmacUnavailableError, match="is SMAC3") as err:
        make_smac_env("3m")
    _assert_install_hint(str(err.value))


@pytest.mark.parametrize("sc2path", [None, "does/not/exist"])
def test_error_when_game_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sc2path: str | None):
    _package(tmp_path, "env", "env/starcraft2")  # oxwhirl's layout, but no StarCraft II
    monkeypatch.delitem(sys.modules, "smac", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/StarCraftII
    if sc2path is None:
        monkeypatch.delenv("SC2PATH", raising=False)
    else:
        monkeypatch.setenv("SC2PATH", str(tmp_path / sc2path))
    with pytest.raises(SmacUnavailableError, match="StarCraft II game was not found") as err:
        make_smac_env("3m", seed=0)
    assert ("SC2PATH is unset" in str(err.value)) == (sc2path is None)
    _assert_install_hint(str(err.value))


def test_evaluation_builds_one_game_and_runs_episodes_in_rounds() -> None:
    """32 SMAC test episodes must not start 32 StarCraft II processes (nor pass ``num_envs`` to the game)."""
    from conftest import compose

    from kpg_lightning.assemble import eval_env_kwargs as _eval_envs

    assert _eval_envs(compose(["env=smac"]).env, 32) == {}
    assert _eval_envs(compose(["env=smax"]).env, 32) == {"num_envs": 32}
    assert _eval_envs(compose([]).env, 10) == {"num_envs": 10}
