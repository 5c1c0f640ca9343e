"""The VMAS adapter follows the env contract; time limits are truncations, not terminations."""

import pytest
import torch
from conftest import needs_vmas

pytestmark = needs_vmas


def test_balance_specs_and_truncation():
    from torchrl.envs.utils import check_env_specs

    from kpg_lightning.envs.info import EnvInfo
    from kpg_lightning.envs.vmas import make_vmas_env

    env = make_vmas_env("balance", num_envs=4, max_steps=7, seed=0)
    check_env_specs(env)
    info = EnvInfo.from_env(env)
    assert (info.n_agents, info.obs_dim, info.action_dim, info.discrete, info.state_dim) == (3, 16, 2, False, None)
    assert torch.equal(info.action_low, -torch.ones(3, 2)) and torch.equal(info.action_high, torch.ones(3, 2))
    td = env.rollout(7, break_when_any_done=False)
    assert td.shape == (4, 7)
    assert td["next", "agents", "reward"].shape == (4, 7, 3, 1)
    truncated = td["next", "truncated"].squeeze(-1)
    assert truncated[:, -1].all() and not truncated[:, :-1].any()
    # a time limit is not a termination: critics bootstrap through it
    at_limit = td["next", "terminated"].squeeze(-1)[:, -1] & ~truncated[:, -1]
    assert not at_limit.any()


def test_unknown_scenario_names_the_key():
    from kpg_lightning.envs.vmas import make_vmas_env

    with pytest.raises(ValueError, match=r"env.scenario: unknown VMAS scenario 'nope'; valid: .*navigation"):
        make_vmas_env("nope")
