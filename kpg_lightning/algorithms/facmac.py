"""FACMAC and K-FACMAC (Algorithm 2): a shared deterministic actor, per-agent critics Q_j(o_j, a_j), a mixer.

Critic/mixer step (once per update, before the K levels), with r = mean over agents of the team reward and
bootstrapping through truncations (``terminated``, not ``done``):

    y = r + γ (1 − terminated) Q̄_tot(s', Q̄_j(o'_j, μ̄(o'_j))),    L = (Q_tot(s, Q_j(o_j, a_j)) − y)²

Actor objective at level k (K-FACMAC), agent i live and the others at their level-(k−1) actions:

    J_i = Q_tot(s, Q_i(o_i, μ(o_i)), Q_j(o_j, a_j⁽ᵏ⁻¹⁾) for j ≠ i),    loss = −Σ_i E[J_i] + 1e-3 · E[pre_tanh²]

Level 1 responds to the current actor itself, so its Σ_i ∇J_i is exactly the gradient of FACMAC's joint
objective −Q_tot(s, Q_j(o_j, μ(o_j)) all live): :meth:`Facmac.level_outputs` hands level 1 no actions and
:meth:`Facmac.actor_loss` then takes the joint objective, which makes K = 1 *be* FACMAC, bit for bit. From level 2
on the N cases are scored in one pass (:meth:`Facmac.cases_loss`). The live actions, their critic values
Q_j(o_j, μ(o_j)) and the penalty are the same at every level (:class:`LiveForward`, computed once per K-level
step), so a level beyond the first costs the level-(k−1) actions, the critic on them, the mixer and one backward.
Padded action dimensions (uneven partitions) are zeroed before the critic and left out of the penalty, so they
carry no gradient.

Targets are plain deep copies moved by one ``torch._foreach_lerp_`` (Polyak τ) over actor, critic and mixer, or
copied every ``target_update_interval`` updates (``target_update: hard``, SMAC's setting).
TorchRL has no loss for a mixed continuous critic (``QMixerLoss`` is discrete Q-learning); a ``LossModule``
subclass with ``convert_to_functional`` targets would add a ``to_module`` parameter swap (~40 µs on this CPU, ~5%
of a K=1 update) around every live and target forward, for a ``SoftUpdate`` that is this same lerp. Exploration
is TorchRL's ``AdditiveGaussianModule``; the mixers subclass TorchRL's ``Mixer`` (:mod:`kpg_lightning.mixers`).

Discrete action spaces (SMAC/SMAX, Appendix E.2) get :class:`DiscreteFacmac`: the same objectives with Gumbel-softmax
one-hot actions, ε-greedy acting and, with ``model.recurrent``, GRU actors on episode replay
(:mod:`kpg_lightning.algorithms.discrete`).
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

from kpg_lightning.algorithms.base import Algorithm, gaussian_exploration, parameter_pairs, sync_targets
from kpg_lightning.algorithms.discrete import DiscreteActionsConfig, DiscreteActorCritic
from kpg_lightning.config import ModelConfig
from kpg_lightning.envs.info import ACTION, ACTION_DIM_MASK, OBS, REWARD, TERMINATED, EnvInfo, global_state
from kpg_lightning.errors import ConfigError
from kpg_lightning.mixers import MIXERS, make_mixer, mix
from kpg_lightning.models import AgentMLP, ScaledTanh, agent_body

__all__ = ["DiscreteFacmac", "Facmac", "FacmacConfig", "LevelActions", "LiveForward", "action_penalty"]


@dataclass(frozen=True)
class LevelActions:
    """What level ``level`` hands the next: every agent's deterministic actions ``[B, N, A]`` on the batch.

    ``actions`` is None at level 0: level 1 responds to the current actor itself (FACMAC's joint objective).
    """

    level: int
    actions: Tensor | None = None


@dataclass(frozen=True)
class LiveForward:
    """The live actor on a batch, the same at every level of one K-level step: the actions ``[*batch, N, A]`` with
    gradient, their per-agent critic values ``Q_j(o_j, a_j)`` ``[*batch, N, 1]`` and the actor's penalty term."""

    actions: Tensor
    q: Tensor
    penalty: Tensor


def action_penalty(pre_tanh: Tensor, mask: Tensor | None) -> Tensor:
    """mean(pre_tanh²) over the real action dimensions (``mask``: 1 real, 0 padded; None: all real)."""
    if mask is None:
        return pre_tanh.pow(2).mean()
    return (pre_tanh.pow(2) * mask).sum() / mask.sum()


class Facmac(Algorithm):
    """FACMAC with a shared (or per-agent) deterministic actor; K-FACMAC through the K-level engine. On discrete
    action spaces :func:`kpg_lightning.algorithms.make_algorithm` builds its :class:`DiscreteFacmac`."""

    recurrent_actors = ("discrete",)  # SMAC's GRU actors; continuous actors are feed-forward
    shares_live_forward = True

    def __init__(self, cfg: FacmacConfig, info: EnvInfo, model: ModelConfig):
        super().__init__(cfg, info, model)
        self.init_actor(cfg, info, model)
        n = info.n_agents
        self.critic = AgentMLP(
            n, info.obs_dim + info.action_dim, 1, model.critic_hidden, model.activation, share_params=True
        )
        self.mixer = make_mixer(
            cfg.mixer, n, info.critic_state_dim, cfg.mixer_embed_dim, cfg.mixer_hypernet_hidden, cfg.mixer_init_scale
        )
        self.target_critic = deepcopy(self.critic).requires_grad_(False)
        self.target_mixer = deepcopy(self.mixer).requires_grad_(False)
        self.register_buffer(
            "eye", self.one_hot_eye(None if info.discrete else info.action_low.device), persistent=False
        )
        self.register_target_counter(cfg.target_update == "hard")

    def init_actor(self, cfg: FacmacConfig, info: EnvInfo, model: ModelConfig) -> None:
        """The continuous actor ``μ(o) = ScaledTanh(MLP(o))``, its target and Gaussian exploration noise."""
        if model.recurrent:
            raise ConfigError(
                "model.recurrent=True is not allowed: continuous facmac has feed-forward actors "
                "(GRU actors: discrete action spaces, e.g. SMAC/SMAX)"
            )
        low, high = info.action_low, info.action_high
        actor_net = nn.Sequential(  # kept apart: the penalty needs the pre-tanh output
            agent_body(info.n_agents, info.obs_dim, info.action_dim, model), ScaledTanh(low, high)
        )
        self.actor = TensorDictModule(actor_net, in_keys=[OBS], out_keys=[ACTION])
        self.target_actor = deepcopy(actor_net).requires_grad_(False)
        self.noise = gaussian_exploration(low, high, cfg.noise_sigma)

    # -- pieces ----------------------------------------------------------------------------------------------
    def act(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-tanh outputs and actions of the live actor, ``[..., N, A]`` each."""
        mlp, squash = self.actor.module
        pre = mlp(obs)
        return pre, squash(pre)

    def q_values(self, critic: nn.Module, obs: Tensor, action: Tensor, mask: Tensor | None) -> Tensor:
        """Per-agent ``Q_j(o_j, a_j)`` ``[..., N, 1]``; padded action dimensions are zeroed first."""
        return critic(torch.cat([obs, action if mask is None else action * mask], dim=-1))

    def dim_mask(self, td: TensorDictBase) -> Tensor | None:
        """``[B, N, A]`` float mask of the real action dimensions (None: the env has no ``action_dim_mask``)."""
        return td.get(ACTION_DIM_MASK).to(td.get(OBS).dtype) if self.info.has_action_dim_mask else None

    # -- hooks -----------------------------------------------------------------------------------------------
    def policy(self) -> TensorDictSequential:
        return TensorDictSequential(self.actor, self.noise)

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.critic.parameters(), *self.mixer.parameters()]

    def process_batch(self, td: TensorDictBase) -> TensorDictBase:
        return td  # the team target reads the root ``terminated``: no per-agent flags needed

    def critic_loss(self, td: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        obs, mask, nxt = td.get(OBS), self.dim_mask(td), td.get("next")
        with torch.no_grad():
            next_obs = nxt.get(OBS)
            next_q = self.q_values(self.target_critic, next_obs, self.target_actor(next_obs), mask)
            reward = nxt.get(REWARD).mean(-2) * self.cfg.reward_scale  # [B, 1] team reward
            not_terminated = nxt.get(TERMINATED).logical_not()
            target = reward + self.cfg.gamma * not_terminated * mix(self.target_mixer, next_q, global_state(nxt))
        q_tot = mix(self.mixer, self.q_values(self.critic, obs, td.get(ACTION), mask), global_state(td))
        return F.mse_loss(q_tot, target), {"q_tot_mean": q_tot.mean().detach(), "target_mean": target.mean()}

    def live_forward(self, td: TensorDictBase) -> LiveForward:
        obs, mask = td.get(OBS), self.dim_mask(td)
        pre, action = self.act(obs)
        return LiveForward(action, self.q_values(self.critic, obs, action, mask), action_penalty(pre, mask))

    def level_outputs(self, td: TensorDictBase, level: int, live: LiveForward | None = None) -> LevelActions:
        return LevelActions(level, None if level == 0 else self.actor.module(td.get(OBS)))

    def actor_loss(self, td: TensorDictBase, others: LevelActions, *, live: LiveForward | None = None) -> Tensor:
        """FACMAC's joint loss against level 0, the N-case loss against the level-(k−1) actions after that."""
        if others.actions is None:
            return self.joint_loss(td, live=live)
        return self.cases_loss(td, others.actions, live=live)

    def joint_loss(self, td: TensorDictBase, *, live: LiveForward | None = None) -> Tensor:
        """FACMAC's actor loss: ``−Q_tot(s, Q_j(o_j, μ(o_j)) all live) + c · mean(pre_tanh²)``."""
        live = self.live_forward(td) if live is None else live
        return -mix(self.mixer, live.q, global_state(td)).mean() + self.cfg.action_penalty * live.penalty

    def cases_loss(
        self, td: TensorDictBase, fixed: Tensor, reduce: bool = True, *, live: LiveForward | None = None
    ) -> Tensor:
        """K-FACMAC's loss: case i has agent i live, the others at ``fixed`` ``[B, N, A]``; one mixer call.

        Returns ``−Σ_i E[Q_tot⁽ⁱ⁾] + penalty`` (valued per case, ``−mean_i``, so levels log comparably), or the
        ``[B, N(case)]`` values ``−Q_tot⁽ⁱ⁾`` without the penalty if not ``reduce``.
        """
        live = self.live_forward(td) if live is None else live
        with torch.no_grad():
            q_fixed = self.q_values(self.critic, td.get(OBS), fixed, self.dim_mask(td))
        cases = torch.where(self.eye, live.q.unsqueeze(-3), q_fixed.unsqueeze(-3))  # [B, N(case), N, 1]
        per_case = -mix(self.mixer, cases, global_state(td)).squeeze(-1)  # [B, N(case)]
        if not reduce:
            return per_case
        total = per_case.mean(0).sum()
        total = total - (total - per_case.mean()).detach()  # gradient of the sum, value of the mean
        return total + self.cfg.action_penalty * live.penalty

    def target_pairs(self) -> list[tuple[Tensor, Tensor]]:
        return parameter_pairs(
            (self.target_actor, self.actor), (self.target_critic, self.critic), (self.target_mixer, self.mixer)
        )

    def update_targets(self) -> None:
        cfg = self.cfg
        sync_targets(self.target_pairs(), cfg.target_update, cfg.tau, cfg.target_update_interval, self.target_updates)


class DiscreteFacmac(DiscreteActorCritic, Facmac):
    """Discrete FACMAC / K-FACMAC (SMAC, Appendix E.2): per-agent critics Q_j(o_j, one-hot a_j) and the mixer as
    above; the actor's actions are straight-through Gumbel one-hots of its masked logits (no action penalty), the
    TD target bootstraps with the target actor's greedy next actions, and with a GRU actor every loss runs over
    whole episodes ``[B, T]``, averaged over their ``filled`` steps. Level 1 is FACMAC's joint objective (K = 1 is
    discrete FACMAC); level k >= 2 scores the N "agent i live, the others at their level-(k−1) one-hots" cases."""

    def q_tot(self, critic: nn.Module, mixer: nn.Module, td: TensorDictBase, actions: Tensor) -> Tensor:
        """``Q_tot(s, Q_j(o_j, a_j))`` ``[*batch, 1]`` of one-hot ``actions [*batch, N, A]``."""
        return mix(mixer, self.q_values(critic, td.get(OBS), actions, None), global_state(td))

    def critic_loss(self, td: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        nxt = td.get("next")
        with torch.no_grad():
            reward = nxt.get(REWARD).mean(-2) * self.cfg.reward_scale  # [*batch, 1] team reward
            next_q = self.q_tot(self.target_critic, self.target_mixer, nxt, self.next_actions(td))
            target = reward + self.cfg.gamma * nxt.get(TERMINATED).logical_not() * next_q
        q_tot = self.q_tot(self.critic, self.mixer, td, self.stored_actions(td))
        loss = self.step_mean((q_tot - target).pow(2), td)
        return loss, {"q_tot_mean": self.step_mean(q_tot.detach(), td), "target_mean": self.step_mean(target, td)}

    def live_forward(self, td: TensorDictBase) -> LiveForward:
        actions, penalty = self.live_actions_and_penalty(td)  # the GRU unrolled once for every level
        return LiveForward(actions, self.q_values(self.critic, td.get(OBS), actions, None), penalty)

    def level_outputs(self, td: TensorDictBase, level: int, live: LiveForward | None = None) -> LevelActions:
        return LevelActions(level, None if level == 0 else self.live_actions(td))

    def joint_loss(self, td: TensorDictBase, *, live: LiveForward | None = None) -> Tensor:
        """Discrete FACMAC's actor loss: ``−Q_tot(s, Q_j(o_j, a_j) all live)`` over the real steps."""
        live = self.live_forward(td) if live is None else live
        q_tot = mix(self.mixer, live.q, global_state(td))
        return -self.step_mean(q_tot, td) + self.cfg.action_penalty * live.penalty

    def cases_loss(
        self, td: TensorDictBase, fixed: Tensor, reduce: bool = True, *, live: LiveForward | None = None
    ) -> Tensor:
        """Case i: agent i's live one-hot, the others' ``fixed`` ones ``[*batch, N, A]``; one mixer call.
        ``−Σ_i E[Q_tot⁽ⁱ⁾]`` valued per case (``−mean_i``), or the ``[*batch, N(case)]`` values if not ``reduce``."""
        live = self.live_forward(td) if live is None else live
        with torch.no_grad():
            q_fixed = self.q_values(self.critic, td.get(OBS), fixed, None)
        cases = torch.where(self.eye, live.q.unsqueeze(-3), q_fixed.unsqueeze(-3))  # [*batch, N(case), N, 1]
        per_case = -mix(self.mixer, cases, global_state(td)).squeeze(-1)
        if not reduce:
            return per_case
        mean = self.step_mean(per_case, td)
        total = self.info.n_agents * mean
        # gradient of the sum over cases, value of the mean; the penalty as at level 1
        return total - (total - mean).detach() + self.cfg.action_penalty * live.penalty


@dataclass
class FacmacConfig(DiscreteActionsConfig):
    """FACMAC / K-FACMAC hyper-parameters (Appendix E.2 and FACMAC's MaMuJoCo settings)."""

    name: str = "facmac"
    grad_clip: float | None = 0.5
    """Gradient-norm clip of the actor and the critic+mixer steps."""
    tau: float = 0.001
    """Polyak averaging rate of the target actor, critic and mixer."""
    noise_sigma: float = 0.1
    """Continuous actions: standard deviation of the Gaussian exploration noise added to actions."""
    mixer: str = "qmix"
    """qmix (monotonic, two-layer hypernetworks), qmix_nonmonotonic or vdn."""
    mixer_embed_dim: int = 64
    """Width of the mixing layer."""
    mixer_hypernet_hidden: int = 64
    """Hidden width of the mixer's weight hypernetworks."""
    mixer_init_scale: float | None = None
    """Orthogonal init gain of the qmix mixer's layers (zero biases; JaxMARL on SMAX: 0.001); null: PyTorch's."""
    action_penalty: float = 1e-3
    """Coefficient of the actor's penalty: mean(pre_tanh²) over the real action dimensions for continuous actions,
    mean(logits²) for discrete ones (FACMAC's discrete learner), so the actor's outputs stay bounded."""

    def problems(self) -> Iterator[tuple[str, str, Any]]:
        yield from super().problems()
        if self.mixer not in MIXERS:
            yield "mixer", f"one of {', '.join(MIXERS)}", self.mixer
        for key in ("noise_sigma", "action_penalty"):
            if getattr(self, key) < 0:
                yield key, "a number >= 0", getattr(self, key)
        if self.mixer_init_scale is not None and self.mixer_init_scale <= 0:
            yield "mixer_init_scale", "null or a number > 0", self.mixer_init_scale
        for key in ("mixer_embed_dim", "mixer_hypernet_hidden"):
            if getattr(self, key) < 1:
                yield key, "an integer >= 1", getattr(self, key)
