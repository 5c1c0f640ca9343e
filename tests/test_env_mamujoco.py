"""MaMuJoCo adapter: specs, padding/masking, truncation vs termination, seeding, batching, errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from kpg_lightning.envs.mamujoco import MamujocoEnv, make_mamujoco_env, mamujoco_info

# the adapter imports gymnasium_robotics lazily, so the module above imports without it
_has_mamujoco = importlib.util.find_spec("gymnasium_robotics") is not None
pytestmark = pytest.mark.skipif(not _has_mamujoco, reason="gymnasium-robotics (MaMuJoCo) not installed")

# scenario, agent_conf, n_agents, per-agent obs sizes, per-agent action sizes, state size (observed on
# gymnasium-robotics 1.4.2 / mujoco 4.0.0 with agent_obsk=1)
SCENARIOS = [
    ("Walker2d", "2x3", 2, (12, 12), (3, 3), 17),
    ("HalfCheetah", "2x3", 2, (12, 12), (3, 3), 17),
    ("Humanoid", "9|8", 2, (242, 170), (9, 8), 348),
    ("Ant", "2x4", 2, (63, 63), (4, 4), 105),
]


@pytest.fixture(autouse=True)
def _mujoco_log_elsewhere(tmp_path, monkeypatch):
    """MuJoCo logs compiler warnings (HalfCheetah) to ./MUJOCO_LOG.TXT: keep that file out of the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(("scenario", "conf", "n", "obs_sizes", "act_sizes", "state_dim"), SCENARIOS)
def test_specs_match_scenario(scenario, conf, n, obs_sizes, act_sizes, state_dim):
    info = mamujoco_info(scenario, conf)
    assert (info.n_agents, info.obs_sizes, info.act_sizes) == (n, obs_sizes, act_sizes)
    assert info.state_dim == state_dim
    env = make_mamujoco_env(scenario, conf, seed=0)
    obs_dim, act_dim = max(obs_sizes), max(act_sizes)
    assert env.batch_size == torch.Size([])
    assert env.observation_spec["agents", "observation"].shape == (n, obs_dim)
    assert env.observation_spec["agents", "action_dim_mask"].shape == (n, act_dim)
    assert env.observation_spec["state"].shape == (state_dim,)
    assert env.full_action_spec["agents", "action"].shape == (n, act_dim)
    assert env.full_reward_spec["agents", "reward"].shape == (n, 1)
    assert env.full_done_spec["done"].shape == (1,)
    assert env.full_done_spec["agents", "terminated"].shape == (n, 1)
    td = env.rollout(3)
    assert td["next", "agents", "observation"].dtype == torch.float32
    assert td["next", "state"].dtype == torch.float32
    assert td["next", "agents", "reward"].dtype == torch.float32
    reward = td["next", "agents", "reward"]
    assert torch.equal(reward, reward[:, :1].expand_as(reward))  # team reward replicated
    check_env_specs(env, seed=0)
    env.close()


def test_uneven_partition_is_padded_and_masked():
    env = make_mamujoco_env("Humanoid", "9|8", seed=0)
    spec = env.full_action_spec["agents", "action"]
    assert torch.equal(spec.space.high[0], torch.full((9,), 0.4))
    assert torch.equal(spec.space.high[1], torch.tensor([0.4] * 8 + [1.0]))
    assert torch.equal(spec.space.low[1], torch.tensor([-0.4] * 8 + [-1.0]))
    td = env.reset()
    mask = td["agents", "action_dim_mask"]
    assert mask[0].all() and mask[1, :8].all() and not mask[1, 8]
    assert (td["agents", "observation"][1, 170:] == 0).all()
    assert (td["agents", "observation"][1, :170] != 0).any()

    # Spy on the PettingZoo env: it must receive exactly the real dimensions of each agent.
    received, pz_step = [], env._env.step

    def spy(actions):
        received.append({agent: a.copy() for agent, a in actions.items()})
        return pz_step(actions)

    env._env.step = spy
    action = torch.linspace(-0.35, 0.35, 18).reshape(2, 9)
    action[1, 8] = 0.99  # padded dimension: must never reach the simulator
    td["agents", "action"] = action
    out = env.step(td)["next"]
    assert [v.shape for v in received[0].values()] == [(9,), (8,)]
    np.testing.assert_allclose(received[0]["agent_1"], action[1, :8].double().numpy())
    expected_ctrl = np.zeros(17)
    for i, partition in enumerate(env._env.agent_action_partitions):
        for j, node in enumerate(partition):
            expected_ctrl[node.act_ids] = action[i, j].item()
    np.testing.assert_allclose(env._env.single_agent_env.unwrapped.data.ctrl, expected_ctrl)
    assert (out["agents", "observation"][1, 170:] == 0).all()
    env.close()


