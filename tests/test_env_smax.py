"""SmaxEnv: specs, masks, done/win flags, seeding and partial resets on real JaxMARL SMAX battles."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tensordict import TensorDictBase

pytest.importorskip("jaxmarl")

from torchrl.envs.utils import check_env_specs

from kpg_lightning.envs.smax import SmaxEnv, make_smax_env, masked_random_action

STOP, EAST, FIRST_ATTACK = 4, 1, 5


@pytest.fixture(scope="module")
def env_3m() -> SmaxEnv:
    return make_smax_env("3m", num_envs=8, seed=0)


@pytest.fixture(scope="module")
def env_2s3z() -> SmaxEnv:
    """2s3z with a 10-step limit, so that episodes time out (truncate) inside a short test."""
    return make_smax_env("2s3z", num_envs=4, seed=0, max_steps=10)


def focus_fire(td: TensorDictBase) -> TensorDictBase:
    """Scripted policy: every ally shoots the lowest-index enemy in range, else walks east (toward them)."""
    attack = td.get(("agents", "action_mask"))[..., FIRST_ATTACK:]
    target = attack.float().argmax(-1) + FIRST_ATTACK
    td.set(("agents", "action"), torch.where(attack.any(-1), target, torch.full_like(target, EAST)))
    return td


def stop_policy(td: TensorDictBase) -> TensorDictBase:
    td.set(("agents", "action"), torch.full(td.get(("agents", "action_mask")).shape[:-1], STOP))
    return td


def unit_health(state: torch.Tensor, n_units: int) -> torch.Tensor:
    """Health fraction of every unit from the world state (10 features per unit, health first)."""
    return state[..., : n_units * 10].unflatten(-1, (n_units, 10))[..., 0]


@pytest.mark.parametrize(
    ("fixture", "info"),
    [
        ("env_3m", dict(n_agents=3, n_actions=8, obs_shape=75, state_shape=72, episode_limit=100)),
        ("env_2s3z", dict(n_agents=5, n_actions=10, obs_shape=127, state_shape=120, episode_limit=10)),
    ],
)
def test_specs(fixture: str, info: dict[str, int], request: pytest.FixtureRequest) -> None:
    env: SmaxEnv = request.getfixturevalue(fixture)
    assert env.env_info == info
    (b,), n, a = env.batch_size, info["n_agents"], info["n_actions"]
    obs_spec = env.full_observation_spec
    assert obs_spec["agents", "observation"].shape == (b, n, info["obs_shape"])
    assert obs_spec["agents", "observation"].dtype == torch.float32
    assert obs_spec["agents", "action_mask"].shape == (b, n, a)
    assert obs_spec["agents", "action_mask"].dtype == torch.bool
    assert obs_spec["state"].shape == (b, info["state_shape"])
    assert obs_spec["battle_won"].shape == (b, 1) and obs_spec["battle_won"].dtype == torch.bool
    action_spec = env.full_action_spec["agents", "action"]
    assert action_spec.shape == (b, n) and action_spec.space.n == a
    assert not action_spec.dtype.is_floating_point
    assert env.full_reward_spec["agents", "reward"].shape == (b, n, 1)
    for key in ("done", "terminated", "truncated"):
        assert env.full_done_spec[key].shape == (b, 1)
        assert env.full_done_spec["agents", key].shape == (b, n, 1)
    check_env_specs(env)


def test_masks_at_reset_and_step(env_3m: SmaxEnv) -> None:
    td = env_3m.reset()
    mask = td["agents", "action_mask"]
    assert mask.dtype == torch.bool and mask.shape == (8, 3, 8)
    assert mask[..., STOP].all()
    assert not mask[..., FIRST_ATTACK:].any(), "the armies start out of range of each other"
    torch.manual_seed(0)
    rollout = env_3m.rollout(60, break_when_any_done=False)  # rand_action samples available actions
    taken = rollout["agents", "action_mask"].gather(-1, rollout["agents", "action"].unsqueeze(-1))
    assert taken.all()
    next_mask = rollout["next", "agents", "action_mask"]
    assert next_mask[..., STOP].all() and next_mask[..., FIRST_ATTACK:].any()
    dead = rollout["next", "agents", "observation"][..., -10] == 0  # own health is the first own feature
    assert dead.any()
    only_stop = torch.nn.functional.one_hot(torch.tensor(STOP), 8).bool()
    assert (next_mask[dead] == only_stop).all(), "a dead ally can only stop"


def test_masked_random_action_respects_mask() -> None:
    mask = torch.zeros(50, 4, 6, dtype=torch.bool)
    mask[..., 2] = True
    mask[:, 0, 5] = True
    actions = masked_random_action(mask, generator=torch.Generator().manual_seed(0))
    assert actions.shape == (50, 4)
    assert mask.gather(-1, actions.unsqueeze(-1)).all() and (actions[:, 0] == 5).any()


def test_rollout_200_flags(env_3m: SmaxEnv) -> None:
    torch.manual_seed(1)
    nxt = env_3m.rollout(200, break_when_any_done=False)["next"]
    done, terminated, truncated = nxt["done"], nxt["terminated"], nxt["truncated"]
    assert terminated.any(), "random play loses battles to the heuristic enemy"
    assert torch.equal(done, terminated | truncated) and not (terminated & truncated).any()
    assert nxt["battle_won"].dtype == torch.bool and not (nxt["battle_won"] & ~terminated).any()
    for key in ("done", "terminated", "truncated"):
        assert torch.equal(nxt["agents", key], nxt[key].unsqueeze(-2).expand_as(nxt["agents", key]))
    reward = nxt["agents", "reward"]
    assert reward.dtype == torch.float32
    assert (reward == reward[..., :1, :]).all(), "the team reward for every ally"


def test_focus_fire_wins(env_3m: SmaxEnv) -> None:
    env_3m.set_seed(0)
    nxt = env_3m.rollout(100, focus_fire, break_when_any_done=False)["next"]
    won = nxt["battle_won"].squeeze(-1)
    assert won.any(), "focus fire beats the heuristic enemy on 3m about half of the time"
    assert nxt["terminated"].squeeze(-1)[won].all()
    assert (nxt["agents", "reward"][won] >= 1.0).all(), "the +1 win bonus is in the winning step's reward"
    final = unit_health(nxt["state"][won], 6)
    assert (final[:, 3:] == 0).all() and (final[:, :3] > 0).any(-1).all()


def test_time_limit_truncates(env_2s3z: SmaxEnv) -> None:
    env_2s3z.set_seed(0)
    nxt = env_2s3z.rollout(10, stop_policy, break_when_any_done=False)["next"]
    assert not nxt["done"][:, :9].any(), "an episode lasts max_steps steps"
    assert nxt["truncated"][:, 9].all() and not nxt["terminated"].any() and not nxt["battle_won"].any()


def test_same_seed_same_rollout(env_3m: SmaxEnv) -> None:
    def run(env: SmaxEnv, seed: int) -> TensorDictBase:
        env.set_seed(seed)
        torch.manual_seed(0)
        return env.rollout(40, break_when_any_done=False)

    first = run(env_3m, 7)
    assert (run(env_3m, 7) == first).all()
    assert (run(make_smax_env("3m", num_envs=8, seed=123), 7) == first).all(), "a second instance agrees"
    assert not torch.equal(run(env_3m, 8)["next", "state"], first["next", "state"])


def test_partial_reset_of_finished_envs(env_3m: SmaxEnv) -> None:
    """Finished envs were reset inside the jitted step; ``_reset`` hands back those fresh starts."""
    env_3m.set_seed(1)
    td = env_3m.reset()
    for _ in range(100):
        td = env_3m.step(env_3m.rand_action(td))
        if td["next", "done"].any():
            break
    done = td["next", "done"].squeeze(-1)
    assert done.any() and not done.all()
    assert (unit_health(td["next", "state"][done], 6) == 0).any(-1).all(), "a side was wiped out"
    before = td["next"].clone()
    after = env_3m.reset(td["next"].clone().set("_reset", done.unsqueeze(-1)))
    assert (unit_health(after["state"][done], 6) == 1).all(), "finished envs restart at full health"
    assert (after[~done].exclude("_reset") == before[~done]).all(), "running envs are untouched"
    assert not after["done"].any()


def test_partial_reset_mid_episode(env_3m: SmaxEnv) -> None:
    """An env that is not done can be restarted alone: only it goes back to its start positions."""
    env_3m.set_seed(2)
    td = env_3m.reset()
    for _ in range(5):  # allies walk east for 5 steps (~8 units), well out of their starting box (x in 8 ± 2)
        td = env_3m.step(stop_policy(td).set(("agents", "action"), torch.full((8, 3), EAST)))["next"]
    assert not td["done"].any()
    mask = torch.zeros(8, 1, dtype=torch.bool)
    mask[0] = True
    ally_x = lambda t: t["state"][..., :30].unflatten(-1, (3, 10))[..., 1]  # noqa: E731
    before = td.clone()
    after = env_3m.reset(td.clone().set("_reset", mask))
    assert (ally_x(before)[0] > 12).all() and (ally_x(after)[0] < 11).all()
    assert (after[1:].exclude("_reset") == before[1:]).all()


def test_unknown_map_one_line_error() -> None:
    with pytest.raises(ValueError, match="MMM") as err:
        make_smax_env("MMM")
    assert "\n" not in str(err.value) and "3m" in str(err.value) and "2s3z" in str(err.value)


def test_jax_is_imported_lazily_without_preallocation() -> None:
    code = (
        "import os, sys; from kpg_lightning.envs.smax import make_smax_env; assert 'jax' not in sys.modules; "
        "os.environ.pop('XLA_PYTHON_CLIENT_PREALLOCATE', None); make_smax_env('3m'); "
        "assert os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'] == 'false'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_mmm_without_medivac_map() -> None:
    """The project's stand-in for SMAC's MMM: 7 marines and 2 marauders a side, no medivac (SMAX has none)."""
    from kpg_lightning.envs.smax import smax_map_names

    assert "MMM_no_medivac" in smax_map_names()
    env = make_smax_env("MMM_no_medivac", num_envs=2, seed=0)
    assert env.n_agents == 9
    assert [int(t) for t in env._env.scenario] == ([0] * 7 + [1] * 2) * 2  # SMAX's order: 0 marine, 1 marauder
    td = env.rollout(3, break_when_any_done=False)
    assert td["agents", "observation"].shape[:3] == (2, 3, 9)
