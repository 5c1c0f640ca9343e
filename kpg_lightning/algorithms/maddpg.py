"""MADDPG and K-MADDPG (eq. 16): deterministic actors, a centralized critic Q_i(s, a_1..a_N) per agent.

Actor objective of agent i at level k: maximise Q_i(s, a_i = μ_θ(o_i), a_−i = μ_θ⁽ᵏ⁻¹⁾(o_−i)), the others'
actions fixed at their level-(k−1) values (level 0: the current actor's, not the buffer's). The N "agent i live"
cases are scored in one batched critic pass. The critic's TD loss and Polyak targets are TorchRL's ``DDPGLoss``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import Tensor, nn
from torchrl.data import Bounded
from torchrl.modules import AdditiveGaussianModule
from torchrl.objectives import DDPGLoss, SoftUpdate, ValueEstimators

from kpg_lightning.algorithms.base import Algorithm, AlgorithmConfig
from kpg_lightning.envs.info import GROUP, EnvInfo
from kpg_lightning.models import AgentMLP, CentralCritic, ModelConfig, ScaledTanh

__all__ = ["Maddpg", "MaddpgConfig"]

OBS, ACTION = (GROUP, "observation"), (GROUP, "action")


class _CriticInput(nn.Module):
    """Reads the global state, or flattens the joint observation where the env has no state."""

    def __init__(self, critic: CentralCritic, from_obs: bool):
        super().__init__()
        self.critic, self.from_obs = critic, from_obs

    def state(self, state_or_obs: Tensor) -> Tensor:
        return state_or_obs.flatten(-2) if self.from_obs else state_or_obs

    def forward(self, state_or_obs: Tensor, action: Tensor) -> Tensor:
        return self.critic(self.state(state_or_obs), action)


class Maddpg(Algorithm):
    """MADDPG with a shared (or per-agent) deterministic actor; K-MADDPG through the K-level engine."""

    action_spaces = ("continuous",)

    def __init__(self, cfg: MaddpgConfig, info: EnvInfo, model: ModelConfig):
        super().__init__(cfg, info, model)
        if info.discrete:
            raise ValueError("algorithm: maddpg needs continuous actions (env has discrete actions)")
        n, low, high = info.n_agents, info.action_low, info.action_high
        actor_net = nn.Sequential(
            AgentMLP(n, info.obs_dim, info.action_dim, model.actor_hidden, model.activation, model.share_params),
            ScaledTanh(low, high),
        )
        self.actor = TensorDictModule(actor_net, in_keys=[OBS], out_keys=[ACTION])
        self.state_key = "state" if info.state_dim is not None else OBS
        critic = CentralCritic(n, info.critic_state_dim, info.action_dim, model.critic_hidden, model.activation)
        self.critic_input = _CriticInput(critic, from_obs=info.state_dim is None)
        self.critic = TensorDictModule(self.critic_input, in_keys=[self.state_key, ACTION],
                                       out_keys=[(GROUP, "state_action_value")])
        self.loss = DDPGLoss(self.actor, self.critic, delay_actor=True, delay_value=True, loss_function="l2")
        self.loss.set_keys(state_action_value=(GROUP, "state_action_value"), reward=(GROUP, "reward"),
                           done=(GROUP, "done"), terminated=(GROUP, "terminated"))
        self.loss.make_value_estimator(ValueEstimators.TD0, gamma=cfg.gamma)
        self.target_updater = SoftUpdate(self.loss, tau=cfg.tau)
        spec = Bounded(low=low, high=high, shape=low.shape)
        self.noise = AdditiveGaussianModule(spec, sigma_init=cfg.noise_sigma, sigma_end=cfg.noise_sigma,
                                            annealing_num_steps=1, action_key=ACTION, safe=True)
        self.register_buffer("eye", self.one_hot_eye(low.device), persistent=False)

    def policy(self) -> TensorDictSequential:
        return TensorDictSequential(self.actor, self.noise)

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    def critic_loss(self, td: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        loss, meta = self.loss.loss_value(td)
        return loss, {"q_mean": meta["pred_value"].mean().detach(), "target_mean": meta["target_value"].mean().detach()}

    def level_outputs(self, td: TensorDictBase, level: int) -> Tensor:
        return self.actor.module(td.get(OBS))

    def actor_loss(self, td: TensorDictBase, others: Tensor, reduce: bool = True) -> Tensor:
        """``-Q_i(s, a_i live, a_-i = others)`` averaged over batch and agents (``[..., N]`` if not ``reduce``)."""
        live = self.actor.module(td.get(OBS))
        joint = torch.where(self.eye, live.unsqueeze(-3), others.unsqueeze(-3))
        q = self.critic_input.critic.cases(self.critic_input.state(td.get(self.state_key)), joint)
        return -q.mean() if reduce else -q.squeeze(-1)

    def update_targets(self) -> None:
        self.target_updater.step()


@dataclass
class MaddpgConfig(AlgorithmConfig):
    """MADDPG / K-MADDPG hyper-parameters (Appendix E.2 where the paper gives them)."""

    name: str = "maddpg"
    tau: float = 0.005
    """Polyak averaging rate of the target actor and critic."""
    noise_sigma: float = 0.1
    """Standard deviation of the Gaussian exploration noise added to actions."""

    def problems(self) -> Iterator[tuple[str, str, Any]]:
        if not 0 < self.tau <= 1:
            yield "tau", "a number in (0, 1]", self.tau
        if self.noise_sigma < 0:
            yield "noise_sigma", "a number >= 0", self.noise_sigma
