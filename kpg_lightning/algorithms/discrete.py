"""Discrete actions for the deterministic actor-critics: discrete (K-)FACMAC and (K-)MADDPG on SMAC/SMAX (App. E.2).

Acting (:class:`EpsilonGreedyGumbel`): the shared actor's logits, unavailable actions masked to −∞; exploring, the
action is a hard Gumbel-softmax sample of them (a sample of ``softmax(masked logits)``), replaced with probability
ε by a uniform random *available* action, ε annealed linearly over frames; greedy (evaluation), the masked argmax.

Training (:class:`DiscreteActorCritic`): the actor's actions reach the critics as straight-through Gumbel-softmax
one-hots (forward: exactly the one-hot of ``argmax(logits + g)``; backward: the gradient of
``softmax((logits + g) / τ)``), with Gumbel noise ``g`` drawn once per update (:meth:`process_batch`) and shared by
every K level and by the others' level outputs, so that levels differ only by their parameters. A recurrent actor
(``model.recurrent``: embedding → GRU → head, :class:`kpg_lightning.models.AgentGRU`) trains on whole episodes
``[B, T]`` (``replay_unit="episodes"``), unrolled from a zero state; means run over the ``filled`` steps only.
Critic targets use the target actor's greedy next actions, unrolled over ``cat(o_0, o'_0..o'_{T-1})``.
"""

from __future__ import annotations

from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import Tensor, nn
from torchrl.envs import Transform
from torchrl.envs.utils import ExplorationType, exploration_type

from kpg_lightning.algorithms.base import TARGET_UPDATES, AlgorithmConfig, epsilon_at
from kpg_lightning.config import ModelConfig
from kpg_lightning.envs.info import ACTION, ACTION_MASK, GROUP, OBS, EnvInfo, masked_random_action
from kpg_lightning.models import agent_body, recurrent_transforms

__all__ = [
    "DiscreteActionsConfig",
    "DiscreteActor",
    "DiscreteActorCritic",
    "EpsilonGreedyGumbel",
    "gumbel_noise",
    "gumbel_one_hot",
    "masked_logits",
]

LOGITS, NOISE, HIDDEN = (GROUP, "logits"), (GROUP, "gumbel_noise"), "actor_hidden"  # hidden: [*envs, N, H]


