"""QMIX, VDN and IQL: per-agent Q(o_i, ·) (shared, recurrent by default), ε-greedy acting, double-Q targets.

One class, parameterised by the mixer (``algorithm.mixer``): ``qmix`` — a state-conditioned monotonic mixer
(:class:`kpg_lightning.mixers.HyperQMixer`, with a target mixer); ``vdn`` — the sum (TorchRL's ``VDNMixer``);
``none`` — IQL, each agent's own TD error with its own reward. The loss, on ``[B, T]`` batches of whole episodes
zero-padded to the episode limit (``filled`` marks real steps):

    a'_i = argmax_{a ∈ avail_i(o'_i)} Q_i(o'_i, a)     (double Q; ``double_q=false``: a'_i maximises Q̄_i instead)
    y    = r · reward_scale + γ (1 − terminated) Q̄_tot(s', Q̄_i(o'_i, a'_i))
    L    = Σ_filled (Q_tot(s, Q_i(o_i, a_i)) − y)² / #filled

with r the team reward (the mean over agents; SMAX and SMAC give every agent the same, so it equals agent 0's) for
QMIX/VDN and each agent's reward for IQL. Recurrent nets are unrolled from a zero state over the T + 1
observations ``cat(o_0, o'_0..o'_{T-1})`` (``o'`` is the true next observation, also at an episode's last step).
Padded steps weigh nothing; truncations (SMAX's time limit) bootstrap, terminations do not. Targets are hard
copies every ``target_update_interval`` updates.

Acting is TorchRL's: ``QValueModule`` takes the argmax over the available actions, ``EGreedyModule`` replaces it
by a uniformly random *available* action with probability ε under ``ExplorationType.RANDOM`` (greedy under
``DETERMINISTIC``); ε is set from the run's frame count (:meth:`Qmix.exploration_step`), so a resumed run
continues the schedule. The loss is written here: TorchRL's ``QMixerLoss`` evaluates its network per transition
(no recurrent unroll over padded episodes), averages over every entry (no ``filled`` weighting) and bootstraps
with the target net's own greedy action (no online-argmax double Q).
"""

from __future__ import annotations

from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import Tensor, nn
from torchrl.data import Categorical
from torchrl.envs import Transform
from torchrl.modules import EGreedyModule, QValueModule

from kpg_lightning.algorithms.base import Algorithm, AlgorithmConfig, epsilon_at, parameter_pairs, sync_targets
from kpg_lightning.config import ModelConfig
from kpg_lightning.envs.info import ACTION, ACTION_MASK, GROUP, OBS, REWARD, TERMINATED, EnvInfo, global_state
from kpg_lightning.mixers import MIXERS, make_mixer, mix
from kpg_lightning.models import agent_body, recurrent_transforms

__all__ = ["IqlConfig", "QNet", "Qmix", "QmixConfig", "VdnConfig"]

QVALUE, CHOSEN, HIDDEN = (GROUP, "action_value"), (GROUP, "chosen_action_value"), "rnn_hidden"


class QNet(nn.Module):
    """Per-agent action values ``[..., N, A]``: a GRU (embed → GRU → head) or an MLP, shared with agent ids."""

    def __init__(self, info: EnvInfo, model: ModelConfig):
        super().__init__()
        self.recurrent, self.gru_hidden = model.recurrent, model.gru_hidden
        self.body = agent_body(info.n_agents, info.obs_dim, info.action_dim, model)

    def forward(self, obs: Tensor, hidden: Tensor | None = None, is_init: Tensor | None = None) -> Any:
        """One step (acting): ``(q, next hidden)`` when recurrent, else ``q``."""
        return self.body(obs, hidden, is_init) if self.recurrent else self.body(obs)

    def sequence(self, obs: Tensor, is_init: Tensor) -> Tensor:
        """``q [B, T, N, A]`` over whole episodes ``obs [B, T, N, F]``, recurrent nets from a zero state."""
        if not self.recurrent:
            return self.body(obs)
        return self.body.sequence(obs, obs.new_zeros(obs.shape[0], obs.shape[2], self.gru_hidden), is_init)


