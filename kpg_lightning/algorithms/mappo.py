"""MAPPO, IPPO and K-MAPPO (eq. 14–15): a shared stochastic actor, per-agent values, GAE and PPO clipping.

K-MAPPO's ratio for agent i at level k (all in log space, Δ_j = log π_j − log π_j⁰):

    r_i = π_i(a_i|o_i) / π_i⁰(a_i|o_i) · Π_{j≠i} π_j⁽ᵏ⁻¹⁾(a_j|o_j) / π_j⁰(a_j|o_j) = exp(Δ_i + Σ_{j≠i} Δ_j⁽ᵏ⁻¹⁾),

the others' factor detached, clipped as a whole: L = −E[min(r_i A_i, clip(r_i, 1 ± ε) A_i)]. Level 0 is the
behaviour policy π⁰ (the log-probs stored at collection), so at level 1 the others' factor is exactly 1 and
K = 1 is MAPPO. ``kpg.scope=update``: one recursion wraps the actor's whole epochs x minibatches update (level
log-probs once per level over the rollout); ``kpg.scope=step``: each gradient step is wrapped. The critic —
V_i(s, i) on the global state (MAPPO) or V_i(o_i, i) on the local observation (IPPO) — is updated once, before.
Rollouts are ``[envs, T]``; minibatches split envs, never time, so recurrent actors see whole sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution
from torch.func import functional_call
from torchrl.envs import Transform
from torchrl.modules import MaskedCategorical, ProbabilisticActor, TanhNormal
from torchrl.objectives.value import MultiAgentGAE

from kpg_lightning.algorithms.base import Algorithm, AlgorithmConfig
from kpg_lightning.config import ModelConfig
from kpg_lightning.envs.info import (
    ACTION,
    ACTION_MASK,
    DONE,
    GROUP,
    OBS,
    REWARD,
    STATE,
    TERMINATED,
    EnvInfo,
    global_state,
)
from kpg_lightning.models import AgentMLP, agent_body, recurrent_transforms

__all__ = ["IppoConfig", "Mappo", "MappoConfig"]

LOGP, VALUE, HIDDEN = (GROUP, "action_log_prob"), (GROUP, "state_value"), "rnn_hidden"  # hidden: [envs, N, H]
ADV, TARGET = (GROUP, "advantage"), (GROUP, "value_target")
PLANS = ("critic", "actor")  # the minibatch plans of one update (process_batch)


class _GAE(MultiAgentGAE):
    """TorchRL's multi-agent GAE without its NaN-next-observation sanitizer, which reads the data on the host
    (``if not isnan(next).any()``) every update: our rollouts always carry real next observations (no
    ``compact_obs`` / ``NextStateReconstructor``), so there is nothing to sanitize."""

    def _sanitize_next_obs_nan(self, data: TensorDictBase, in_keys: Any) -> TensorDictBase:
        return data


class ActorNet(nn.Module):
    """Per-agent distribution parameters: logits (discrete) or ``(loc, scale)`` (continuous)."""

    def __init__(self, info: EnvInfo, model: ModelConfig):
        super().__init__()
        out = info.action_dim if info.discrete else 2 * info.action_dim
        self.recurrent = model.recurrent
        self.body = agent_body(info.n_agents, info.obs_dim, out, model)
        self.extract = None if info.discrete else NormalParamExtractor()

    def _params(self, out: Tensor) -> tuple[Tensor, ...]:
        return (out,) if self.extract is None else tuple(self.extract(out))

    def forward(self, obs: Tensor, hidden: Tensor | None = None, is_init: Tensor | None = None) -> tuple[Tensor, ...]:
        """One step: ``(*params, next hidden)`` when recurrent, else ``params``."""
        if not self.recurrent:
            return self._params(self.body(obs))
        out, hidden = self.body(obs, hidden, is_init)
        return (*self._params(out), hidden)

    def sequence(self, td: TensorDictBase) -> tuple[Tensor, ...]:
        """Parameters over a rollout ``[envs, T]``, recurrent actors starting from the hidden state fed at t=0."""
        if not self.recurrent:
            return self._params(self.body(td.get(OBS)))
        return self._params(self.body.sequence(td.get(OBS), td.get(HIDDEN)[:, 0], td.get("is_init")))


class _Sequence(nn.Module):
    """``ActorNet.sequence`` as a module's forward, so that :func:`torch.func.functional_call` evaluates it at other
    parameters (built per call: it registers nothing on the algorithm)."""

    def __init__(self, net: ActorNet):
        super().__init__()
        self.net = net

    def forward(self, td: TensorDictBase) -> tuple[Tensor, ...]:
        return self.net.sequence(td)


class ValueNet(nn.Module):
    """V_i(s, i) from the global state (:func:`~kpg_lightning.envs.info.global_state`), or V_i(o_i, i) from the local
    observation: ``[..., N, 1]``."""

    def __init__(self, info: EnvInfo, model: ModelConfig, centralized: bool):
        super().__init__()
        self.n, self.centralized = info.n_agents, centralized
        in_dim = info.critic_state_dim if centralized else info.obs_dim
        self.net = AgentMLP(info.n_agents, in_dim, 1, model.critic_hidden, model.activation, share_params=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.centralized:  # state [..., S] → the same input for every agent
            x = x.unsqueeze(-2).expand(*x.shape[:-1], self.n, x.shape[-1])
        return self.net(x)


class Mappo(Algorithm):
    """MAPPO (centralized critic) or IPPO (``centralized_critic=False``); K-MAPPO through the K-level engine."""

    on_policy = True
    recurrent_actors = True

    def __init__(self, cfg: MappoConfig, info: EnvInfo, model: ModelConfig):
        super().__init__(cfg, info, model)
        self.actor_net = ActorNet(info, model)
        params = ["logits"] if info.discrete else ["loc", "scale"]
        net_in = [OBS, HIDDEN, "is_init"] if model.recurrent else [OBS]
        net_out = [(GROUP, p) for p in params] + ([("next", HIDDEN)] if model.recurrent else [])
        dist_in = {p: (GROUP, p) for p in params} | ({"mask": ACTION_MASK} if info.has_action_mask else {})
        if info.discrete:
            self.dist_class, self.dist_kwargs = (MaskedCategorical if info.has_action_mask else Categorical), {}
        else:  # bounds as buffers, so they follow the module's device; the kwargs dict is shared with the actor
            self.register_buffer("action_low", info.action_low.clone(), persistent=False)
            self.register_buffer("action_high", info.action_high.clone(), persistent=False)
            self.dist_class, self.dist_kwargs = TanhNormal, {"low": self.action_low, "high": self.action_high}
        self.actor = ProbabilisticActor(
            TensorDictModule(self.actor_net, in_keys=net_in, out_keys=net_out),
            in_keys=dist_in,
            out_keys=[ACTION],
            distribution_class=self.dist_class,
            distribution_kwargs=self.dist_kwargs,
            return_log_prob=True,
            log_prob_key=LOGP,
        )
        centralized = cfg.centralized_critic
        self.critic = TensorDictModule(
            ValueNet(info, model, centralized), in_keys=[STATE if centralized else OBS], out_keys=[VALUE]
        )
        self.gae = _GAE(gamma=cfg.gamma, lmbda=cfg.gae_lambda, value_network=self.critic, deactivate_vmap=True)
        self.gae.set_keys(
            advantage=ADV, value_target=TARGET, value=VALUE, reward=REWARD, done=DONE, terminated=TERMINATED
        )
        self._plan: list[Tensor] | None = None

    # -- acting -------------------------------------------------------------------------------------------------
    def policy(self) -> ProbabilisticActor:
        self._sync_bounds()
        return self.actor

    def _sync_bounds(self) -> None:
        if not self.info.discrete:
            self.dist_kwargs.update(low=self.action_low, high=self.action_high)

    def env_transforms(self) -> list[Transform]:
        if not self.model_cfg.recurrent:
            return []
        return recurrent_transforms(HIDDEN, self.info.n_agents, self.model_cfg.gru_hidden)

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor_net.parameters())

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    def distribution(self, td: TensorDictBase, at: Sequence[Tensor] | None = None) -> Distribution:
        """The current actor's per-agent distribution over a rollout (or minibatch) ``[envs, T]``; ``at``: the
        actor evaluated at these parameters instead (in :meth:`actor_parameters` order, e.g. a differentiable
        look-ahead's), through :func:`torch.func.functional_call`."""
        if at is None:
            outputs = self.actor_net.sequence(td)
        else:
            names = [f"net.{name}" for name, _ in self.actor_net.named_parameters()]
            outputs = functional_call(_Sequence(self.actor_net), dict(zip(names, at, strict=True)), (td,))
        params = dict(zip(["logits"] if self.info.discrete else ["loc", "scale"], outputs, strict=True))
        if self.info.has_action_mask:
            params["mask"] = td.get(ACTION_MASK)
        self._sync_bounds()
        return self.dist_class(**params, **self.dist_kwargs)

    def log_prob(self, td: TensorDictBase) -> Tensor:
        """``log π(a|o)`` of the stored actions under the current actor, ``[envs, T, N]``."""
        return self.distribution(td).log_prob(td.get(ACTION))

    # -- update ---------------------------------------------------------------------------------------------------
    def process_batch(self, td: TensorDictBase) -> TensorDictBase:
        """GAE advantages and value targets of the rollout under the critic before this update; a single env's
        rollout ``[T]`` becomes ``[1, T]``. A centralized critic reads ``state`` (:func:`global_state`), written into
        the rollout now and next where the env has none. The update's minibatch plans are drawn here, before the
        update (:meth:`minibatches`), so that a compiled or captured update replays fresh ones."""
        if self.cfg.centralized_critic:
            for sample in (td, td.get("next")):
                sample.set(STATE, global_state(sample))
        with torch.no_grad():
            td = self.gae(td.unsqueeze(0) if td.ndim == 1 else td)
        envs, steps = td.shape[:2]
        for which in PLANS:  # the critic's, then the actor's: a fresh permutation of the envs per epoch each
            perms = torch.stack([torch.randperm(envs) for _ in range(self.cfg.epochs)], dim=-1).to(td.device)
            td.set(("plan", which), perms.unsqueeze(1).expand(envs, steps, self.cfg.epochs))
        return td

    def minibatches(self, td: TensorDictBase, which: str) -> list[Tensor]:
        """Env indices of every minibatch of every epoch (at most one per env), from the ``which`` plan that
        :meth:`process_batch` drew: each epoch's permutation of the envs split into ``minibatches``."""
        perms = td.get(("plan", which))[:, 0]  # [envs, epochs]
        return [idx for perm in perms.unbind(-1) for idx in perm.tensor_split(self.cfg.minibatches) if idx.numel()]

    def critic_loss(self, td: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        value, old, target = self.critic.module(td.get(self.critic.in_keys[0])), td.get(VALUE), td.get(TARGET)
        loss = (value - target).pow(2)
        if self.cfg.clip_value:
            clipped = old + (value - old).clamp(-self.cfg.clip_epsilon, self.cfg.clip_epsilon)
            loss = torch.maximum(loss, (clipped - target).pow(2))
        return self.cfg.value_coef * 0.5 * loss.mean(), {"value_mean": value.mean().detach()}

    def critic_update(self, td: TensorDictBase, step: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        losses = torch.stack([step(self.critic_loss(td[idx])[0]) for idx in self.minibatches(td, "critic")])
        return {
            "critic_loss": losses,
            "advantage_mean": td.get(ADV).mean(),
        }  # the minibatches' losses: averaged when read

    def actor_batches(self, td: TensorDictBase, scope: str = "update") -> list[TensorDictBase]:
        plan = self.minibatches(td, "actor")
        if scope == "step":
            self._plan = None
            return [td[idx] for idx in plan]
        self._plan = plan
        return [td]

    def level_outputs(self, td: TensorDictBase, level: int, live: Any = None) -> Tensor:
        """Log-probs of the stored actions under the level-``level`` actor (level 0: the behaviour policy)."""
        return td.get(LOGP) if level == 0 else self.log_prob(td)

    def ratio(self, log_prob: Tensor, behaviour: Tensor, others: Tensor) -> Tensor:
        """K-MAPPO's r_i = exp(Δ_i + Σ_{j≠i} Δ_j⁽ᵏ⁻¹⁾) over ``[..., N]``; the others' part detached."""
        delta_others = (others - behaviour).detach()
        return torch.exp(log_prob - behaviour + (delta_others.sum(-1, keepdim=True) - delta_others))

    def actor_loss(self, td: TensorDictBase, others: Tensor, *, live: Any = None) -> Tensor:
        """PPO-clip surrogate with the K-level ratio; advantages normalized over the minibatch."""
        dist = self.distribution(td)
        return self.ppo_loss(td, dist, self.ratio(dist.log_prob(td.get(ACTION)), td.get(LOGP), others))

    def advantages(self, td: TensorDictBase) -> Tensor:
        """GAE advantages ``[..., N]``, standardized over the minibatch where ``normalize_advantage``."""
        adv = td.get(ADV).squeeze(-1)
        return (adv - adv.mean()) / (adv.std() + 1e-8) if self.cfg.normalize_advantage else adv

    def ppo_loss(self, td: TensorDictBase, dist: Distribution, ratio: Tensor) -> Tensor:
        """The PPO-clip loss of ``ratio [..., N]`` (every agent's, averaged), minus the entropy bonus of ``dist``."""
        cfg = self.cfg
        adv = self.advantages(td)
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip_epsilon, 1 + cfg.clip_epsilon) * adv)
        loss = -surrogate.mean()
        if cfg.entropy_coef:
            entropy = dist.entropy() if self.info.discrete else -dist.log_prob(dist.rsample())
            loss = loss - cfg.entropy_coef * entropy.mean()
        return loss

    def actor_update(
        self, td: TensorDictBase, others: Tensor, step: Callable[[Tensor], Tensor], live: Any = None
    ) -> Tensor:
        """scope=update: all epochs x minibatches, mean loss; scope=step: one gradient step on ``td``. No shared
        live forward (``live`` is unused): PPO's epochs move θ within a level."""
        if self._plan is None:
            return step(self.actor_loss(td, others))
        return torch.stack([step(self.actor_loss(td[idx], others[idx])) for idx in self._plan]).mean()

    def lr_scale(self, progress: float) -> float:
        return 1.0 - progress if self.cfg.anneal_lr else 1.0


@dataclass
class MappoConfig(AlgorithmConfig):
    """MAPPO / IPPO / K-MAPPO hyper-parameters (Appendix E.1, SMAX)."""

    name: str = "mappo"
    actor_lr: float = 4e-3
    critic_lr: float = 4e-3
    grad_clip: float | None = 0.5
    centralized_critic: bool = True
    """V_i(s, i) on the global state (MAPPO); false: V_i(o_i, i) on the local observation (IPPO)."""
    gae_lambda: float = 0.95
    """GAE λ."""
    clip_epsilon: float = 0.2
    """PPO ratio clip ε (also the value clip)."""
    clip_value: bool = True
    """Clip the value update around the rollout's values, as JaxMARL's MAPPO."""
    value_coef: float = 0.5
    """Value-loss coefficient."""
    entropy_coef: float = 0.0
    """Entropy bonus (none in the paper)."""
    epochs: int = 2
    """Passes over each rollout."""
    minibatches: int = 2
    """Minibatches per epoch, split over environments (whole sequences)."""
    normalize_advantage: bool = True
    """Standardize advantages per minibatch."""
    anneal_lr: bool = True
    """Anneal every learning rate linearly to 0 over ``max_frames``."""

    def problems(self) -> Iterator[tuple[str, str, Any]]:
        if self.clip_epsilon <= 0:
            yield "clip_epsilon", "a number > 0", self.clip_epsilon
        if not 0 <= self.gae_lambda <= 1:
            yield "gae_lambda", "a number in [0, 1]", self.gae_lambda
        for key in ("value_coef", "entropy_coef"):
            if getattr(self, key) < 0:
                yield key, "a number >= 0", getattr(self, key)
        for key in ("epochs", "minibatches"):
            if getattr(self, key) < 1:
                yield key, "an integer >= 1", getattr(self, key)


@dataclass
class IppoConfig(MappoConfig):
    """IPPO: MAPPO's update with decentralized critics V_i(o_i, i) on each agent's local observation."""

    name: str = "ippo"
    centralized_critic: bool = False
