"""Networks shared by the algorithms: per-agent MLPs (shared with an agent id, or one per agent) and critics.

Their settings' schema is :class:`kpg_lightning.config.ModelConfig`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchrl.data import Unbounded
from torchrl.envs import InitTracker, TensorDictPrimer, Transform
from torchrl.modules import MLP, MultiAgentMLP

from kpg_lightning.config import ModelConfig

__all__ = ["ACTIVATIONS", "AgentGRU", "AgentMLP", "CentralCritic", "ScaledTanh", "agent_body", "recurrent_transforms"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation: unknown {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class AgentMLP(nn.Module):
    """Maps per-agent inputs ``[..., N, in]`` to per-agent outputs ``[..., N, out]``.

    With ``share_params`` one MLP serves every agent and sees an agent-id one-hot appended to its input;
    otherwise each agent has its own parameters (TorchRL's ``MultiAgentMLP``, evaluated in one vectorized call).
    """

    def __init__(
        self,
        n_agents: int,
        in_features: int,
        out_features: int,
        hidden: Sequence[int],
        activation: str = "relu",
        share_params: bool = True,
    ):
        super().__init__()
        self.n_agents, self.share_params = n_agents, share_params
        act = _activation(activation)
        if share_params:
            self.net = MLP(
                in_features=in_features + n_agents,
                out_features=out_features,
                num_cells=list(hidden),
                activation_class=act,
            )
            self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)
        else:
            self.net = MultiAgentMLP(
                n_agent_inputs=in_features,
                n_agent_outputs=out_features,
                n_agents=n_agents,
                centralized=False,
                share_params=False,
                num_cells=list(hidden),
                activation_class=act,
            )

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
    """Action values of every agent from the global state (or joint observation) and the joint action.

    ``per_agent`` (default): ``Q_i(s, a_1..a_N)``, one network shared by all agents with an agent-id one-hot, so
    ``Q_i`` can differ for per-agent rewards; it scores N rows per sample. Otherwise one team value ``Q(s, a)``
    per sample that every agent shares (BenchMARL's shared centralised critic): one row per sample.
    :meth:`forward` scores the same joint action for every agent; :meth:`cases` scores case ``i`` (its own joint
    action, e.g. agent ``i`` live and the others fixed) for agent ``i`` only: the N cases in one pass.
    """

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        activation: str = "relu",
        per_agent: bool = True,
    ):
        super().__init__()
        self.n_agents, self.per_agent = n_agents, per_agent
        self.net = MLP(
            in_features=state_dim + n_agents * action_dim + (n_agents if per_agent else 0),
            out_features=1,
            num_cells=list(hidden),
            activation_class=_activation(activation),
        )
        self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)

    def cases(self, state: Tensor, joint_actions: Tensor) -> Tensor:
        """``state [..., S]``, ``joint_actions [..., N(case), N, A]`` → ``Q [..., N(case), 1]``."""
        n = self.n_agents
        batch = joint_actions.shape[:-3]
        inputs = [state.unsqueeze(-2).expand(*batch, n, state.shape[-1]), joint_actions.flatten(-2)]
        if self.per_agent:
            inputs.append(self.agent_ids.expand(*batch, n, n))
        return self.net(torch.cat(inputs, dim=-1))

    def team(self, state: Tensor, action: Tensor) -> Tensor:
        """The team value ``Q(s, a)`` ``[..., 1]`` of ``action [..., N, A]`` (not ``per_agent`` only)."""
        return self.net(torch.cat([state, action.flatten(-2)], dim=-1))

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        """``state [..., S]``, ``action [..., N, A]`` → ``Q [..., N, 1]``."""
        n = self.n_agents
        if not self.per_agent:
            return self.team(state, action).unsqueeze(-2).expand(*action.shape[:-2], n, 1)
        return self.cases(state, action.unsqueeze(-3).expand(*action.shape[:-2], n, n, action.shape[-1]))


class AgentGRU(nn.Module):
    """Recurrent per-agent network shared by all agents (agent-id one-hot input): embed → GRU → MLP head.

    ``embed`` is one layer of ``hidden[0]`` units, the GRU has ``gru_hidden`` units and the head the remaining
    ``hidden[1:]`` layers (JaxMARL's ``ActorRNN`` with ``hidden=[128, 128]``). The hidden state is zeroed where
    ``is_init`` marks an episode's first step, so episodes never see each other's memory.

    - :meth:`forward` — one step (collection): ``x [..., N, F]``, ``h [..., N, H]``, ``is_init [..., 1]`` →
      ``(out [..., N, O], h' [..., N, H])``.
    - :meth:`sequence` — whole rollouts (training): ``x [B, T, N, F]``, ``h0 [B, N, H]`` (the state fed at
      ``t = 0`` during collection), ``is_init [B, T, 1]`` → ``out [B, T, N, O]``, recomputing the hidden states
      with the current parameters.
    """

    def __init__(
        self,
        n_agents: int,
        in_features: int,
        out_features: int,
        hidden: Sequence[int],
        gru_hidden: int = 128,
        activation: str = "relu",
    ):
        super().__init__()
        if not hidden:
            raise ValueError("model.actor_hidden: a recurrent actor needs at least one hidden layer (the embedding)")
        act = _activation(activation)
        self.n_agents, self.gru_hidden = n_agents, gru_hidden
        self.embed = nn.Sequential(nn.Linear(in_features + n_agents, hidden[0]), act())
        self.gru = nn.GRUCell(hidden[0], gru_hidden)
        self.head = MLP(
            in_features=gru_hidden, out_features=out_features, num_cells=list(hidden[1:]), activation_class=act
        )
        self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)

    def _embed(self, x: Tensor) -> Tensor:
        return self.embed(torch.cat([x, self.agent_ids.expand(*x.shape[:-1], self.n_agents)], dim=-1))

    def _cell(self, e: Tensor, h: Tensor, is_init: Tensor) -> Tensor:
        """One GRU step on ``e [..., N, E]`` from ``h [..., N, H]``, zeroed where ``is_init [..., 1]``."""
        h = h.masked_fill(is_init.unsqueeze(-1), 0.0)
        return self.gru(e.reshape(-1, e.shape[-1]), h.reshape(-1, h.shape[-1])).reshape(h.shape)

    def forward(self, x: Tensor, h: Tensor, is_init: Tensor) -> tuple[Tensor, Tensor]:
        h = self._cell(self._embed(x), h, is_init)
        return self.head(h), h

    def sequence(self, x: Tensor, h0: Tensor, is_init: Tensor) -> Tensor:
        e = self._embed(x)
        h, states = h0, []
        for t in range(x.shape[1]):
            h = self._cell(e[:, t], h, is_init[:, t])
            states.append(h)
        return self.head(torch.stack(states, dim=1))


def agent_body(n_agents: int, in_features: int, out_features: int, model: ModelConfig) -> AgentGRU | AgentMLP:
    """The per-agent network of actors and Q-networks, ``[..., N, in]`` → ``[..., N, out]``, as ``model`` says: a
    shared :class:`AgentGRU` (``model.recurrent``; embedding ``actor_hidden[0]``, GRU ``gru_hidden``, head
    ``actor_hidden[1:]``), else an :class:`AgentMLP` of ``actor_hidden`` (shared or per agent: ``share_params``)."""
    if not model.recurrent:
        return AgentMLP(n_agents, in_features, out_features, model.actor_hidden, model.activation, model.share_params)
    if not model.share_params:
        raise ValueError("model.recurrent: recurrent actors share parameters (model.share_params=true)")
    return AgentGRU(n_agents, in_features, out_features, model.actor_hidden, model.gru_hidden, model.activation)


def recurrent_transforms(hidden_key: str | tuple[str, ...], n_agents: int, gru_hidden: int) -> list[Transform]:
    """The env transforms a recurrent policy needs: ``is_init`` marks (``InitTracker``) and a zero hidden state
    per agent at ``hidden_key`` (``TensorDictPrimer``, reset to zeros wherever an episode restarts)."""
    primer = TensorDictPrimer(
        {hidden_key: Unbounded(shape=(n_agents, gru_hidden))}, reset_key="_reset", expand_specs=True
    )
    return [InitTracker(), primer]