class Qmix(Algorithm):
    """QMIX (``mixer=qmix``), VDN (``vdn``) or IQL (``none``) on episode replay; value-based: no actor step."""

    has_actor = False
    replay_unit = "episodes"
    replay_exclude = (HIDDEN, ("next", HIDDEN), QVALUE, CHOSEN)  # the loss re-unrolls the net from each episode start
    action_spaces = ("discrete",)
    recurrent_actors = True

    def __init__(self, cfg: QmixConfig, info: EnvInfo, model: ModelConfig):
        super().__init__(cfg, info, model)
        if not info.discrete:
            raise ValueError(f"algorithm: {cfg.name} needs discrete actions (env has continuous actions)")
        n = info.n_agents
        self.q_net = QNet(info, model)
        self.mixer = (
            None
            if cfg.mixer == "none"
            else make_mixer(
                cfg.mixer,
                n,
                info.critic_state_dim,
                cfg.mixer_embed_dim,
                cfg.mixer_hypernet_hidden,
                init_scale=cfg.mixer_init_scale,
            )
        )
        self.target_q_net = deepcopy(self.q_net).requires_grad_(False)
        self.target_mixer = None if self.mixer is None else deepcopy(self.mixer).requires_grad_(False)
        self.register_target_counter(hard=True)
        mask = ACTION_MASK if info.has_action_mask else None
        net_in = [OBS, HIDDEN, "is_init"] if model.recurrent else [OBS]
        net_out = [QVALUE, ("next", HIDDEN)] if model.recurrent else [QVALUE]
        self.explore = EGreedyModule(
            Categorical(info.action_dim, shape=(n,), dtype=torch.int64),
            eps_init=float(cfg.epsilon_start),
            eps_end=float(cfg.epsilon_end),
            annealing_num_steps=max(1, cfg.epsilon_anneal_frames),
            action_key=ACTION,
            action_mask_key=mask,
        )
        self.acting = TensorDictSequential(
            TensorDictModule(self.q_net, in_keys=net_in, out_keys=net_out),
            QValueModule(
                action_space="categorical",
                action_value_key=QVALUE,
                action_mask_key=mask,
                out_keys=[ACTION, QVALUE, CHOSEN],
            ),
            self.explore,
        )

    # -- acting -------------------------------------------------------------------------------------------------
    def policy(self) -> TensorDictSequential:
        return self.acting

    def env_transforms(self) -> list[Transform]:
        if not self.model_cfg.recurrent:
            return []
        return recurrent_transforms(HIDDEN, self.info.n_agents, self.model_cfg.gru_hidden)

    def epsilon(self, frames: int) -> float:
        """ε after ``frames`` collected frames (:func:`~kpg_lightning.algorithms.base.epsilon_at`)."""
        cfg = self.cfg
        return epsilon_at(frames, cfg.epsilon_start, cfg.epsilon_end, cfg.epsilon_anneal_frames)

    def exploration_step(self, frames: int) -> None:
        self.explore.eps.fill_(self.epsilon(frames))

    # -- update ---------------------------------------------------------------------------------------------------
    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.q_net.parameters(), *(self.mixer.parameters() if self.mixer is not None else ())]

    def process_batch(self, td: TensorDictBase) -> TensorDictBase:
        return td  # team targets read the root ``terminated``; IQL broadcasts it over agents

    def available(self, td: TensorDictBase) -> Tensor | None:
        """Available next actions ``[B, T, N, A]`` (None without masks); an all-unavailable row (padding) counts
        as all available, so its max stays finite — padded steps are excluded from the loss anyway."""
        if not self.info.has_action_mask:
            return None
        mask = td.get(("next", *ACTION_MASK))
        return mask | ~mask.any(-1, keepdim=True)

    def td_terms(self, td: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        """``(Q_tot, y, filled)`` of an episode batch: ``[B, T, 1]`` each (IQL: per agent, ``[B, T, N, 1]``);
        only ``Q_tot`` carries gradients."""
        cfg = self.cfg
        obs = torch.cat([td.get(OBS)[:, :1], td.get(("next", *OBS))], dim=1)  # o_0, o'_0 .. o'_{T-1}
        is_init = td.get("is_init", None)
        if is_init is None:  # MLP agents: no InitTracker
            is_init = torch.zeros_like(td.get("filled"))
        is_init = torch.cat([is_init, torch.zeros_like(is_init[:, :1])], dim=1)  # o'_{T-1} continues its episode
        q = self.q_net.sequence(obs, is_init)  # [B, T+1, N, A]
        taken = q[:, :-1].gather(-1, td.get(ACTION).unsqueeze(-1))  # [B, T, N, 1]
        with torch.no_grad():
            next_q, mask = self.target_q_net.sequence(obs, is_init)[:, 1:], self.available(td)
            if cfg.double_q:
                online = q[:, 1:].detach()
                best = (online if mask is None else online.masked_fill(~mask, -torch.inf)).argmax(-1, keepdim=True)
                next_value = next_q.gather(-1, best)
            else:
                next_value = (next_q if mask is None else next_q.masked_fill(~mask, -torch.inf)).amax(-1, True)
            reward = td.get(("next", *REWARD)) * cfg.reward_scale  # [B, T, N, 1]
            not_terminated = td.get(("next", TERMINATED)).logical_not()  # [B, T, 1]
            if self.target_mixer is None:  # IQL: per-agent targets
                target = reward + cfg.gamma * not_terminated.unsqueeze(-2) * next_value
            else:
                next_tot = mix(self.target_mixer, next_value, global_state(td.get("next")))
                target = reward.mean(-2) + cfg.gamma * not_terminated * next_tot
        value = taken if self.mixer is None else mix(self.mixer, taken, global_state(td))
        filled = td.get("filled")
        return value, target, (filled if self.mixer is not None else filled.unsqueeze(-2)).expand_as(value)

    def critic_loss(self, td: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Squared TD error averaged over the real (``filled``) steps; padded steps contribute nothing."""
        value, target, filled = self.td_terms(td)
        count = filled.sum().clamp_min(1)
        loss = torch.where(filled, value - target, 0.0).pow(2).sum() / count
        return loss, {
            "q_tot_mean": torch.where(filled, value.detach(), 0.0).sum() / count,
            "target_mean": torch.where(filled, target, 0.0).sum() / count,
            "epsilon": self.explore.eps.detach().clone(),
        }

    def target_pairs(self) -> list[tuple[Tensor, Tensor]]:
        return parameter_pairs(
            (self.target_q_net, self.q_net), *(() if self.mixer is None else ((self.target_mixer, self.mixer),))
        )

    def update_targets(self) -> None:
        """Hard copy of the online net (and mixer) every ``target_update_interval`` calls, one per update."""
        sync_targets(self.target_pairs(), "hard", interval=self.cfg.target_update_interval, updates=self.target_updates)


@dataclass
class QmixConfig(AlgorithmConfig):
    """QMIX / VDN / IQL hyper-parameters (Appendix E.1, SMAX: JaxMARL's Q-learning baselines)."""

    name: str = "qmix"
    critic_lr: float = 5e-5
    """Adam learning rate of the Q-network and mixer (the only optimizer: there is no actor)."""
    grad_clip: float | None = 10.0
    mixer: str = "qmix"
    """qmix (state-conditioned monotonic), qmix_nonmonotonic, vdn (sum) or none (IQL: independent learners)."""
    mixer_embed_dim: int = 64
    """Width of the QMIX mixing layer."""
    mixer_hypernet_hidden: int = 256
    """Hidden width of the QMIX weight hypernetworks."""
    mixer_init_scale: float | None = 0.001
    """Orthogonal-init gain of every mixer layer (JaxMARL's QMIX, so Q_tot starts near 0); null: PyTorch's."""
    double_q: bool = True
    """Next action from the online net, valued by the target net; false: max of the target net."""
    target_update_interval: int = 10
    """Updates between hard copies of the online net (and mixer) into the targets."""
    epsilon_start: float = 1.0
    """ε of ε-greedy acting at the start of the run."""
    epsilon_end: float = 0.05
    """ε after ``epsilon_anneal_frames`` frames (and from then on)."""
    epsilon_anneal_frames: int = 1_000_000
    """Frames over which ε falls linearly (E.1: the first 10% of 1e7; pause learning as long with
    ``buffer.learning_starts``)."""
    reward_scale: float = 10.0
    """Multiplier of the reward in the targets (10: SMAC's reward scale on SMAX)."""

    def problems(self) -> Iterator[tuple[str, str, Any]]:
        if self.mixer not in (*MIXERS, "none"):
            yield "mixer", f"one of {', '.join((*MIXERS, 'none'))}", self.mixer
        for key in ("epsilon_start", "epsilon_end"):
            if not 0 <= getattr(self, key) <= 1:
                yield key, "a number in [0, 1]", getattr(self, key)
        if self.epsilon_end > self.epsilon_start:
            yield "epsilon_end", f"at most epsilon_start ({self.epsilon_start})", self.epsilon_end
        if self.epsilon_anneal_frames < 0:
            yield "epsilon_anneal_frames", "an integer >= 0", self.epsilon_anneal_frames
        for key in ("target_update_interval", "mixer_embed_dim", "mixer_hypernet_hidden"):
            if getattr(self, key) < 1:
                yield key, "an integer >= 1", getattr(self, key)
        if self.reward_scale <= 0:
            yield "reward_scale", "a number > 0", self.reward_scale
        if self.mixer_init_scale is not None and self.mixer_init_scale <= 0:
            yield "mixer_init_scale", "null or a number > 0", self.mixer_init_scale


@dataclass
class VdnConfig(QmixConfig):
    """VDN: QMIX's learner with Q_tot = Σ_i Q_i."""

    name: str = "vdn"
    mixer: str = "vdn"


@dataclass
class IqlConfig(QmixConfig):
    """IQL: independent Q-learners (shared parameters), each on its own reward and TD error."""

    name: str = "iql"
    mixer: str = "none"
