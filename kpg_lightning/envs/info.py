"""The environment contract in code: the TensorDict keys every adapter writes and every algorithm reads, the one rule
for the critics' global state, what the algorithms need to know about an environment, read from its TorchRL specs
(never written to config), and the helpers both sides share. Algorithms import this module, never an adapter."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.envs import EnvBase

__all__ = [
    "ACTION",
    "ACTION_DIM_MASK",
    "ACTION_MASK",
    "AGENT_DONE",
    "AGENT_TERMINATED",
    "BATTLE_WON",
    "DONE",
    "DONE_FLAGS",
    "EPISODE_REWARD",
    "GROUP",
    "OBS",
    "REWARD",
    "STATE",
    "TERMINATED",
    "TRUNCATED",
    "EnvInfo",
    "global_state",
    "masked_random_action",
]

GROUP = "agents"
"""The one agent group."""
OBS = (GROUP, "observation")
"""Per-agent observations, float ``[*B, N, obs]``."""
ACTION = (GROUP, "action")
"""Per-agent actions: continuous ``[*B, N, act]``, or discrete integers ``[*B, N]``."""
ACTION_MASK = (GROUP, "action_mask")
"""Available discrete actions, bool ``[*B, N, n_actions]``."""
ACTION_DIM_MASK = (GROUP, "action_dim_mask")
"""Real (True) and padded continuous action dimensions of uneven partitions, bool ``[*B, N, act]``."""
REWARD = (GROUP, "reward")
"""Per-agent rewards ``[*B, N, 1]``."""
EPISODE_REWARD = (GROUP, "episode_reward")
"""Running return of the current episode per agent (TorchRL's ``RewardSum``), ``[*B, N, 1]``."""
DONE, TERMINATED, TRUNCATED = "done", "terminated", "truncated"
"""Episode-end flags ``[*B, 1]`` at the root; a time limit is a truncation (targets bootstrap through it)."""
DONE_FLAGS = (DONE, TERMINATED, TRUNCATED)
AGENT_DONE, AGENT_TERMINATED = (GROUP, DONE), (GROUP, TERMINATED)
"""The root flags per agent ``[*B, N, 1]``, as TorchRL's per-agent losses read them."""
STATE = "state"
"""The simulator's global state ``[*B, S]`` at the root, where it has one (read it through :func:`global_state`)."""
BATTLE_WON = "battle_won"
"""StarCraft-like games: the episode ended in a win, bool ``[*B, 1]``."""


def global_state(td: TensorDictBase) -> Tensor:
    """What centralised critics and mixers condition on: the simulator's ``state`` where it has one, else the joint
    observation (the agents' observations concatenated, ``[*B, N * obs]``). Computed here rather than stored by the
    adapters, so replay holds the joint observation once."""
    state = td.get(STATE, None)
    return state if state is not None else td.get(OBS).flatten(-2)


def masked_random_action(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random integer actions among the available ones; ``mask`` is bool ``[..., n_actions]``."""
    flat = mask.reshape(-1, mask.shape[-1]).float()
    return torch.multinomial(flat, 1, generator=generator).reshape(mask.shape[:-1])


@dataclass(frozen=True)
class EnvInfo:
    n_agents: int
    obs_dim: int
    action_dim: int
    """Continuous action size, or the number of discrete actions."""
    discrete: bool
    state_dim: int | None
    """Size of the global ``state``; None where the env has none (critics then use the joint observation)."""
    action_low: torch.Tensor | None
    action_high: torch.Tensor | None
    has_action_mask: bool
    has_action_dim_mask: bool

    @property
    def critic_state_dim(self) -> int:
        """Size of :func:`global_state`."""
        return self.state_dim if self.state_dim is not None else self.n_agents * self.obs_dim

    @classmethod
    def from_env(cls, env: EnvBase) -> EnvInfo:
        obs_spec = env.observation_spec
        batch = len(env.batch_size)
        obs = obs_spec[OBS]
        action = env.full_action_spec[ACTION]
        n_agents = obs.shape[batch]
        discrete = not action.dtype.is_floating_point
        index = (0,) * batch
        low = high = None
        if discrete:
            action_dim = action.space.n
        else:
            action_dim = action.shape[-1]
            low, high = action.space.low[index].clone(), action.space.high[index].clone()
        keys = obs_spec.keys(True, True)
        state_dim = obs_spec[STATE].shape[-1] if STATE in keys else None
        return cls(
            n_agents=n_agents,
            obs_dim=obs.shape[-1],
            action_dim=action_dim,
            discrete=discrete,
            state_dim=state_dim,
            action_low=low,
            action_high=high,
            has_action_mask=ACTION_MASK in keys,
            has_action_dim_mask=ACTION_DIM_MASK in keys,
        )
