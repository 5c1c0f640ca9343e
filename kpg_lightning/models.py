"""Networks shared by the algorithms: per-agent MLPs (shared with an agent id, or one per agent) and critics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchrl.modules import MLP, MultiAgentMLP

__all__ = ["ACTIVATIONS", "AgentMLP", "CentralCritic", "ModelConfig", "ScaledTanh"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


@dataclass
class ModelConfig:
    """Network architecture (Appendix E.2: MLP 400-300 ReLU, shared parameters with agent ids)."""

    actor_hidden: list[int] = field(default_factory=lambda: [400, 300])
    """Hidden layer sizes of the actor."""
    critic_hidden: list[int] = field(default_factory=lambda: [400, 300])
    """Hidden layer sizes of the critic."""
    activation: str = "relu"
    """Hidden activation: relu, tanh, elu or gelu."""
    share_params: bool = True
    """One actor for all agents with an agent-id one-hot input (True) or one actor per agent (False)."""


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation: unknown {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class AgentMLP(nn.Module):
    """Maps per-agent inputs ``[..., N, in]`` to per-agent outputs ``[..., N, out]``.

    With ``share_params`` one MLP serves every agent and sees an agent-id one-hot appended to its input;
    otherwise each agent has its own parameters (TorchRL's ``MultiAgentMLP``, evaluated in one vectorized call).
    """

    def __init__(self, n_agents: int, in_features: int, out_features: int, hidden: Sequence[int],
                 activation: str = "relu", share_params: bool = True):
        super().__init__()
        self.n_agents, self.share_params = n_agents, share_params
        act = _activation(activation)
        if share_params:
            self.net = MLP(in_features=in_features + n_agents, out_features=out_features,
                           num_cells=list(hidden), activation_class=act)
            self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)
        else:
            self.net = MultiAgentMLP(n_agent_inputs=in_features, n_agent_outputs=out_features,
                                     n_agents=n_agents, centralized=False, share_params=False,
                                     num_cells=list(hidden), activation_class=act)

    def forward(self, x: Tensor) -> Tensor:
        if not self.share_params:
            return self.net(x)
        ids = self.agent_ids.expand(*x.shape[:-1], self.n_agents)
        return self.net(torch.cat([x, ids], dim=-1))


class ScaledTanh(nn.Module):
    """Squashes pre-activations into the action box ``[low, high]`` per agent and dimension."""

    def __init__(self, low: Tensor, high: Tensor):
        super().__init__()
        self.register_buffer("loc", (high + low) / 2)
        self.register_buffer("scale", (high - low) / 2)

    def forward(self, pre: Tensor) -> Tensor:
        return self.loc + self.scale * torch.tanh(pre)


class CentralCritic(nn.Module):
    """Per-agent action values ``Q_i(s, a_1..a_N)`` from the global state (or joint observation) and joint action.

    One network shared by all agents with an agent-id one-hot, so ``Q_i`` can differ for per-agent rewards.
    :meth:`forward` scores the same joint action for every agent; :meth:`cases` scores case ``i`` (its own joint
    action, e.g. agent ``i`` live and the others fixed) for agent ``i`` only: the N cases in one pass.
    """

    def __init__(self, n_agents: int, state_dim: int, action_dim: int, hidden: Sequence[int],
                 activation: str = "relu"):
        super().__init__()
        self.n_agents = n_agents
        self.net = MLP(in_features=state_dim + n_agents * action_dim + n_agents, out_features=1,
                       num_cells=list(hidden), activation_class=_activation(activation))
        self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)

    def cases(self, state: Tensor, joint_actions: Tensor) -> Tensor:
        """``state [..., S]``, ``joint_actions [..., N(case), N, A]`` → ``Q [..., N(case), 1]``."""
        n = self.n_agents
        batch = joint_actions.shape[:-3]
        state = state.unsqueeze(-2).expand(*batch, n, state.shape[-1])
        ids = self.agent_ids.expand(*batch, n, n)
        return self.net(torch.cat([state, joint_actions.flatten(-2), ids], dim=-1))

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        """``state [..., S]``, ``action [..., N, A]`` → ``Q [..., N, 1]``."""
        n = self.n_agents
        return self.cases(state, action.unsqueeze(-3).expand(*action.shape[:-2], n, n, action.shape[-1]))