def masked_logits(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Logits with unavailable actions at −∞ (``mask`` bool ``[..., A]``; a row with none available — an episode's
    zero padding — keeps all, so that no softmax sees only −∞)."""
    if mask is None:
        return logits
    return logits.masked_fill(~(mask | ~mask.any(-1, keepdim=True)), float("-inf"))


def gumbel_noise(like: Tensor) -> Tensor:
    """Standard Gumbel samples ``−log(E)``, ``E ~ Exp(1)``, shaped like ``like``."""
    return -torch.empty_like(like).exponential_().log()


def gumbel_one_hot(logits: Tensor, noise: Tensor, temperature: float = 1.0) -> Tensor:
    """Straight-through hard Gumbel-softmax: forward exactly ``one_hot(argmax(logits + noise))``, backward the
    gradient of ``softmax((logits + noise) / temperature)``."""
    soft = ((logits + noise) / temperature).softmax(-1)
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())


class DiscreteActor(nn.Module):
    """Shared actor → masked logits ``[..., N, A]``: an :class:`AgentMLP` or, recurrent, an :class:`AgentGRU`."""

    def __init__(self, info: EnvInfo, model: ModelConfig):
        super().__init__()
        self.recurrent, self.gru_hidden = model.recurrent, model.gru_hidden
        self.body = agent_body(info.n_agents, info.obs_dim, info.action_dim, model)

    def forward(
        self, obs: Tensor, mask: Tensor | None = None, hidden: Tensor | None = None, is_init: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """One acting step: masked logits, and the next hidden state when recurrent (zeroed where ``is_init``)."""
        if not self.recurrent:
            return masked_logits(self.body(obs), mask)
        out, hidden = self.body(obs, hidden, is_init)
        return masked_logits(out, mask), hidden

    def sequence(self, obs: Tensor, mask: Tensor | None) -> Tensor:
        """Masked logits over a replay batch: frames ``[B, N, F]``, or whole episodes ``[B, T, N, F]`` unrolled from
        a zero state (each row starts an episode, as collection did after ``is_init``)."""
        return masked_logits(self.raw_sequence(obs), mask)

    def raw_sequence(self, obs: Tensor) -> Tensor:
        """:meth:`sequence` before the available-action mask (what the logit penalty regularises)."""
        if not self.recurrent:
            return self.body(obs)
        h0 = obs.new_zeros(obs.shape[0], obs.shape[-2], self.gru_hidden)
        no_reset = torch.zeros(*obs.shape[:2], 1, dtype=torch.bool, device=obs.device)
        return self.body.sequence(obs, h0, no_reset)


class EpsilonGreedyGumbel(nn.Module):
    """Integer actions from masked logits: greedy under ``ExplorationType.DETERMINISTIC`` (or MODE/MEAN), else a
    Gumbel-max sample, replaced with probability ``epsilon`` (a buffer, so weight syncs carry it) by a uniform
    random available action."""

    def __init__(self, epsilon: float):
        super().__init__()
        self.register_buffer("epsilon", torch.tensor(float(epsilon)))

    def forward(self, logits: Tensor, mask: Tensor | None = None) -> Tensor:
        if exploration_type() not in (ExplorationType.RANDOM, None):
            return logits.argmax(-1)
        sample = (logits + gumbel_noise(logits)).argmax(-1)
        uniform = masked_random_action(torch.ones_like(logits, dtype=torch.bool) if mask is None else mask)
        explore = torch.rand(sample.shape, device=sample.device) < self.epsilon
        return torch.where(explore, uniform.to(sample.device), sample)


class DiscreteActorCritic:
    """Mixin of the discrete variants (:class:`~kpg_lightning.algorithms.facmac.DiscreteFacmac`,
    :class:`~kpg_lightning.algorithms.maddpg.DiscreteMaddpg`), listed before their continuous parent: the actor,
    acting, exploration, Gumbel noise, target actions and step means. Its :meth:`init_actor` stands in for the
    parent's (which the parent's ``__init__`` calls); the variant supplies ``critic_loss``, ``level_outputs`` and
    ``actor_loss``, and the parent the critics and target updates."""

    cfg: DiscreteActionsConfig
    info: EnvInfo
    replay_exclude = (HIDDEN, ("next", HIDDEN), LOGITS)  # the losses re-unroll the actor from each episode start

    def init_actor(self, cfg: DiscreteActionsConfig, info: EnvInfo, model: ModelConfig) -> None:
        """The discrete actor (masked logits, :class:`DiscreteActor`), its target and ε-greedy Gumbel acting."""
        self.actor = DiscreteActor(info, model)
        self.target_actor = deepcopy(self.actor).requires_grad_(False)
        self.acting = EpsilonGreedyGumbel(cfg.epsilon_start)
        self.replay_unit = "episodes" if model.recurrent else "frames"

    # -- pieces ----------------------------------------------------------------------------------------------
    def mask(self, td: TensorDictBase) -> Tensor | None:
        return td.get(ACTION_MASK) if self.info.has_action_mask else None

    def live_actions(self, td: TensorDictBase) -> Tensor:
        """The actor's straight-through Gumbel one-hots ``[*batch, N, A]`` with the batch's noise (called under
        ``no_grad`` they are the plain hard one-hots: what a level hands the next)."""
        return self.live_actions_and_penalty(td)[0]

    def live_actions_and_penalty(self, td: TensorDictBase) -> tuple[Tensor, Tensor]:
        """:meth:`live_actions` and the actor's logit penalty ``mean(logits²)`` over real steps (FACMAC's discrete
        actor loss adds ``1e-3 ·`` it: unbounded logits otherwise saturate the softmax onto one action)."""
        raw = self.actor.raw_sequence(td.get(OBS))
        one_hot = gumbel_one_hot(masked_logits(raw, self.mask(td)), td.get(NOISE), self.cfg.gumbel_temperature)
        return one_hot, self.step_mean(raw.pow(2), td)

    def stored_actions(self, td: TensorDictBase) -> Tensor:
        """One-hots of the collected integer actions."""
        return F.one_hot(td.get(ACTION), self.info.action_dim).to(td.get(OBS).dtype)

    @torch.no_grad()
    def next_actions(self, td: TensorDictBase) -> Tensor:
        """The target actor's greedy one-hots on the next observations, masked by the next available actions;
        recurrent: unrolled over the episode from its first observation, ``cat(o_0, o'_0..o'_{T-1})``."""
        nxt = td.get("next")
        obs, mask = nxt.get(OBS), self.mask(nxt)
        if self.actor.recurrent:
            obs = torch.cat([td.get(OBS)[:, :1], obs], dim=1)
            mask = None if mask is None else torch.cat([self.mask(td)[:, :1], mask], dim=1)
            logits = self.target_actor.sequence(obs, mask)[:, 1:]
        else:
            logits = self.target_actor.sequence(obs, mask)
        return F.one_hot(logits.argmax(-1), self.info.action_dim).to(obs.dtype)

    def step_mean(self, x: Tensor, td: TensorDictBase) -> Tensor:
        """Mean of ``x [*batch, ...]`` over real steps: every frame, or an episode batch's ``filled`` steps."""
        filled = td.get("filled", None)
        if filled is None:
            return x.mean()
        weight = filled.reshape(*td.batch_size, *(1,) * (x.dim() - td.batch_dims)).to(x.dtype).expand_as(x)
        return (x * weight).sum() / weight.sum()

    # -- hooks -----------------------------------------------------------------------------------------------
    def policy(self) -> TensorDictSequential:
        mask = {"mask": ACTION_MASK} if self.info.has_action_mask else {}  # keyword → tensordict key
        keys, out = {"obs": OBS, **mask}, [LOGITS]
        if self.actor.recurrent:
            keys |= {"hidden": HIDDEN, "is_init": "is_init"}
            out.append(("next", HIDDEN))
        acting_keys = {"logits": LOGITS, **mask}
        return TensorDictSequential(
            TensorDictModule(self.actor, in_keys=keys, out_keys=out),
            TensorDictModule(self.acting, in_keys=acting_keys, out_keys=[ACTION]),
        )

    def env_transforms(self) -> list[Transform]:
        if not self.actor.recurrent:
            return []
        return recurrent_transforms(HIDDEN, self.info.n_agents, self.actor.gru_hidden)

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    def process_batch(self, td: TensorDictBase) -> TensorDictBase:
        """Draws the update's Gumbel noise ``[*batch, N, A]`` (shared by every K level)."""
        obs = td.get(OBS)
        td.set(NOISE, gumbel_noise(obs.new_empty(*obs.shape[:-1], self.info.action_dim)))
        return td

    def exploration_step(self, frames: int) -> None:
        cfg = self.cfg
        self.acting.epsilon.fill_(epsilon_at(frames, cfg.epsilon_start, cfg.epsilon_end, cfg.epsilon_anneal_frames))


