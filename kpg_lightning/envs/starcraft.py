"""Specs and sizes shared by the StarCraft adapters (SMAX vectorized, SMAC one game): one contract, one place."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.data import Binary, Categorical, Composite, Unbounded

from kpg_lightning.envs.info import (
    ACTION,
    ACTION_MASK,
    BATTLE_WON,
    DONE_FLAGS,
    GROUP,
    OBS,
    REWARD,
    STATE,
    masked_random_action,
)

__all__ = ["StarCraftSpecs"]


class StarCraftSpecs:
    """Mixin for an ``EnvBase`` with ``n_agents``, ``n_actions``, ``obs_dim``, ``state_dim``, ``episode_limit``:
    builds its specs (observations, available-action masks, global state, win flag, integer actions, team reward
    per agent, done flags at the root and per agent) over its ``batch_size``."""

    n_agents: int
    n_actions: int
    obs_dim: int
    state_dim: int
    episode_limit: int

    @property
    def env_info(self) -> dict[str, int]:
        """Sizes in SMAC's ``get_env_info`` vocabulary."""
        return {
            "n_agents": self.n_agents,
            "n_actions": self.n_actions,
            "obs_shape": self.obs_dim,
            "state_shape": self.state_dim,
            "episode_limit": self.episode_limit,
        }

    def rand_action(self, tensordict: TensorDictBase | None = None) -> TensorDictBase:
        """Uniform random *available* actions (SMAC rejects unavailable ones; SMAX wastes the step)."""
        mask = None if tensordict is None else tensordict.get(ACTION_MASK, None)
        if mask is None:
            return super().rand_action(tensordict)
        tensordict.set(ACTION, masked_random_action(mask))
        return tensordict

    def _make_specs(self) -> None:
        batch, n, a, d = tuple(self.batch_size), self.n_agents, self.n_actions, self.device
        agents = (*batch, n)

        def flag(*shape: int) -> Categorical:
            return Categorical(2, shape=torch.Size((*batch, *shape)), dtype=torch.bool, device=d)

        def grouped() -> Composite:  # an empty agent group to set entries in
            return Composite({GROUP: Composite(shape=agents)}, shape=batch)

        observation, action, reward = grouped(), grouped(), grouped()
        observation[OBS] = Unbounded((*agents, self.obs_dim), dtype=torch.float32, device=d)
        observation[ACTION_MASK] = Binary(a, shape=(*agents, a), dtype=torch.bool, device=d)
        observation[STATE] = Unbounded((*batch, self.state_dim), dtype=torch.float32, device=d)
        observation[BATTLE_WON] = flag(1)
        action[ACTION] = Categorical(a, shape=agents, dtype=torch.int64, device=d)
        reward[REWARD] = Unbounded((*agents, 1), dtype=torch.float32, device=d)
        done = Composite({k: flag(1) for k in DONE_FLAGS}, shape=batch)
        done[GROUP] = Composite({k: flag(n, 1) for k in DONE_FLAGS}, shape=agents)
        self.full_observation_spec, self.full_action_spec = observation, action
        self.full_reward_spec, self.full_done_spec = reward, done
