"""MADDPG and K-MADDPG (eq. 16): deterministic actors, a centralized critic Q_i(s, a_1..a_N) per agent.

Actor objective of agent i at level k: maximise Q_i(s, a_i = μ_θ(o_i), a_−i = μ_θ⁽ᵏ⁻¹⁾(o_−i)), the others'
actions fixed at their level-(k−1) values (level 0: the current actor's, not the buffer's). The N "agent i live"
cases are scored in one batched critic pass; the live actions μ_θ(o) are computed once per K-level step and shared by
every level (they are also level 0's actions). The critic's TD loss is TorchRL's ``DDPGLoss``; its target copies of
actor and critic move by :func:`~kpg_lightning.algorithms.base.sync_targets`, as every algorithm's targets do
(Polyak, or hard copies counted in the checkpointed ``target_updates`` buffer). The critic reads the global state
(:func:`~kpg_lightning.envs.info.global_state`), which :meth:`Maddpg.process_batch` writes into the sampled batch for
``DDPGLoss``'s keyed modules where the env has no ``state`` (replay does not store it).

``critic: team`` replaces the per-agent critic (agent-id input, N rows per sample) by one team value Q(s, a) that
every agent shares, BenchMARL's shared centralised critic: one row per sample. Level 1 is then MADDPG's joint
objective −Q(s, μ(o_1..o_N)) (level 0 hands it no actions, as K-FACMAC's level 0 does), and level k ≥ 2 scores the N
cases with the gradient of their sum and the value of their mean, whose gradient at level 1 is that joint one.

Discrete action spaces get :class:`DiscreteMaddpg`: straight-through Gumbel-softmax one-hot actions, ε-greedy
acting and, with ``model.recurrent``, GRU actors on episode replay (:mod:`kpg_lightning.algorithms.discrete`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import Tensor, nn
from torchrl.objectives import DDPGLoss, ValueEstimators

from kpg_lightning.algorithms.base import Algorithm, expand_done, gaussian_exploration, parameter_pairs, sync_targets
from kpg_lightning.algorithms.discrete import DiscreteActionsConfig, DiscreteActorCritic
from kpg_lightning.config import ModelConfig
from kpg_lightning.envs.info import (
    ACTION,
    AGENT_DONE,
    AGENT_TERMINATED,
    GROUP,
    OBS,
    REWARD,
    STATE,
    TERMINATED,
    EnvInfo,
    global_state,
)
from kpg_lightning.errors import ConfigError
from kpg_lightning.models import CentralCritic, ScaledTanh, agent_body

__all__ = ["DiscreteMaddpg", "Maddpg", "MaddpgConfig", "cases_objective"]

Q_VALUE = (GROUP, "state_action_value")
CRITICS = ("per_agent", "team")


def cases_objective(
    critic: CentralCritic,
    eye: Tensor,
    state: Tensor,
    live: Tensor,
    others: Tensor | None,
    reduce: bool,
    mean: Callable[[Tensor], Tensor],
) -> Tensor:
    """K-MADDPG's actor loss: case i scores agent i's ``live`` action ``[*batch, N, A]`` with the others at
    ``others``, one critic pass over the N cases; ``mean`` averages over the batch's (real) samples and the cases.

    Per-agent critic: ``−mean_i Q_i(case i)``. Team critic: the gradient of ``−Σ_i Q(case i)`` valued as its mean, and
    with ``others`` None (level 1) the joint ``−Q(s, live)``, which has that gradient. Not ``reduce``: the
    ``[*batch, N(case)]`` values ``−Q(case i)``.
    """
    if others is None:
        if critic.per_agent or not reduce:
            raise ValueError("the joint objective (others=None) needs the team critic and reduce=True")
        return -mean(critic.team(state, live))
    joint = torch.where(eye, live.unsqueeze(-3), others.unsqueeze(-3))
    q = critic.cases(state, joint)  # [*batch, N(case), 1]
    if not reduce:
        return -q.squeeze(-1)
    value = -mean(q)
    if critic.per_agent:
        return value
    total = critic.n_agents * value
    return total - (total - value).detach()


class Maddpg(Algorithm):
    """MADDPG with a shared (or per-agent) deterministic actor; K-MADDPG through the K-level engine. On discrete
    action spaces :func:`kpg_lightning.algorithms.make_algorithm` builds its :class:`DiscreteMaddpg`."""

    recurrent_actors = ("discrete",)  # SMAC's GRU actors; continuous actors are feed-forward
    shares_live_forward = True

    def __init__(self, cfg: MaddpgConfig, info: EnvInfo, model: ModelConfig):
        super().__init__(cfg, info, model)
        self.init_actor(cfg, info, model)
        self.init_critic(
            cfg,
            CentralCritic(
                info.n_agents,
                info.critic_state_dim,
                info.action_dim,
                model.critic_hidden,
                model.activation,
                per_agent=cfg.critic == "per_agent",
            ),
        )
        self.register_buffer(
            "eye", self.one_hot_eye(None if info.discrete else info.action_low.device), persistent=False
        )
        self.register_target_counter(cfg.target_update == "hard")

    def init_actor(self, cfg: MaddpgConfig, info: EnvInfo, model: ModelConfig) -> None:
        """The continuous actor ``μ(o) = ScaledTanh(MLP(o))`` and Gaussian exploration noise."""
        if model.recurrent:
            raise ConfigError(
                "model.recurrent=True is not allowed: continuous maddpg has feed-forward actors "
                "(GRU actors: discrete action spaces, e.g. SMAC/SMAX)"
            )
        low, high = info.action_low, info.action_high
        actor_net = nn.Sequential(
            agent_body(info.n_agents, info.obs_dim, info.action_dim, model), ScaledTanh(low, high)
        )
        self.actor = TensorDictModule(actor_net, in_keys=[OBS], out_keys=[ACTION])
        self.noise = gaussian_exploration(low, high, cfg.noise_sigma)

    def init_critic(self, cfg: MaddpgConfig, critic: CentralCritic) -> None:
        """TorchRL's ``DDPGLoss`` (TD(0), l2) over ``critic`` on ``(state, joint action)``, with its target copies of
        actor and critic (moved by :meth:`update_targets`)."""
        self.critic = TensorDictModule(critic, in_keys=[STATE, ACTION], out_keys=[Q_VALUE])
        self.loss = DDPGLoss(self.actor, self.critic, delay_actor=True, delay_value=True, loss_function="l2")
        self.loss.set_keys(state_action_value=Q_VALUE, reward=REWARD, done=AGENT_DONE, terminated=AGENT_TERMINATED)
        self.loss.make_value_estimator(ValueEstimators.TD0, gamma=cfg.gamma)
        # the targets are updated by hand (update_targets), as TorchRL's warning allows: tell the loss so
        self.loss._has_update_associated.update(dict.fromkeys(self.loss._has_update_associated, True))

    def policy(self) -> TensorDictSequential:
        return TensorDictSequential(self.actor, self.noise)

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    def process_batch(self, td: TensorDictBase) -> TensorDictBase:
        """Per-agent done flags, the critic's input ``state`` (:func:`global_state`) now and next, scaled rewards."""
        td = expand_done(td)
        for sample in (td, td.get("next")):
            sample.set(STATE, global_state(sample))
        if self.cfg.reward_scale != 1:
            td.set(("next", *REWARD), td.get(("next", *REWARD)) * self.cfg.reward_scale)
        return td

    def critic_loss(self, td: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        loss, meta = self.loss.loss_value(td)
        return loss, {"q_mean": meta["pred_value"].mean().detach(), "target_mean": meta["target_value"].mean().detach()}

    def live_forward(self, td: TensorDictBase) -> Tensor:
        return self.actor.module(td.get(OBS))

    def level_outputs(self, td: TensorDictBase, level: int, live: Tensor | None = None) -> Tensor | None:
        """The level-``level`` actions; level 0: the live ones (none for the team critic: level 1 then takes the
        joint objective)."""
        if level == 0 and self.cfg.critic == "team":
            return None
        return live.detach() if level == 0 and live is not None else self.live_forward(td)

    def actor_loss(
        self, td: TensorDictBase, others: Tensor | None, reduce: bool = True, *, live: Tensor | None = None
    ) -> Tensor:
        """``-Q_i(s, a_i live, a_-i = others)`` averaged over batch and agents (``[..., N]`` if not ``reduce``)."""
        live = self.live_forward(td) if live is None else live
        return cases_objective(self.critic.module, self.eye, global_state(td), live, others, reduce, Tensor.mean)

    def target_pairs(self) -> list[tuple[Tensor, Tensor]]:
        """``DDPGLoss``'s target copies of the actor's and the critic's parameters, with their online ones."""
        pairs = []
        for name in ("actor_network", "value_network"):
            online, target = getattr(self.loss, f"{name}_params"), getattr(self.loss, f"target_{name}_params")
            pairs += [(target.get(key), p) for key, p in online.items(True, True) if p.requires_grad]
        return pairs

    def update_targets(self) -> None:
        cfg = self.cfg
        sync_targets(self.target_pairs(), cfg.target_update, cfg.tau, cfg.target_update_interval, self.target_updates)


class DiscreteMaddpg(DiscreteActorCritic, Maddpg):
    """Discrete MADDPG / K-MADDPG: the centralized critic Q_i(s, one-hot a_1..a_N), the actor's actions as
    straight-through Gumbel one-hots of its masked logits; TD targets bootstrap with the target actor's greedy next
    actions; with a GRU actor every loss runs over whole episodes ``[B, T]``, averaged over their ``filled`` steps.
    Level k scores agent i live and the others at their level-(k−1) one-hots (level 0: the current actor's)."""

    def init_critic(self, cfg: MaddpgConfig, critic: CentralCritic) -> None:
        """``critic`` itself on ``(global state, one-hot joint action)`` and its target copy."""
        self.critic = critic
        self.target_critic = deepcopy(critic).requires_grad_(False)

    def target_pairs(self) -> list[tuple[Tensor, Tensor]]:
        return parameter_pairs((self.target_actor, self.actor), (self.target_critic, self.critic))

    def critic_loss(self, td: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        nxt = td.get("next")
        with torch.no_grad():
            next_q = self.target_critic(global_state(nxt), self.next_actions(td))  # [*batch, N, 1]
            not_terminated = nxt.get(TERMINATED).logical_not().unsqueeze(-2)
            reward = nxt.get(REWARD) * self.cfg.reward_scale
            target = reward + self.cfg.gamma * not_terminated * next_q
        q = self.critic(global_state(td), self.stored_actions(td))
        loss = self.step_mean((q - target).pow(2), td)
        return loss, {"q_mean": self.step_mean(q.detach(), td), "target_mean": self.step_mean(target, td)}

    def live_forward(self, td: TensorDictBase) -> Tensor:
        return self.live_actions(td)

    def actor_loss(
        self, td: TensorDictBase, others: Tensor | None, reduce: bool = True, *, live: Tensor | None = None
    ) -> Tensor:
        """``-Q_i(s, a_i live, a_-i = others)`` over the real steps and agents (``[*batch, N]`` if not ``reduce``)."""
        live = self.live_forward(td) if live is None else live
        return cases_objective(
            self.critic, self.eye, global_state(td), live, others, reduce, lambda x: self.step_mean(x, td)
        )


@dataclass
class MaddpgConfig(DiscreteActionsConfig):
    """MADDPG / K-MADDPG hyper-parameters (Appendix E.2 where the paper gives them)."""

    name: str = "maddpg"
    actor_lr: float = 3e-4
    critic: str = "per_agent"
    """per_agent: Q_i(s, a, i) with an agent-id input, one row per agent and sample (per-agent rewards); team: one
    Q(s, a) per sample that every agent shares (BenchMARL's shared centralised critic; for shared rewards)."""
    tau: float = 0.005
    """Polyak averaging rate of the target actor and critic."""
    noise_sigma: float = 0.1
    """Continuous actions: standard deviation of the Gaussian exploration noise added to actions."""

    def problems(self) -> Iterator[tuple[str, str, Any]]:
        yield from super().problems()
        if self.noise_sigma < 0:
            yield "noise_sigma", "a number >= 0", self.noise_sigma
        if self.critic not in CRITICS:
            yield "critic", f"one of {', '.join(CRITICS)}", self.critic