def test_time_limit_is_truncation_and_resets():
    env = make_mamujoco_env("HalfCheetah", "2x3", max_steps=5, seed=0)  # HalfCheetah never terminates
    td = env.rollout(12, break_when_any_done=False)
    truncated = td["next", "truncated"].squeeze(-1)
    assert truncated.nonzero().squeeze(-1).tolist() == [4, 9]
    assert not td["next", "terminated"].any()
    assert torch.equal(td["next", "done"], td["next", "truncated"])
    per_agent = td["next", "truncated"].unsqueeze(-2).expand(-1, 2, 1)
    assert torch.equal(td["next", "agents", "truncated"], per_agent)
    assert torch.equal(td["next", "agents", "done"], td["next", "agents", "truncated"])
    env.close()


def test_fall_is_termination():
    env = make_mamujoco_env("Walker2d", "2x3", seed=0)
    torch.manual_seed(0)
    td = env.rollout(300, break_when_any_done=True)  # random actions: it falls within a few dozen steps
    assert len(td) < 300
    final = td[-1]["next"]
    assert final["terminated"].item() and final["done"].item() and not final["truncated"].item()
    assert final["agents", "terminated"].all() and not final["agents", "truncated"].any()
    assert not td[:-1]["next", "done"].any()
    env.close()


def _seeded_rollout(seed: int, steps: int = 40):
    env = make_mamujoco_env("Walker2d", "2x3", max_steps=25, seed=seed)
    torch.manual_seed(0)
    td = env.rollout(steps, break_when_any_done=False)
    env.close()
    return td


def test_seeded_rollouts_are_reproducible():
    first, second = _seeded_rollout(3), _seeded_rollout(3)
    assert (first == second).all()
    other = _seeded_rollout(4, steps=1)
    assert not torch.equal(first[0]["agents", "observation"], other[0]["agents", "observation"])


@pytest.mark.parametrize("parallel", [False, True])
def test_num_envs_batches(parallel):
    env = make_mamujoco_env("Walker2d", "2x3", num_envs=2, parallel=parallel, seed=0)
    assert env.batch_size == torch.Size([2])
    td = env.rollout(5, break_when_any_done=False)
    assert td.batch_size == torch.Size([2, 5])
    assert td["agents", "observation"].shape == (2, 5, 2, 12)
    assert td["agents", "action"].shape == (2, 5, 2, 3)
    assert td["next", "agents", "reward"].shape == (2, 5, 2, 1)
    assert td["next", "state"].shape == (2, 5, 17)
    assert td["next", "done"].shape == (2, 5, 1)
    assert not torch.equal(td[0, 0]["state"], td[1, 0]["state"])  # copies get distinct seeds
    if not parallel:
        check_env_specs(env, seed=0)
    env.close()


@pytest.mark.parametrize(
    ("scenario", "conf", "match"),
    [
        ("Walkr2d", "2x3", r"env\.scenario: .*'Walkr2d'.*Walker2d"),
        ("Walker2d", "3x2", r"env\.agent_conf: .*'2x3'"),
    ],
)
def test_bad_arguments_give_one_line_error(scenario, conf, match):
    with pytest.raises(ValueError, match=match) as error:
        make_mamujoco_env(scenario, conf)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=match):
        MamujocoEnv(scenario, conf)