@dataclass
class DiscreteActionsConfig(AlgorithmConfig):
    """Fields of the deterministic actor-critics that also act in discrete action spaces (FACMAC, MADDPG)."""

    tau: float = 0.005
    """Polyak averaging rate of the target networks (``target_update: polyak``)."""
    target_update: str = "polyak"
    """polyak (every update, rate tau) or hard (copies every target_update_interval updates; SMAC: hard, 200)."""
    target_update_interval: int = 200
    """Training updates between hard target copies."""
    epsilon_start: float = 0.5
    """Discrete actions: ε of ε-greedy exploration at the start (Appendix E.2: 0.5)."""
    epsilon_end: float = 0.05
    """Discrete actions: ε after annealing (Appendix E.2: 0.05)."""
    epsilon_anneal_frames: int = 50_000
    """Discrete actions: frames over which ε anneals linearly (Appendix E.2: 50k)."""
    gumbel_temperature: float = 1.0
    """Discrete actions: temperature of the Gumbel-softmax whose gradient the actor follows."""
    reward_scale: float = 1.0
    """Multiplies the rewards the critics learn from (Appendix E.1's off-policy SMAX runs: 10, SMAC's scale)."""

    def problems(self) -> Iterator[tuple[str, str, Any]]:
        yield from super().problems()
        if not 0 < self.tau <= 1:
            yield "tau", "a number in (0, 1]", self.tau
        if self.target_update not in TARGET_UPDATES:
            yield "target_update", f"one of {', '.join(TARGET_UPDATES)}", self.target_update
        if self.target_update_interval < 1:
            yield "target_update_interval", "an integer >= 1", self.target_update_interval
        for key in ("epsilon_start", "epsilon_end"):
            if not 0 <= getattr(self, key) <= 1:
                yield key, "a number in [0, 1]", getattr(self, key)
        if self.epsilon_anneal_frames < 0:
            yield "epsilon_anneal_frames", "an integer >= 0", self.epsilon_anneal_frames
        for key in ("gumbel_temperature", "reward_scale"):
            if getattr(self, key) <= 0:
                yield key, "a number > 0", getattr(self, key)
