"""The environment contract as the algorithms see it: sizes read from an env's TorchRL specs (never written to
config) and the helpers both sides share. Algorithms import this module, never an adapter."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrl.envs import EnvBase

__all__ = ["GROUP", "EnvInfo", "masked_random_action"]

GROUP = "agents"


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
        return self.state_dim if self.state_dim is not None else self.n_agents * self.obs_dim

    @classmethod
    def from_env(cls, env: EnvBase) -> EnvInfo:
        obs_spec = env.observation_spec
        batch = len(env.batch_size)
        obs = obs_spec[GROUP, "observation"]
        action = env.full_action_spec[GROUP, "action"]
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
        state_dim = obs_spec["state"].shape[-1] if "state" in keys else None
        return cls(n_agents=n_agents, obs_dim=obs.shape[-1], action_dim=action_dim, discrete=discrete,
                   state_dim=state_dim, action_low=low, action_high=high,
                   has_action_mask=(GROUP, "action_mask") in keys,
                   has_action_dim_mask=(GROUP, "action_dim_mask") in keys)
